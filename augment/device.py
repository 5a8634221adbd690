"""The one device rule of a run: ``resources.use_gpu`` true means CUDA, false means the CPU.

Every stage that places a model or a batch (the classifier, the generators, registration, the
verifier and the gate, in jobs and in the service) asks :func:`run_device`; there is no other
device key. Library functions compute where their inputs are (registration, painting), so the
caller that moved the inputs chose the device by this rule.
"""

from __future__ import annotations

import torch

__all__ = ["run_device"]


def run_device(use_gpu: bool) -> torch.device:
    """CUDA when ``use_gpu`` (``resources.use_gpu``), else the CPU.

    Raises:
        ValueError: a GPU is asked for where CUDA is not available (the message names the fix).
    """
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("resources.use_gpu is true but no CUDA GPU is visible here; set resources.use_gpu=false, "
                         "or run on a GPU node")
    return torch.device("cuda")
