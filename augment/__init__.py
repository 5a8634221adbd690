"""cxr-augment: synthetic chest X-rays of rare findings to augment classifier training.

The library is plain PyTorch, NumPy and SimpleITK and never imports Ray; Ray lives in
``jobs/`` and ``services/``.

Image convention, everywhere inside the library: a float32 ``torch.Tensor`` in [0, 1] of
shape (B, 1, H, W) (a single image as a NumPy array is (H, W)). Conversions to and from
files happen in :mod:`augment.data.io` only.
"""

from augment.findings import FINDINGS, LABELS, NO_FINDING

__version__ = "0.1.0"
__all__ = ["FINDINGS", "LABELS", "NO_FINDING", "__version__"]
