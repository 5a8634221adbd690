"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ReferenceInfo",
    "SampleOut",
    "GenerateResponse",
    "InpaintBody",
    "InpaintResponse",
    "RegisterBody",
    "RegisterResponse",
    "FindingInfo",
    "FindingsResponse",
    "ExampleInfo",
    "ExamplesResponse",
    "Health",
]

PNG_B64 = "a grayscale PNG file, base64-encoded"


class ReferenceInfo(BaseModel):
    finding: str
    image_index: str = Field(description="the diseased reference's NIH Image Index")
    rank: int = Field(description="0 = the most similar reference of that finding")
    similarity: float
    mse_before: float
    mse_after: float
    ncc_before: float
    ncc_after: float
    region_fraction: float = Field(description="share of the image the carried region covers")


class SampleOut(BaseModel):
    image: str = Field(description=f"the synthetic radiograph, {PNG_B64}, the input's size and bit depth")
    mask: str = Field(description=f"the repainted region (white), {PNG_B64}")
    seed: int
    accepted: bool = Field(description="the quality gate's verdict")
    reasons: list[str] = Field(description="failed gate checks (empty when accepted)")
    rise: float = Field(description="smallest rise of a target finding's probability")
    margin: float = Field(description="the rise the gate requires")
    outside_max_abs_diff: float
    mask_fraction: float
    gate: dict[str, Any] = Field(
        default_factory=dict,
        description="the quality gate's whole decision (GateDecision.to_dict(): accepted, reasons, rise, margin and any "
        "other checks such as verifier_* or judges); tuples as lists, non-finite numbers as null",
    )
    proba_after: dict[str, float]
    references: list[ReferenceInfo]


class GenerateResponse(BaseModel):
    findings: list[str]
    proba_before: dict[str, float] = Field(description="classifier probabilities of the healthy input")
    seed: int = Field(description="seed of sample 0; sample j used seed + j")
    n: int
    steps: int
    guidance: float
    width: int
    height: int
    bits: int
    batch_size: int = Field(description="requests in the batch this one ran in")
    seconds: float = Field(description="time of that batch in the generator")
    samples: list[SampleOut]


class InpaintBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description=f"the radiograph, {PNG_B64}")
    mask: str = Field(description=f"the region to repaint (white = repaint), {PNG_B64}, the image's size")
    findings: list[str] = Field(min_length=1, description="NIH finding names, e.g. [\"Nodule\"]")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0.0, le=20.0)


class InpaintResponse(BaseModel):
    image: str = Field(description=f"the inpainted radiograph, {PNG_B64}")
    mask: str
    findings: list[str]
    proba_before: dict[str, float]
    proba_after: dict[str, float]
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    seconds: float


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fixed: str = Field(description=f"the image to register onto, {PNG_B64}")
    moving: str = Field(description=f"the image to move, {PNG_B64}, the fixed image's size")
    map: str | None = Field(None, description=f"optional map on the moving image to carry along, {PNG_B64}")


class RegisterResponse(BaseModel):
    warped: str = Field(description=f"the moving image on the fixed one's grid, {PNG_B64}")
    warped_map: str | None
    mse_before: float
    mse_after: float
    ncc_before: float
    ncc_after: float
    folded_fraction: float
    work_size: int = Field(description="side at which Demons ran; the field was scaled to the images' size")
    seconds: float


class FindingInfo(BaseModel):
    name: str
    available: bool = Field(description="the service holds references showing it")
    references: int


class FindingsResponse(BaseModel):
    findings: list[FindingInfo]
    available: list[str]


class ExampleInfo(BaseModel):
    id: str = Field(description="the healthy image's NIH Image Index; GET /v1/examples/{id} returns its PNG")
    width: int
    height: int
    bits: int = Field(description="bit depth of the PNG (8 or 16)")


class ExamplesResponse(BaseModel):
    examples: list[ExampleInfo] = Field(
        description="healthy example sources (images labelled No Finding in the reference folder; serve.example_sources of them)"
    )


class Health(BaseModel):
    status: str
    version: str


ModelsResponse = dict[str, Any]
