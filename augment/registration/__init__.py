"""Demons registration of a diseased reference onto a healthy radiograph (step 2 of the method).

Public API:

* :func:`register` -> :class:`Registration`: pre-alignment + Demons (``backend`` torch or
  simpleitk, ``variant`` symmetric or diffeomorphic) on a batch of pairs;
* :func:`warp_map`: carry an attention map along a registration;
* :func:`transfer_region` -> :class:`RegionTransfer`: the region to repaint on the healthy
  image, kept inside its body mask;
* :func:`choose_references` -> :class:`ReferenceChoice`: the k most similar diseased
  references for a finding;
* building blocks: :func:`demons_torch`, :func:`demons_sitk`, :func:`estimate_prealignment`,
  warping (:func:`warp_image`, :func:`warp_mask`, :func:`warp_tensor`),
  :func:`jacobian_determinant`, :func:`folded_fraction`, :func:`mse`, :func:`ncc`,
  :func:`body_mask`.

Modules: ``api`` (register, warp_map), ``demons`` (torch), ``sitk_backend``, ``warp``,
``prealign``, ``smoothing``, ``references``, ``transfer``, ``body``, ``checks``.

Images are float32 (B, 1, H, W) in [0, 1]. Fields are (B, 2, H, W) in pixels, channel 0 =
x (columns), channel 1 = y (rows), pull-back: ``warped(p) = moving(p + field(p))`` (the
SimpleITK convention with spacing 1); see :mod:`augment.registration.warp`.
"""

from augment.registration.api import Registration, register, warp_map
from augment.registration.body import body_mask
from augment.registration.demons import DemonsField, DemonsParams, demons_torch
from augment.registration.prealign import Prealignment, affine_field, compose_with_affine, estimate_prealignment
from augment.registration.references import ReferenceChoice, choose_references, similarity_scores
from augment.registration.transfer import RegionTransfer, transfer_region
from augment.registration.warp import (
    folded_fraction,
    jacobian_determinant,
    mse,
    ncc,
    warp_image,
    warp_mask,
    warp_tensor,
)

__all__ = [
    "Registration",
    "register",
    "warp_map",
    "RegionTransfer",
    "transfer_region",
    "ReferenceChoice",
    "choose_references",
    "similarity_scores",
    "DemonsParams",
    "DemonsField",
    "demons_torch",
    "demons_sitk",
    "Prealignment",
    "estimate_prealignment",
    "affine_field",
    "compose_with_affine",
    "warp_tensor",
    "warp_image",
    "warp_mask",
    "jacobian_determinant",
    "folded_fraction",
    "mse",
    "ncc",
    "body_mask",
]


def __getattr__(name: str):
    # SimpleITK takes ~0.4 s to import: load that backend only when it is asked for.
    if name == "demons_sitk":
        from augment.registration.sitk_backend import demons_sitk

        return demons_sitk
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
