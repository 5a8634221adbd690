# syntax=docker/dockerfile:1
# The one image that the RayCluster, the RayJob and the RayService run (see k8s/README.md).
#
#   docker build -t cxr-augment:ray2.60.0-py311 .                      # torch from PyPI (CUDA wheel)
#   docker build -t cxr-augment:ray2.60.0-py311-cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .  # CPU-only torch, ~4 GB smaller
#
# Ray is not pinned here: `pip install .` installs the version pinned in pyproject.toml
# (ray[train,serve,data]==2.60.0), and the image tag, the manifests' rayVersion and that pin
# are kept equal by tests/k8s/test_manifests.py. Torch is pinned to the package's pin too:
# on Linux x86_64 the PyPI wheel of torch 2.14.1 is the CUDA build (it pulls the nvidia-*
# runtime wheels), so the default image runs on GPU nodes with only the NVIDIA driver and
# device plugin on the host; the CPU variant is for clusters without GPUs.
FROM python:3.11-slim

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/ray

# wget: KubeRay's default liveness/readiness probes run `wget ... | grep success` in the Ray
# containers. tini: reaps Ray's child processes when the container is used outside KubeRay.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 ray \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray

WORKDIR /app

# torch first, from the chosen index (PyPI by default); `pip install .` then finds the pin met.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"; \
    else \
      pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"; \
    fi

# The package (augment, jobs, services) with its pinned dependencies, Ray among them.
COPY pyproject.toml README.md* ./
COPY augment ./augment
COPY jobs ./jobs
COPY services ./services
RUN pip install . \
 && python -c "import ray, torch; print('ray', ray.__version__, 'torch', torch.__version__)"

# Run profiles: the RayJob entrypoint and the Serve application read configs/*.yaml relative
# to /app, which is every Ray container's workingDir in k8s/base.
COPY configs ./configs

USER 1000:1000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "jobs.pipeline", "--help"]
