"""Figures people would rather look at than numbers; written as PNG with the Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["image_grid", "save_figure"]


def _as_hw(img: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    return np.asarray(img, dtype=np.float32).squeeze()


def image_grid(
    images: Sequence[np.ndarray | torch.Tensor],
    titles: Sequence[str] | None = None,
    ncols: int = 6,
    overlays: Sequence[np.ndarray | torch.Tensor | None] | None = None,
    cell: float = 1.8,
):
    """A grid of grayscale images (each (H, W) or (1, H, W), in [0, 1]), optional red mask overlays.

    Returns:
        A matplotlib Figure (caller saves or logs it).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + 0.3), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(_as_hw(images[k]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if overlays is not None and k < len(overlays) and overlays[k] is not None:
            m = _as_hw(overlays[k]) > 0.5
            rgba = np.zeros(m.shape + (4,), np.float32)
            rgba[m] = (1.0, 0.1, 0.1, 0.35)
            ax.imshow(rgba, interpolation="nearest")
        if titles is not None and k < len(titles):
            ax.set_title(titles[k], fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure as PNG (atomically) and close it."""
    import io

    import matplotlib.pyplot as plt

    from augment.data.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
