"""Tiny random-weight models, a phantom reference folder and a profile for the service tests.

Also used by ``bench/bench_serve.py``. Everything is written under the given folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CLASSIFIER_SIDE = 32
WORK_SIZE = 64


def build_tiny_setup(
    root: Path,
    work_size: int = WORK_SIZE,
    crop_size: int = 32,
    n_images: int = 24,
    extra: dict | None = None,
    classifier_side: int = CLASSIFIER_SIDE,
    block_out_channels: tuple[int, ...] = (8, 16),
    steps: int = 2,
    iterations: int = 8,
) -> Path:
    """Write a classifier, a generator, a phantom reference folder and a profile under ``root``.

    The defaults make the tests' tiny random-weight models; the benchmark passes the sizes of
    ``configs/local.yaml``. ``extra`` is merged into the profile's ``serve`` section.

    Returns:
        the profile's path (``root/profile.yaml``).
    """
    import torch

    from augment.classifier import build_classifier, save_checkpoint
    from augment.config import ClassifierConfig, InpaintingConfig, PhantomConfig
    from augment.data.phantom import generate_phantom
    from augment.inpainting import build_model
    from augment.inpainting import save_checkpoint as save_generator

    root = Path(root)
    torch.manual_seed(0)
    ccfg = ClassifierConfig(arch="efficientnet-b0", image_size=classifier_side)
    save_checkpoint(root / "models" / "classifier.pt", build_classifier(ccfg), ccfg)
    icfg = InpaintingConfig(crop_size=crop_size, block_out_channels=list(block_out_channels), layers_per_block=1,
                           mid_attention=len(block_out_channels) > 2)
    save_generator(root / "models" / "generator.pt", build_model(icfg).eval(), icfg)
    pcfg = PhantomConfig(n_images=n_images, image_size=work_size, seed=0, healthy_fraction=0.25,
                         prevalence={"Cardiomegaly": 0.5, "Effusion": 0.5, "Nodule": 0.5, "Mass": 0.4})
    refs = generate_phantom(pcfg, root / "references", progress=False)
    profile = {
        "name": "serve-test",
        "output_dir": str(root / "runs"),
        "data": {"source": "nih", "root": str(refs), "image_size": work_size},
        "registration": {"iterations": iterations, "pyramid_levels": 1, "prealign": "none", "k_references": 2},
        "attention": {"source": "phantom"},
        "inpainting": {"steps": steps, "guidance": 1.0, "bf16": False},
        "resources": {"num_cpus": 2, "use_gpu": False, "cpus_per_actor": 0.5, "torch_threads": 1},
        "tracking": {"enabled": False},
        "serve": {
            "classifier": str(root / "models" / "classifier.pt"),
            "generator": str(root / "models" / "generator.pt"),
            "references": str(refs),
            "references_per_finding": 4,
            "max_upload_bytes": 256 * 1024,
            "max_image_side": 512,
            "max_batch_size": 8,
            "batch_wait_timeout_s": 0.01,
            **(extra or {}),
        },
    }
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path
