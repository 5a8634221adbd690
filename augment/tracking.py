"""MLflow tracking: one experiment per profile, a parent run per pipeline run, a child per stage.

The default tracking URI is a SQLite file in the working folder (``sqlite:///mlflow.db``),
so nothing needs a server; ``tracking.uri`` (or ``--tracking-uri``) points at one. Every
run gets the config as params and tags for the git commit, the profile and the data
fingerprint. MLflow is imported lazily so that ``import augment`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from augment.config import ARTIFACT_URI_SCHEMES

if TYPE_CHECKING:  # pragma: no cover
    import mlflow

    from augment.config import RunConfig, TrackingConfig

log = logging.getLogger(__name__)

__all__ = ["git_commit", "resolve_uri", "local_checkpoint", "ARTIFACT_URI_SCHEMES", "configure", "start_run", "log_config", "ui_command",
           "metrics_to_mlflow", "MetricLog"]



def git_commit(cwd: str | Path | None = None) -> str:
    """The checkout's commit (``+dirty`` when it has changes), or ``CXR_GIT_COMMIT``, or 'unknown'."""
    env = os.environ.get("CXR_GIT_COMMIT")
    if env:
        return env
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so workers in other folders find the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def local_checkpoint(path_or_uri: str | os.PathLike, names: tuple[str, ...], tracking_uri: str | None = None) -> Path:
    """A local path for a checkpoint given as a file, a folder holding one, ``file://...``,
    or an MLflow artifact URI (downloaded; ``runs:/``, ``models:/``, object stores).

    A folder is searched recursively for ``names`` first, then for any ``*.pt``. Whether
    the returned file exists is left to the caller's loader (it knows what to suggest).

    Raises:
        ValueError: the download failed, or the folder holds no checkpoint.
    """
    text = str(path_or_uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if text.startswith(ARTIFACT_URI_SCHEMES):
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        except Exception as exc:  # MlflowException, network errors
            raise ValueError(f"{text}: cannot download from MLflow ({exc}); check the URI and the tracking URI") from None
    else:
        local = Path(text)
    if local.is_dir():
        found = [p for n in names for p in sorted(local.rglob(n))] or sorted(local.rglob("*.pt"))
        if not found:
            raise ValueError(
                f"{path_or_uri}: the folder holds no {' or '.join(names)} nor any *.pt checkpoint; "
                "give the checkpoint file or the logged model"
            )
        local = found[0]
    return local


def configure(tracking: "TrackingConfig", experiment: str) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    import mlflow

    uri = resolve_uri(tracking.uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(experiment, artifact_location=tracking.artifact_location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_config(cfg: "RunConfig") -> None:
    """Log the whole config as dotted params and as a YAML artifact."""
    import mlflow
    import yaml

    params = {k: ("" if v is None else str(v))[:500] for k, v in cfg.flat().items()}
    mlflow.log_params(params)
    mlflow.log_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config.yaml")


@contextlib.contextmanager
def start_run(
    cfg: "RunConfig",
    stage: str,
    parent_run_id: str | None = None,
    data_fingerprint: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator["mlflow.ActiveRun"]:
    """Start (and end) an MLflow run for a pipeline or one stage.

    Args:
        cfg: the run profile; its params are logged.
        stage: ``"pipeline"`` for the parent run, else the stage name (the child's name).
        parent_run_id: makes this a child run; works across processes (Ray workers), unlike
            MLflow's ``nested=True`` which needs the parent active in the same process.
        data_fingerprint: tagged as ``data.fingerprint``.
        tags: extra tags.
    """
    import mlflow

    configure(cfg.tracking, cfg.experiment_name)
    all_tags = {
        "cxr.stage": stage,
        "cxr.profile": cfg.name,
        "cxr.config_hash": cfg.fingerprint(),
        "mlflow.source.git.commit": git_commit(),
    }
    if data_fingerprint:
        all_tags["data.fingerprint"] = data_fingerprint
    if tags:
        all_tags.update(tags)
    active = mlflow.active_run()
    nested = active is not None and parent_run_id == active.info.run_id
    run = mlflow.start_run(
        run_name=stage if parent_run_id else f"{cfg.name}-{stage}",
        parent_run_id=None if nested else parent_run_id,
        nested=nested,
        tags=all_tags,
    )
    status = "FAILED"
    try:
        with run:
            log_config(cfg)
            yield run
            status = "FINISHED"
    finally:
        if status != "FINISHED":
            log.warning("MLflow run %s of stage %s ended as FAILED", run.info.run_id, stage)


def ui_command(tracking: "TrackingConfig") -> str:
    """The shell command that opens the MLflow UI on this store."""
    uri = resolve_uri(tracking.uri)
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri} --port 5000"
    return f"open {uri} in a browser"


def metrics_to_mlflow(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the finite numeric entries of a dict; skip None/NaN (a missing value is not a zero)."""
    import mlflow

    clean = {
        k.replace(" ", "_"): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


class MetricLog:
    """One run's metrics and files, batched, from any process (a Ray Train worker too).

    ``add(values, step)`` queues the finite numbers of a dict (None and NaN are skipped: a
    missing value is not a zero) and sends them in one ``log_batch`` call every ``every``
    values and on ``flush()``; ``artifact(path)`` uploads a file. With ``run_id`` None
    (tracking off) every call does nothing. A tracking failure is logged as a warning and
    never raised: tracking must never kill training.
    """

    def __init__(self, run_id: str | None, tracking_uri: str | None = None, every: int = 100, what: str = "metrics") -> None:
        self.run_id = run_id
        self.every = max(1, int(every))
        self.what = what
        self._pending: list[Any] = []
        self._client = None
        if run_id is not None:
            from mlflow import MlflowClient
            from mlflow.entities import Metric

            self._metric = Metric
            self._client = MlflowClient(tracking_uri=resolve_uri(tracking_uri) if tracking_uri else None)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def add(self, values: dict[str, Any], step: int) -> None:
        if self._client is None:
            return
        now = int(time.time() * 1000)
        self._pending.extend(
            self._metric(k.replace(" ", "_"), float(v), now, int(step)) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        )
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if self._client is None or not pending:
            return
        try:
            self._client.log_batch(self.run_id, metrics=pending)
        except Exception as exc:  # tracking must never kill training
            log.warning("could not log %s to MLflow: %s", self.what, exc)

    def artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self._client is None:
            return
        try:
            self._client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)
        except Exception as exc:
            log.warning("could not log %s to MLflow: %s", path, exc)
