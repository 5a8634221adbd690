"""Generation for the Serve service: requests in, synthetic radiographs and verdicts out.

The method itself (reference, transfer, painting, one seeding rule) is the batch job's chain,
:mod:`augment.synthesis.chain`; this package adds what a request needs around it:

* :mod:`~augment.generation.bundle`: load the classifier, the generator (any kind, as an
  :class:`~augment.painter.Painter`), the verifier and the diseased references (checkpoint
  paths or MLflow URIs) -> :class:`ModelBundle`;
* :mod:`~augment.generation.generate`: a batch of requests through the chain, classifier
  probabilities and the gate -> :class:`GenerationResult`;
* :mod:`~augment.generation.direct`: inpaint a given mask, register a given pair.

Images are (B, 1, H, W) float32 in [0, 1]. Nothing here imports Ray.
"""

from augment.generation.bundle import ModelBundle, ModelSpec, default_locations, load_bundle, resolve_checkpoint
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

__all__ = [
    "ModelBundle",
    "ModelSpec",
    "default_locations",
    "load_bundle",
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
]
