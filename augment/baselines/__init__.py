"""Baseline generators for comparison with the flow-matching inpainter (issue #7).

From "Generating Synthetic Chest X-Rays with generative modeling": a class-conditional
LSGAN, a class-conditional VAE and a Gaussian-mixture-prior VAE, each drawing a whole
``inpainting.crop_size`` crop of the requested findings.

* :mod:`~augment.baselines.base`: the shared interface :class:`BaselineGenerator`
  (``sample``, ``inpaint``: crop around the mask as the flow inpainter, paste inside the
  mask only).
* :mod:`~augment.baselines.registry`: the kinds, and checkpoints ``{state_dict, config, version, kind}``.
* :mod:`~augment.baselines.layers`: DCGAN conv stacks.
* :mod:`~augment.baselines.lsgan`, :mod:`~augment.baselines.vae`: the models and losses.
* :mod:`~augment.baselines.train`: ``fit_baseline`` on the flow model's training set.

:func:`augment.painter.load_painter` loads a baseline checkpoint as it loads the flow model's,
and both paint through ``Painter.paint``, so the augmentation job and the service swap
generators by checkpoint.
"""

from augment.baselines.base import BASELINE_KINDS, BaselineGenerator, BaselineInpaint
from augment.baselines.lsgan import LSGAN
from augment.baselines.registry import build_baseline, load_baseline, save_baseline
from augment.baselines.train import BaselineFit, fit_baseline
from augment.baselines.vae import GMVAE, ConditionalVAE, VAELoss

__all__ = [
    "BASELINE_KINDS",
    "BaselineGenerator",
    "BaselineInpaint",
    "build_baseline",
    "load_baseline",
    "save_baseline",
    "LSGAN",
    "ConditionalVAE",
    "GMVAE",
    "VAELoss",
    "BaselineFit",
    "fit_baseline",
]
