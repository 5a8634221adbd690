"""Flow-matching inpainting: paint a finding into the masked region of a radiograph.

* :mod:`~augment.inpainting.interpolant`: the stochastic interpolant with a data-dependent
  coupling (Albergo et al. 2023), ``PathSample`` and the mask-weighted loss.
* :mod:`~augment.inpainting.model`: the velocity network (diffusers ``UNet2DModel``),
  EMA, checkpoints ``{state_dict, config, version}``.
* :mod:`~augment.inpainting.crop`: crops around the mask, so cost follows the lesion.
* :mod:`~augment.inpainting.sampler`: Euler / Heun / dopri5 with classifier-free guidance;
  ``inpaint(model, image, mask, findings, cfg, generator) -> InpaintResult``.
* :mod:`~augment.inpainting.train`: training masks, batches, ``fit_generator``.

Images are (B, 1, H, W) float32 in [0, 1]; the network works in [-1, 1].
"""

from augment.inpainting.interpolant import PathSample, interpolate, masked_mse, sample_path
from augment.inpainting.model import (
    Conditioning,
    VelocityNet,
    build_model,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)
from augment.inpainting.sampler import InpaintResult, findings_tensor, inpaint, integrate

__all__ = [
    "PathSample",
    "interpolate",
    "masked_mse",
    "sample_path",
    "Conditioning",
    "VelocityNet",
    "build_model",
    "load_checkpoint",
    "load_generator",
    "save_checkpoint",
    "InpaintResult",
    "findings_tensor",
    "inpaint",
    "integrate",
]
