"""Where the repository and the read-only shared data are (importable from any test)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_SHARED", REPO.parent / "shared"))
NIH_SAMPLE = SHARED / "data" / "nih-sample"
K8S_SCHEMAS = SHARED / "k8s-schemas" / "kuberay-v1.7.0"
