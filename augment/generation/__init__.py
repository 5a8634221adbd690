"""Generation of one synthetic radiograph, shared by the batch jobs and the Serve service.

* :mod:`~augment.generation.bundle`: load the classifier, the inpainting network and the
  diseased references (checkpoint paths or MLflow URIs) -> :class:`ModelBundle`;
* :mod:`~augment.generation.generate`: reference choice, Demons transfer, inpainting,
  classifier probabilities and the gate for a batch of requests -> :class:`GenerationResult`;
* :mod:`~augment.generation.direct`: inpaint a given mask, register a given pair;
* :mod:`~augment.generation.seeded`: batched inpainting with one seed per image.

Images are (B, 1, H, W) float32 in [0, 1]. Nothing here imports Ray.
"""

from augment.generation.bundle import ModelBundle, ModelSpec, default_locations, load_bundle, pick_device, resolve_checkpoint
from augment.generation.direct import InpaintOutput, RegisterOutput, inpaint_image, register_images, upscale_field
from augment.generation.generate import (
    GeneratedSample,
    GenerationRequest,
    GenerationResult,
    ReferenceUsed,
    check_request,
    generate,
    generate_batch,
    probabilities,
    sampling_config,
)
from augment.generation.seeded import inpaint_seeded, seed_generator

__all__ = [
    "ModelBundle",
    "ModelSpec",
    "default_locations",
    "load_bundle",
    "pick_device",
    "resolve_checkpoint",
    "InpaintOutput",
    "RegisterOutput",
    "inpaint_image",
    "register_images",
    "upscale_field",
    "GeneratedSample",
    "GenerationRequest",
    "GenerationResult",
    "ReferenceUsed",
    "check_request",
    "generate",
    "generate_batch",
    "probabilities",
    "sampling_config",
    "inpaint_seeded",
    "seed_generator",
]
