import subprocess
import sys

from shared_paths import REPO


def test_import_augment_does_not_import_ray():
    code = (
        "import sys, augment, augment.config, augment.data, augment.data.nih, augment.data.io, "
        "augment.data.splits, augment.data.dataset, augment.tracking\n"
        "import importlib, pkgutil\n"
        "for m in pkgutil.walk_packages(augment.__path__, 'augment.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_layout_folders_exist():
    for name in ("augment", "jobs", "services", "configs", "k8s", "tests", "bench", "docs"):
        assert (REPO / name).is_dir(), name
