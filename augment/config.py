"""Run configuration: one pydantic model per stage, one run profile per YAML file.

A profile in ``configs/*.yaml`` is validated by :class:`RunConfig`. Unknown keys and
wrong types are rejected with the key's dotted path in the message, so a typo such as
``classifier.epoks`` fails before any work starts. Single keys can be overridden from
the command line (``--set classifier.epochs=2``); the value is parsed as YAML, so
``--set data.phantom.prevalence.Pneumothorax=0.02`` and ``--set resources.use_gpu=true`` work.

The library, the Ray jobs and the Serve application all use these classes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from augment.findings import FINDINGS

__all__ = [
    "ARTIFACT_URI_SCHEMES",
    "ConfigError",
    "StageConfig",
    "PhantomConfig",
    "SplitConfig",
    "DataConfig",
    "RegistrationConfig",
    "InpaintingConfig",
    "BaselineConfig",
    "ClassifierConfig",
    "AttentionConfig",
    "QualityConfig",
    "AugmentConfig",
    "InputFilterConfig",
    "ResourcesConfig",
    "TrackingConfig",
    "ServeConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "check_paths",
]


class ConfigError(ValueError):
    """A run profile or an override is invalid; the message names the key and the fix."""


class StageConfig(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


SEED_HELP = "random seed, an integer >= 0 (numpy and torch refuse negative seeds)"


def _no_device_key(data: Any, section: str) -> Any:
    if isinstance(data, dict) and "device" in data:
        raise ValueError(f"{section}.device is gone: a run has one device rule, resources.use_gpu (true: CUDA, "
                         f"false: the CPU); drop {section}.device and set resources.use_gpu")
    return data


def _check_findings(names: list[str] | dict[str, Any], where: str) -> None:
    unknown = [n for n in names if n not in FINDINGS]
    if unknown:
        raise ValueError(
            f"unknown finding(s) {unknown} in {where}; use NIH's spelling, one of {list(FINDINGS)}"
        )


class PhantomConfig(StageConfig):
    """Procedural phantom radiographs (the embedded default data set)."""

    n_images: int = Field(240, ge=4, description="images to generate")
    image_size: int = Field(256, ge=32, le=2048)
    n_patients: int | None = Field(None, ge=1, description="default: about 3 images per patient (full NIH has 3.6)")
    seed: int = Field(0, ge=0, description=SEED_HELP)
    patient_id_offset: int = Field(
        0, ge=0, le=90_000_000,
        description="patient ids start after this: sets rendered apart (a test set, extra real positives) get "
                    "patients and image names of their own",
    )
    healthy_fraction: float = Field(0.4, ge=0.0, le=1.0, description="share of 'No Finding' images")
    lesion_contrast: dict[str, float] = Field(
        default_factory=dict,
        description="per finding drawn as a density of its own (Nodule, Mass), a factor on its opacity: "
                    "makes small lesions conspicuous enough to learn at a low working resolution (the long-tail profile)",
    )
    prevalence: dict[str, float] = Field(
        default_factory=lambda: {
            "Cardiomegaly": 0.25,
            "Effusion": 0.25,
            "Atelectasis": 0.2,
            "Consolidation": 0.15,
            "Nodule": 0.12,
            "Mass": 0.06,
            "Pneumothorax": 0.04,
        },
        description="per-finding probability among the diseased images",
    )

    @model_serializer(mode="wrap")
    def _drop_neutral(self, handler: Any) -> dict[str, Any]:
        # an empty lesion_contrast is left out of dumps, so the hashes of the folders and stages
        # made before the setting existed stay the same
        d = handler(self)
        if not self.lesion_contrast:
            d.pop("lesion_contrast", None)
        return d

    @field_validator("lesion_contrast")
    @classmethod
    def _densities(cls, v: dict[str, float]) -> dict[str, float]:
        other = sorted(set(v) - {"Nodule", "Mass"})
        if other:
            raise ValueError(f"lesion_contrast applies to Nodule and Mass (the findings drawn as a density); got {other}")
        bad = {k: x for k, x in v.items() if not 0.0 < x <= 5.0}
        if bad:
            raise ValueError(f"lesion_contrast factors must be in (0, 5]; got {bad}")
        return v

    @field_validator("prevalence")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        _check_findings(v, "data.phantom.prevalence")
        bad = {k: p for k, p in v.items() if not 0.0 <= p <= 1.0}
        if bad:
            raise ValueError(f"prevalence must be in [0, 1]; got {bad}")
        return v


class SplitConfig(StageConfig):
    """Patient-wise split used when the folder has no official NIH lists."""

    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    seed: int = Field(0, ge=0, description=SEED_HELP)
    use_official_lists: bool = Field(True, description="use train_val_list.txt / test_list.txt when present")


class DataConfig(StageConfig):
    """Where the real images come from and how they are read."""

    source: Literal["phantom", "nih"] = "phantom"
    root: str | None = Field(None, description="NIH-layout folder (local path or file:// URI); for phantom, where it is written")
    image_size: int = Field(128, ge=16, le=2048, description="side length the stages work at")
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="missing/corrupt images and unknown labels: fail, or skip and count"
    )
    phantom: PhantomConfig = PhantomConfig()
    split: SplitConfig = SplitConfig()

    @model_validator(mode="after")
    def _root_for_nih(self) -> "DataConfig":
        if self.source == "nih" and not self.root:
            raise ValueError("data.root is required when data.source is 'nih': give the NIH folder")
        return self


class RegistrationConfig(StageConfig):
    """Demons registration of a diseased reference onto a healthy query (on the run's device,
    ``resources.use_gpu``)."""

    @model_validator(mode="before")
    @classmethod
    def _device_gone(cls, data: Any) -> Any:
        return _no_device_key(data, "registration")

    backend: Literal["torch", "simpleitk"] = "torch"
    variant: Literal["symmetric", "diffeomorphic"] = Field(
        "diffeomorphic", description="diffeomorphic folds (almost) no pixels; symmetric is ~1.5x faster"
    )
    iterations: int = Field(50, ge=1, le=10000)
    alpha: float = Field(1.0, gt=0.0, description="weight of the intensity difference term")
    sigma_field: float = Field(2.5, ge=0.0, description="Gaussian smoothing of the displacement field, pixels (1.5 folds 25-35% of pixels on pairs of different patients)")
    sigma_update: float = Field(0.0, ge=0.0, description="Gaussian smoothing of the update field, pixels (0 = off)")
    max_step: float = Field(2.0, gt=0.0, description="maximum update length per iteration, pixels")
    pyramid_levels: int = Field(2, ge=1, le=6)
    tolerance: float = Field(0.0, ge=0.0, description="stop when the RMS field change falls under it (0 = run all)")
    prealign: Literal["none", "similarity", "affine"] = "similarity"
    fill_lesion: bool = Field(
        True, description="fill the reference's finding region from its surroundings before Demons, so that the field "
        "aligns anatomy instead of registering the finding away (the map and the original reference follow that field)"
    )
    k_references: int = Field(3, ge=1)
    reference_metric: Literal["ncc", "embedding"] = "ncc"
    mask_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    batch_size: int = Field(16, ge=1)


class InpaintingConfig(StageConfig):
    """Flow-matching inpainter: velocity network, training and sampling (on the run's device,
    ``resources.use_gpu``)."""

    @model_validator(mode="before")
    @classmethod
    def _device_gone(cls, data: Any) -> Any:
        return _no_device_key(data, "inpainting")

    crop_size: int = Field(64, ge=16, le=1024, description="model resolution; a crop around the mask is inpainted")
    region: Literal["crop", "full"] = Field(
        "crop", description="crop: inpaint a crop around the mask at crop_size; full: the whole image at its own size"
    )
    context: float = Field(0.5, ge=0.0, le=4.0, description="crop margin around the mask's box, as a fraction of its side")
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = Field(1, ge=1, le=4)
    mid_attention: bool = Field(True, description="self-attention in the UNet's middle block")
    gamma: float = Field(0.0, ge=0.0, description="latent noise scale of the interpolant")
    label_planes: bool = Field(
        True, description="also feed the findings as 14 input planes inside the mask (besides the class embedding): "
        "a direct, per-pixel label pathway that the short CPU budget learns; the embedding alone was ignored"
    )
    label_dropout: float = Field(0.1, ge=0.0, le=1.0)
    mask_loss_weight: float = Field(10.0, ge=1.0, description="loss weight inside the mask relative to outside")
    finding_fraction: float = Field(
        0.7, ge=0.0, le=1.0, description="share of training examples that paint a finding (the rest: healthy images, random or transplanted finding masks)"
    )
    finding_sampling: Literal["balanced", "proportional"] = Field(
        "balanced", description="finding examples: balanced = each finding equally often (rare ones too); proportional = as in the data"
    )
    focus_findings: list[str] = Field(
        default_factory=list, description="findings whose masks are drawn focus_weight times as often among the finding "
        "examples (the ones the augment job paints: the generator's budget where it pays)"
    )
    focus_weight: float = Field(4.0, ge=1.0, le=100.0)
    train_steps: int = Field(800, ge=1, description="sized for the 15-minute CPU budget: ~1.1 s/step on one thread under load (crop 64, batch 8)")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0.0, description="AdamW; 1e-3 beat 2e-4 on the short CPU budget (small UNet, grad clip 1.0)")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    sample_every: int = Field(200, ge=1)
    solver: Literal["euler", "heun", "dopri5"] = "euler"
    steps: int = Field(10, ge=1, le=1000)
    atol: float = Field(1e-3, gt=0.0, description="dopri5 absolute tolerance (torchdiffeq's default 1e-9 costs 3-6x more evaluations)")
    rtol: float = Field(1e-3, gt=0.0, description="dopri5 relative tolerance")
    guidance: float = Field(1.5, ge=0.0)
    coupling: Literal["noise", "lesion"] = Field(
        "lesion", description="where the ODE starts inside the region: noise = from N(0, 1) at t=0 (invent the finding); "
        "lesion = at t=coupling_t0 from the interpolant's point between noise and the reference's real lesion carried onto "
        "the source (its position by the field, its shape kept), so the flow harmonises a real lesion"
    )
    coupling_t0: float = Field(0.5, ge=0.0, lt=1.0, description="start time of the lesion coupling: 0 ignores the lesion, near 1 keeps it as pasted")
    keep_detail: bool = Field(
        True, description="lesion coupling: where the region's crop is larger than crop_size (painted downsampled), keep the "
        "carried lesion's detail finer than the crop (a pneumothorax's thin pleural line) and add the flow's change to it"
    )
    region_margin: int = Field(
        4, ge=0, le=64, description="working-resolution pixels the repainted region extends beyond the lesion (lesion coupling), "
        "so the flow draws the lesion's boundary itself"
    )
    bf16: bool = True
    seed: int = Field(0, ge=0, description=SEED_HELP)


    @field_validator("focus_findings")
    @classmethod
    def _known_focus(cls, v: list[str]) -> list[str]:
        _check_findings(v, "inpainting.focus_findings")
        return v


class BaselineConfig(StageConfig):
    """Baseline generators (LSGAN, VAE, GMVAE; :mod:`augment.baselines`), compared with the inpainter.

    They sample a whole ``inpainting.crop_size`` crop of a finding (no inpainting) that is
    pasted into the mask; crops are drawn as for the flow model (``inpainting.context``,
    ``inpainting.finding_fraction``).
    """

    kind: Literal["lsgan", "vae", "gmvae"] = Field("vae", description="which baseline jobs.train_generator --generator trains by default")
    latent_dim: int = Field(64, ge=1, le=4096, description="z size of the generator / VAE")
    base_channels: int = Field(32, ge=4, le=512, description="width of the first (generator: last) conv level; doubles per level, capped at 512")
    beta: float = Field(1.0, ge=0.0, description="weight of the KL term (VAE, GMVAE); 1 = the ELBO")
    reconstruction: Literal["bce", "mse"] = Field("bce", description="VAE likelihood: Bernoulli (BCE) or unit Gaussian (MSE, halved)")
    mixture_components: int = Field(10, ge=1, le=1024, description="GMVAE: Gaussians in the learned mixture prior")
    g_steps_per_d: int = Field(2, ge=1, le=100, description="LSGAN: generator updates per discriminator update")
    lr: float = Field(2e-4, gt=0.0, description="Adam, betas (0.5, 0.999) (the paper's LSGAN setting)")
    train_steps: int = Field(2000, ge=1, description="LSGAN: discriminator steps; VAE: optimiser steps")
    batch_size: int = Field(32, ge=2, description="crops per step (>= 2 for batch norm)")
    sample_every: int = Field(500, ge=1, description="steps between sample grids logged to MLflow")
    seed: int = Field(0, ge=0, description=SEED_HELP)


class ClassifierConfig(StageConfig):
    """EfficientNet multi-label classifier (the paper's recipe is the default)."""

    arch: Literal["efficientnet-b0", "efficientnet-b4"] = "efficientnet-b4"
    image_size: int = Field(128, ge=32, le=1024)
    pretrained: Literal["none", "imagenet"] = "none"
    weights_path: str | None = Field(None, description="local ImageNet weights for pretrained: imagenet")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    batch_norm_momentum: float = Field(0.9, gt=0.0, lt=1.0, description="efficientnet_pytorch convention (TF style)")
    pos_weight: Literal["none", "balanced"] = "none"
    augment: bool = True
    early_stopping_patience: int = Field(0, ge=0, description="0 = off")
    plateau_patience: int = Field(2, ge=0)
    amp: bool = Field(True, description="bf16 autocast on GPU")
    seed: int = Field(0, ge=0, description=SEED_HELP)
    max_failures: int = Field(
        2, ge=0, description="Ray Train worker-group restarts allowed; training resumes from the last epoch's checkpoint"
    )


class AttentionConfig(StageConfig):
    """Where a finding lives: the attention-map source and its mask."""

    source: Literal["gradcam", "bbox", "phantom", "xrv"] = "gradcam"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_area: float = Field(0.002, ge=0.0, le=1.0)
    max_area: float = Field(0.25, gt=0.0, le=1.0)
    gradcam_variant: Literal["gradcam", "gradcam++"] = "gradcam"
    gradcam_layer: Literal["head", "stride16"] = Field(
        "head", description="head = the last conv block (stride 32); stride16 = the block before it, twice the resolution"
    )
    batch_size: int = Field(16, ge=1, description="images per Grad-CAM backward pass")
    xrv_weights: str = Field("densenet121-res224-nih", description="torchxrayvision DenseNet weights name (source: xrv)")
    xrv_cache_dir: str | None = Field(None, description="folder of the xrv weights file; default ~/.torchxrayvision/models_data")

    @model_validator(mode="after")
    def _areas(self) -> "AttentionConfig":
        if self.min_area > self.max_area:
            raise ValueError(f"attention.min_area ({self.min_area}) must not exceed attention.max_area ({self.max_area})")
        return self


class QualityConfig(StageConfig):
    """The acceptance gate."""

    margin: float = Field(0.05, ge=0.0, le=1.0, description="required rise of the target probability")
    outside_tolerance: float = Field(1e-6, ge=0.0)
    min_pixel_distance: float = Field(0.01, ge=0.0, description="RMS distance to the nearest training image")
    min_embedding_distance: float = Field(
        0.02, ge=0.0, description="cosine distance to the nearest training embedding (capped by near_copy_quantile)"
    )
    near_copy_quantile: float = Field(
        0.01, ge=0.0, le=1.0,
        description="embedding near-copy threshold = min(min_embedding_distance, this quantile of the real-to-real "
        "other-patient nearest-neighbour distances of the training bank)",
    )
    bank_image_size: int = Field(64, ge=8, le=1024, description="side length training images are kept at for the pixel nearest-neighbour check")
    judge: Literal["verifier", "classifier"] = Field(
        "verifier", description="verifier: the local finding verifier's probability on the painted crop must pass its "
        "validation threshold and rise over the source's crop; classifier: the whole-image classifier's rise only (the paper's gate)"
    )
    verifier_margin: float = Field(0.0, ge=0.0, le=1.0, description="required rise of the verifier's probability over the source's crop")
    classifier_judge: Literal["auto", "always", "never"] = Field(
        "auto", description="with judge verifier, also require the classifier's rise: auto = for findings whose "
        "validation AUC reaches classifier_auc_floor, always, or never"
    )
    classifier_auc_floor: float = Field(0.85, ge=0.5, le=1.0)


class VerifierConfig(StageConfig):
    """The local finding verifier (:mod:`augment.quality.verifier`): a small network over crops
    centred on a region that says whether the crop shows a finding. The gate's judge."""

    findings: list[str] | None = Field(
        None, description="findings it learns; default augment.findings (a finding without training regions is skipped, with a warning)"
    )
    crop_size: int = Field(32, ge=8, le=1024, description="side of the crop around a region, in working-resolution pixels (data.image_size)")
    input_size: int = Field(32, ge=8, le=256, description="the network's input side; crops are resized to it")
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], description="conv widths, one stride-2 level each")
    negatives_per_positive: int = Field(3, ge=1, le=50, description="crops of the same place in images without the finding, per positive")
    hard_negatives: list[Literal["noise", "mean", "blur", "generator"]] = Field(
        default_factory=lambda: ["noise", "mean", "blur", "generator"],
        description="the finding's region in a healthy crop filled with matched noise, its mean, a blur of its surroundings, or "
        "painted by the generator conditioned on 'No Finding' (needs the generator checkpoint): negatives that teach "
        "'the finding', not 'something changed' or 'the generator's texture'",
    )
    positive_jitter: int = Field(3, ge=0, le=64, description="training positives are re-centred up to this many pixels off the region")
    positive_repeats: int = Field(4, ge=1, le=64, description="each positive region is cropped this many times (jittered, flipped)")
    pasted_positives: int = Field(
        2, ge=0, le=32, description="training only: each positive region's lesion is also added at the same place to this many "
        "images without the finding (a real lesion on other anatomy, as the augment job makes)"
    )
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0.0)
    max_regions: int = Field(400, ge=1, description="positive regions read per finding (a random subset of larger sets)")
    max_false_pass: float = Field(
        0.1, ge=0.0, le=1.0, description="the threshold (Youden's J on validation crops) may pass at most this share of the "
        "validation negatives: with a handful of positives, J alone can buy full sensitivity by passing half the negatives"
    )
    min_val_positives: int = Field(
        3, ge=1, description="a finding with fewer validation regions gets the cut passing at most max_false_pass of its "
        "validation negatives (sensitivity unmeasured; a warning says so)"
    )
    min_val_negatives: int = Field(
        20, ge=1, description="without min_val_positives regions and with fewer negative crops than this, the threshold is 0.5"
    )
    seed: int = Field(0, ge=0, description=SEED_HELP)

    @field_validator("findings")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            _check_findings(v, "verifier.findings")
        return v


class AugmentConfig(StageConfig):
    """The Ray Data augmentation job."""

    findings: list[str] = Field(default_factory=lambda: ["Pneumothorax", "Mass", "Nodule"])
    target_count: int = Field(40, ge=0, description="bring each finding up to this many training positives")
    max_per_finding: int = Field(60, ge=0)
    output: str = Field("runs/local/augmented", description="augmented pool (local path or URI)")
    references_per_finding: int = Field(32, ge=1, description="diseased references read per finding")
    batch_size: int = Field(8, ge=1)
    register_actors: int = Field(1, ge=1)
    inpaint_actors: int = Field(1, ge=1)
    gate_actors: int = Field(1, ge=1)
    max_attempts: int = Field(3, ge=1, description="runs of the Ray Data job; each resumes from the pool after a failure")
    seed: int = Field(0, ge=0, description=SEED_HELP)

    @field_validator("findings")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        _check_findings(v, "augment.findings")
        repeated = sorted({f for f in v if v.count(f) > 1})
        if repeated:
            raise ValueError(
                f"{', '.join(map(repr, repeated))} listed more than once in augment.findings {v}: "
                "each finding gets one plan, list it once"
            )
        return v


class InputFilterConfig(StageConfig):
    """The input quality filter (:mod:`augment.data.input_filter`): sources and references
    that are not usable frontal chest films are dropped before the augmentation plan."""

    enabled: bool = Field(True, description="score candidate sources and references and drop the outliers")
    image_size: int = Field(64, ge=16, le=1024, description="side the images are scored at")
    views: list[str] = Field(
        default_factory=lambda: ["PA", "AP"],
        description="allowed Data_Entry 'View Position' values (an empty view is allowed); [] = any",
    )
    min_std: float = Field(0.02, ge=0.0, le=0.5, description="blank: pixel standard deviation under it")
    saturation_level: float = Field(0.02, ge=0.0, lt=0.5, description="pixels within it of 0 or 1 count as saturated")
    max_saturated_fraction: float = Field(0.5, gt=0.0, le=1.0, description="saturated: more of the pixels at 0 or 1")
    check_orientation: bool = Field(True, description="drop images rotated by 90 or 180 degrees")
    rotation_margin: float = Field(0.1, ge=-1.0, le=2.0, description="rotated: a rotation of the image correlates with the candidates' median image better than the image itself by more (with under min_population images: its top-bottom mirror symmetry beats its left-right one by more)")
    check_inversion: bool = Field(True, description="drop inverted images (lungs bright, mediastinum dark)")
    inversion_margin: float = Field(0.0, ge=0.0, le=1.0, description="inverted: correlation with the candidates' median image under minus this")
    max_exposure_z: float = Field(6.0, gt=0.0, description="exposure: robust z of mean, std, 5th or 95th percentile above it")
    max_outlier_z: float = Field(8.0, gt=0.0, description="outlier: robust z of the PCA reconstruction error above it")
    pca_size: int = Field(32, ge=4, le=256, description="side of the downsampled pixels the PCA sees")
    pca_components: int = Field(16, ge=1, le=1024)
    min_population: int = Field(20, ge=3, description="fewer images passing the per-image checks skip the population checks")
    examples: int = Field(16, ge=0, le=256, description="dropped images kept for the example grid logged to MLflow")


class ResourcesConfig(StageConfig):
    """Ray resources; the same code runs on a laptop and on a GPU cluster."""

    num_cpus: int | None = Field(None, ge=1, description="for a local ray.init; None = all")
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    cpus_per_actor: float = Field(0.5, gt=0.0, description="<1 avoids the read-then-actor-pool deadlock on 2 cores")
    gpus_per_actor: float = Field(0.0, ge=0.0)
    torch_threads: int | None = Field(None, ge=1)
    train_poll_interval_s: float = Field(
        0.5, gt=0.0, le=60.0,
        description="how often Ray Train's controller polls its workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, "
        "Ray's default 2 s); each start and finish waits on a poll, so 0.5 s takes ~4 s off every fit; "
        "the environment variable wins when set",
    )


class UtilityConfig(StageConfig):
    """Does augmentation help? ``jobs.utility``: base vs augmented classifier over seeds and data fractions.

    Every (fraction, seed) pair trains the base classifier on that fraction of the real
    training split (whole patients, :func:`augment.evaluation.utility.subsample_fraction`) and
    the augmented one on the same images plus synthetic ones; both are scored on the same
    held-out real test split. Results are means with 95% t-intervals over seeds.
    """

    seeds: int = Field(3, ge=1, le=100, description="classifier seeds per fraction (seeds 0..n-1); an interval needs >= 2")
    fractions: list[float] = Field(
        default_factory=lambda: [1.0],
        description="shares of the real training split to train on, e.g. [0.01, 0.1, 1.0]; gains show in the low-data regime",
    )
    pool_sources: Literal["subset", "strict", "all"] = Field(
        "subset",
        description="subset: only synthetic images painted on a healthy image among the kept real images (every "
        "augmented image adds a finding to an image the arm already has); strict: also their diseased reference "
        "kept; all: the whole pool (adds real anatomy from outside the fraction: a confound below 1.0)",
    )

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one fraction, e.g. [1.0]")
        bad = [f for f in v if not 0 < f <= 1]
        if bad:
            raise ValueError(f"fractions must be in (0, 1], got {bad}")
        return sorted(set(v))


LONGTAIL_ARMS = ("base", "oversample", "weighted", "copy-paste", "flow", "vae", "lsgan", "ceiling")


def _longtail_test_default() -> PhantomConfig:
    return PhantomConfig(
        n_images=400, seed=1, patient_id_offset=1_000_000, healthy_fraction=0.25,
        prevalence={"Cardiomegaly": 0.2, "Effusion": 0.2, "Atelectasis": 0.15, "Consolidation": 0.1,
                    "Nodule": 0.3, "Mass": 0.3, "Pneumothorax": 0.3},
    )


class LongtailConfig(StageConfig):
    """The long-tail benchmark (``jobs.longtail``): does augmentation beat what a user does anyway?

    Every arm trains the classifier on the same real training split (``data``), seeds
    ``0..seeds-1``, and is scored on one test set rendered apart (``test``: other patients,
    every finding with many positives). Arms that add rare-finding examples add about as many
    per finding of ``augment.findings`` as the augment plan asks of a generator.
    """

    arms: list[Literal["base", "oversample", "weighted", "copy-paste", "flow", "vae", "lsgan", "ceiling"]] = Field(
        default_factory=lambda: list(LONGTAIL_ARMS),
        description="base: real only; oversample: the rare positives repeated (the classifier's own affine and "
                    "intensity augmentation, no flips, varies the copies); weighted: classifier.pos_weight balanced; "
                    "copy-paste, flow, vae, lsgan: real + that pool's accepted images; ceiling: real + as many "
                    "extra real rare positives rendered by the phantom",
    )
    seeds: int = Field(5, ge=1, le=100, description="classifier seeds (0..n-1); every arm shares them")
    extra_per_finding: int | None = Field(
        None, ge=1, description="rare examples the oversample and ceiling arms add per finding; default: as many as the "
                                "augment plan asks of the generator (augment.target_count minus the real positives)"
    )
    test: PhantomConfig = Field(default_factory=_longtail_test_default,
                                description="the test set, rendered apart (its own seed and patient ids)")
    ceiling_seed: int = Field(2, ge=0, description="seed of the ceiling's extra real images")
    ceiling_patient_offset: int = Field(2_000_000, ge=0, le=80_000_000)
    n_boot: int = Field(1000, ge=0, le=100_000, description="patient-level bootstrap resamples of the test set")

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"give at least one arm, e.g. [base, oversample]; known: {list(LONGTAIL_ARMS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"longtail.arms lists an arm twice: {v}")
        return v


class TrackingConfig(StageConfig):
    """MLflow: a SQLite file by default, a server when a URI is given."""

    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI")
    experiment: str | None = Field(None, description="default: cxr-augment/<profile name>")
    artifact_location: str | None = None
    enabled: bool = True


class ServeConfig(StageConfig):
    """The Ray Serve generation service (``services/``): models, limits, batching, access.

    Model locations are a checkpoint file, a folder holding one, or an MLflow model URI
    (``runs:/<id>/model``, ``models:/<name>/<version>``); ``None`` means where the pipeline
    writes them under ``output_dir``. The deployment's ``user_config`` may override
    ``classifier``, ``generator``, ``references``, ``batching``, ``max_batch_size`` and
    ``batch_wait_timeout_s`` at run time (models reload without a restart).
    """

    classifier: str | None = Field(None, description="classifier checkpoint or MLflow model URI; default <output_dir>/classifier/classifier.pt")
    generator: str | None = Field(None, description="inpainting checkpoint or MLflow model URI; default <output_dir>/generator/generator.pt")
    verifier: str | None = Field(None, description="local finding verifier checkpoint (the gate's judge); default <output_dir>/verifier/verifier.pt; "
                                 "without one the classifier alone judges")
    references: str | None = Field(None, description="NIH-layout folder of diseased reference images; default the profile's data root")
    references_per_finding: int = Field(32, ge=1, le=4096, description="diseased references kept in memory per finding")
    example_sources: int = Field(8, ge=0, le=64, description="healthy example sources offered by /v1/examples and the page: the first N 'No Finding' images of the references folder; 0 disables")
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest accepted image file; larger answers 413")
    min_image_side: int = Field(32, ge=8, description="smaller images answer 422")
    max_image_side: int = Field(4096, ge=32, le=16384, description="larger images answer 422")
    max_aspect_ratio: float = Field(2.0, ge=1.0, description="long side / short side above it answers 422")
    max_findings: int = Field(3, ge=1, le=14, description="findings per /v1/generate request")
    max_samples: int = Field(4, ge=1, le=64, description="samples per request (the n option)")
    max_steps: int = Field(100, ge=1, le=1000, description="largest ODE step count a request may ask for")
    batching: bool = Field(True, description="group concurrent /v1/generate requests with @serve.batch")
    max_batch_size: int = Field(8, ge=1, le=256, description="@serve.batch max_batch_size")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0, description="@serve.batch batch_wait_timeout_s")
    max_json_bytes: int | None = Field(None, ge=1024, description="largest JSON body (/v1/inpaint, /v1/register); larger answers 413; default room for two images of max_upload_bytes in base64")
    max_inflight: int = Field(16, ge=1, le=4096, description="image requests one Ingress replica admits at once; more answer 503 with Retry-After at once")
    request_timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description="an admitted request not answered within it gets 504 (its generation is cancelled)")
    retry_after_s: int = Field(2, ge=0, le=3600, description="Retry-After of 503 answers under overload")
    require_token: bool = Field(True, description="refuse to start without a bearer token (env CXR_API_TOKEN or token_file)")
    token_file: str | None = Field(None, description="file holding the bearer token (e.g. a mounted Kubernetes Secret); re-read when it changes and wins over env CXR_API_TOKEN")

    @model_validator(mode="after")
    def _sides(self) -> "ServeConfig":
        if self.min_image_side > self.max_image_side:
            raise ValueError(f"serve.min_image_side ({self.min_image_side}) must not exceed serve.max_image_side ({self.max_image_side})")
        return self


class RunConfig(StageConfig):
    """A whole run profile (one ``configs/*.yaml``)."""

    name: str = "local"
    seed: int = Field(0, ge=0, description=SEED_HELP)
    output_dir: str = Field("runs/local", description="where stages write their outputs")
    data: DataConfig = DataConfig()
    registration: RegistrationConfig = RegistrationConfig()
    inpainting: InpaintingConfig = InpaintingConfig()
    baseline: BaselineConfig = BaselineConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    attention: AttentionConfig = AttentionConfig()
    quality: QualityConfig = QualityConfig()
    verifier: VerifierConfig = VerifierConfig()
    augment: AugmentConfig = AugmentConfig()
    input_filter: InputFilterConfig = InputFilterConfig()
    utility: UtilityConfig = UtilityConfig()
    longtail: LongtailConfig = LongtailConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"cxr-augment/{self.name}"

    def fingerprint(self, *sections: str) -> str:
        """Stable short hash of the given sections (all when none), for caching stage outputs."""
        dump = self.model_dump(mode="json")
        if sections:
            dump = {s: dump[s] for s in sections}
        blob = json.dumps(dump, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, as logged to MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json"))
        return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key; check the spelling against configs/local.yaml")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            fix = f"; set {path} to 0 or more" if e["loc"] and e["loc"][-1] == "seed" and e["type"] == "greater_than_equal" else ""
            lines.append(f"  {path}: {e['msg']}{got_s}{fix}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.path=value`` overrides applied (values parsed as YAML)."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE; write e.g. --set classifier.epochs=2")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Load and validate a run profile.

    Args:
        path: a YAML profile; ``None`` gives the built-in defaults (the embedded default).
        overrides: ``["section.key=value", ...]`` applied before validation.

    Raises:
        ConfigError: file missing, not a mapping, unknown key, wrong type; the message gives
            the dotted key path.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pick one of configs/*.yaml")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p} must hold a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
        source = str(p)
    raw = apply_overrides(raw, overrides)
    if overrides:
        source += f" with overrides {overrides}"
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


ARTIFACT_URI_SCHEMES = (
    "runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "abfss://", "dbfs:/", "http://", "https://",
)
"""Locations that are not local files: MLflow artifact URIs and object stores
(:func:`augment.tracking.local_checkpoint` downloads them)."""


def _local(path: str | os.PathLike) -> Path | None:
    """The local path of a path or ``file://`` URI; None for an MLflow or object-store URI."""
    text = str(path)
    if text.startswith(ARTIFACT_URI_SCHEMES):
        return None
    return Path(text.removeprefix("file://"))


def check_paths(
    cfg: RunConfig,
    checkpoints: Mapping[str, str | os.PathLike | None] | None = None,
    *,
    data: bool = True,
) -> None:
    """Check that the local files and folders a run reads exist, before any work (or Ray) starts.

    Checked: ``data.root`` when ``data.source`` is ``nih`` (a folder with ``images/``),
    ``classifier.weights_path`` when ``classifier.pretrained`` is ``imagenet``,
    ``attention.xrv_cache_dir`` when given and ``attention.source`` is ``xrv``, and each of
    ``checkpoints`` (a file or a folder). MLflow and object-store URIs (``runs:/``,
    ``models:/``, ``s3://``...) are left to their loaders.

    Args:
        cfg: the run profile.
        checkpoints: what names each checkpoint (a command-line flag such as
            ``"--generator"``) -> its path; None values are skipped.
        data: also check the data folder.

    Raises:
        ConfigError: every missing path, each with its key and the fix.
    """
    problems: list[str] = []
    if data and cfg.data.source == "nih" and cfg.data.root:
        root = _local(cfg.data.root)
        if root is None or not root.is_dir():
            problems.append(
                f"data.root: folder {cfg.data.root!r} not found; set data.root to an NIH-layout folder "
                "(images/*.png + Data_Entry_2017.csv), e.g. --set data.root=../shared/data/nih-sample"
            )
        elif not (root / "images").is_dir():
            problems.append(
                f"data.root: {cfg.data.root!r} has no images/ folder; an NIH-layout folder holds images/*.png "
                "and Data_Entry_2017.csv"
            )
    if cfg.classifier.pretrained == "imagenet" and cfg.classifier.weights_path:
        w = _local(cfg.classifier.weights_path)
        if w is not None and not w.is_file():
            problems.append(
                f"classifier.weights_path: file {cfg.classifier.weights_path!r} not found; give the local ImageNet "
                "EfficientNet weights file, or set classifier.pretrained=none"
            )
    if cfg.attention.source == "xrv" and cfg.attention.xrv_cache_dir:
        d = _local(cfg.attention.xrv_cache_dir)
        if d is not None and not d.is_dir():
            problems.append(
                f"attention.xrv_cache_dir: folder {cfg.attention.xrv_cache_dir!r} not found; give the folder holding "
                "the torchxrayvision weights file, or leave it unset for ~/.torchxrayvision/models_data"
            )
    for key, path in (checkpoints or {}).items():
        if path is None:
            continue
        local = _local(path)
        if local is not None and not local.exists():
            problems.append(
                f"{key}: checkpoint {str(path)!r} not found; give a checkpoint file, a folder holding one, "
                "or an MLflow model URI (runs:/<run id>/model)"
            )
    if problems:
        raise ConfigError("missing input(s), nothing was started:\n  " + "\n  ".join(problems))
