"""Compare MLflow runs side by side: a Markdown and an HTML report.

::

    python -m jobs.compare --tracking-uri sqlite:///runs/mlflow.db --experiment cxr-local --out reports/compare
    python -m jobs.compare --run-ids 3f2a...,9c1b... --out reports/compare
    python -m jobs.compare --tag cxr.stage=classifier --out reports/compare

The report lists the runs, then the config (params) that differs between them, the metrics
side by side, one finding x run table per per-finding metric family (``test_auc_<Finding>``,
``val_auc_<Finding>``, ``val_acc_youden_<Finding>``, ...), the params equal in all runs (once),
and the PNG plots the runs logged. ``report.md`` links the plots (copied into ``images/``);
``report.html`` embeds them, plus a metrics bar chart made here. Every file is written
atomically (temp file, then rename). No matching run, an unknown experiment or a missing
store exits with status 2 and says which.
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from augment.data.io import atomic_write_bytes
from augment.findings import FINDINGS

log = logging.getLogger("cxr.compare")

__all__ = ["CompareError", "RunInfo", "select_runs", "build_report", "main"]

MAX_PLOTS_PER_RUN = 12
MAX_PLOT_BYTES = 5 * 1024 * 1024


class CompareError(ValueError):
    """Nothing to compare (no store, no experiment, no run); the message says which."""


@dataclass(frozen=True)
class RunInfo:
    """What the report needs of one run."""

    run_id: str
    name: str
    experiment: str
    status: str
    start_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    plots: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.run_id[:8]})" if self.name else self.run_id[:8]


def _check_store(uri: str) -> None:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        raise CompareError(f"no MLflow store at {uri[len(prefix):]}; check --tracking-uri (runs write sqlite:///runs/mlflow.db by default)")
    if "://" not in uri and not Path(uri).is_dir():
        raise CompareError(f"no MLflow store folder at {uri}; check --tracking-uri")


def _parse_tag(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise CompareError(f"--tag must be KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise CompareError(f"--tag needs a key before '=', got {text!r}")
    return k.strip(), v


def select_runs(client: Any, experiment: str | None = None, run_ids: Sequence[str] = (), tag: str | None = None, max_runs: int = 50) -> list[Any]:
    """The MLflow runs to compare, in start-time order.

    Args:
        client: an ``MlflowClient``.
        experiment: an experiment name (optionally narrowed by ``tag``).
        run_ids: explicit run ids (alone).
        tag: ``key=value``; with ``experiment`` filters its runs, alone searches all experiments.

    Raises:
        CompareError: unknown experiment or run id, or nothing matched.
    """
    from mlflow.exceptions import MlflowException

    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                runs.append(client.get_run(rid))
            except MlflowException:
                raise CompareError(f"no run with id {rid!r} in this tracking store") from None
        return runs
    filt = ""
    if tag:
        k, v = _parse_tag(tag)
        q = '"' if "'" in v else "'"
        filt = f"tags.`{k}` = {q}{v}{q}"
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise CompareError(f"no experiment named {experiment!r} in this tracking store; it has {names}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = list(client.search_runs(ids, filter_string=filt, max_results=max_runs, order_by=["attributes.start_time ASC"])) if ids else []
    if not runs:
        what = " and ".join(x for x in (f"experiment {experiment!r}" if experiment else "", f"tag {tag}" if tag else "") if x)
        raise CompareError(f"no runs match {what or 'the selection'}")
    return runs


def _plots(client: Any, run_id: str, dst: Path, tracking_uri: str) -> tuple[Path, ...]:
    """Download the run's PNG artifacts (breadth first, at most MAX_PLOTS_PER_RUN)."""
    import mlflow

    found, queue = [], [None]
    while queue and len(found) < MAX_PLOTS_PER_RUN:
        path = queue.pop(0)
        try:
            items = client.list_artifacts(run_id, path)
        except Exception as exc:  # an unreachable artifact store must not sink the report
            log.warning("cannot list artifacts of run %s: %s", run_id, exc)
            return tuple(found)
        for it in items:
            if it.is_dir and (path or "").count("/") < 3:
                queue.append(it.path)
            elif it.path.lower().endswith(".png") and (it.file_size or 0) <= MAX_PLOT_BYTES and len(found) < MAX_PLOTS_PER_RUN:
                try:
                    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=it.path, dst_path=str(dst), tracking_uri=tracking_uri)
                    found.append(Path(local))
                except Exception as exc:
                    log.warning("cannot download %s of run %s: %s", it.path, run_id, exc)
    return tuple(found)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def _per_finding(metrics_keys: set[str]) -> dict[str, dict[str, str]]:
    """family (e.g. ``test_auc``) -> finding -> metric key, for keys ending in ``_<Finding>``."""
    fam: dict[str, dict[str, str]] = {}
    for key in sorted(metrics_keys):
        for f in sorted(FINDINGS, key=len, reverse=True):  # longest first: Pleural_Thickening before Thickening
            if key.endswith("_" + f) and len(key) > len(f) + 1:
                fam.setdefault(key[: -len(f) - 1], {})[f] = key
                break
    return {k: v for k, v in fam.items() if len(v) >= 2 or k.endswith("auc")}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, str]:
    """(markdown, html) of one table."""
    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    md = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(esc(_fmt(c)) for c in r) + " |" for r in rows]
    h = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr></thead><tbody>"]
    h += ["<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows]
    h.append("</tbody></table>")
    return "\n".join(md), "\n".join(h)


def _bar_chart(runs: Sequence[RunInfo], keys: Sequence[str], title: str) -> bytes | None:
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(keys) * max(1, len(runs)) / 2 + 2), 3.8))
    x = np.arange(len(keys))
    w = 0.8 / max(len(runs), 1)
    for i, r in enumerate(runs):
        vals = [r.metrics.get(k, np.nan) for k in keys]
        ax.bar(x - 0.4 + w * (i + 0.5), vals, w, label=r.label)
    ax.set_xticks(x, keys, rotation=40, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def build_report(runs: Sequence[RunInfo], out: Path, selection: str) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``images/*.png`` under ``out``; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in runs]
    md: list[str] = [f"# Run comparison\n\nSelection: {selection}; {len(runs)} run(s).\n"]
    ht: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Run comparison</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}"
        "img{max-width:640px;margin:4px;border:1px solid #ddd}</style></head><body>",
        f"<h1>Run comparison</h1><p>Selection: {html.escape(selection)}; {len(runs)} run(s).</p>",
    ]

    def section(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        m, h = _table(header, rows)
        md.append(f"## {title}\n\n{note + chr(10) + chr(10) if note else ''}{m}\n")
        ht.append(f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(note)}</p>" if note else "") + h)

    info = [
        ("run id", [r.run_id for r in runs]),
        ("experiment", [r.experiment for r in runs]),
        ("status", [r.status for r in runs]),
        ("git commit", [r.tags.get("mlflow.source.git.commit") for r in runs]),
        ("stage", [r.tags.get("cxr.stage") for r in runs]),
    ]
    section("Runs", ["", *labels], [[k, *v] for k, v in info if any(x is not None for x in v)])

    all_params = sorted({k for r in runs for k in r.params})
    differ = [k for k in all_params if len({r.params.get(k) for r in runs}) > 1]
    same = [k for k in all_params if k not in differ]
    if differ:
        section("Config differences", ["param", *labels], [[k, *[r.params.get(k) for r in runs]] for k in differ])
    else:
        md.append("## Config differences\n\nNone: every param is equal in all runs.\n")
        ht.append("<h2>Config differences</h2><p>None: every param is equal in all runs.</p>")

    all_metrics = {k for r in runs for k in r.metrics}
    families = _per_finding(all_metrics)
    in_family = {k for fam in families.values() for k in fam.values()}
    scalar = sorted(all_metrics - in_family)
    if scalar:
        section("Metrics", ["metric", *labels], [[k, *[r.metrics.get(k) for r in runs]] for k in scalar])
    for fam, keys in families.items():
        rows = [[f, *[r.metrics.get(keys[f]) for r in runs]] for f in FINDINGS if f in keys]
        section(f"Per finding: {fam}", ["finding", *labels], rows)

    charts: list[tuple[str, bytes]] = []
    unit = [k for k in scalar if all(0 <= r.metrics.get(k, 0.0) <= 1 for r in runs)][:20]
    png = _bar_chart(runs, unit, "metrics in [0, 1]")
    if png:
        charts.append(("metrics.png", png))
    for fam, keys in families.items():
        if "auc" in fam:
            png = _bar_chart(runs, [keys[f] for f in FINDINGS if f in keys], fam)
            if png:
                charts.append((f"per_finding_{fam}.png", png))
    if charts:
        md.append("## Charts\n")
        ht.append("<h2>Charts</h2>")
        for name, data in charts:
            atomic_write_bytes(out / "images" / name, data)
            md.append(f"![{name}](images/{name})\n")
            ht.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")

    if same:
        section("Common config (equal in all runs)", ["param", "value"], [[k, runs[0].params.get(k)] for k in same])

    if any(r.plots for r in runs):
        md.append("## Plots logged by the runs\n")
        ht.append("<h2>Plots logged by the runs</h2>")
        for r in runs:
            if not r.plots:
                continue
            md.append(f"### {r.label}\n")
            ht.append(f"<h3>{html.escape(r.label)}</h3>")
            for p in r.plots:
                data = p.read_bytes()
                name = f"{r.run_id[:8]}_{p.name}"
                atomic_write_bytes(out / "images" / name, data)
                md.append(f"![{p.name}](images/{name})\n")
                ht.append(f"<figure style='display:inline-block'><img alt='{html.escape(p.name)}' "
                          f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
                          f"<figcaption>{html.escape(p.name)}</figcaption></figure>")
    ht.append("</body></html>")
    md_path = atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    html_path = atomic_write_bytes(out / "report.html", "\n".join(ht).encode())
    return md_path, html_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db", help="MLflow tracking URI")
    p.add_argument("--experiment", default=None, help="compare the runs of this experiment")
    p.add_argument("--run-ids", default=None, help="comma-separated run ids")
    p.add_argument("--tag", default=None, metavar="KEY=VALUE", help="runs with this tag (within --experiment when given)")
    p.add_argument("--out", default="reports/compare", help="output folder")
    p.add_argument("--max-runs", type=int, default=50)
    p.add_argument("--no-plots", action="store_true", help="do not download the runs' PNG artifacts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ids = [x.strip() for x in (args.run_ids or "").split(",") if x.strip()]
    if not (args.experiment or ids or args.tag):
        print("error: give --experiment NAME, --run-ids a,b,c or --tag key=value", file=sys.stderr)
        return 2
    if ids and (args.experiment or args.tag):
        print("error: --run-ids selects runs alone; drop --experiment/--tag", file=sys.stderr)
        return 2
    try:
        from augment.tracking import resolve_uri

        uri = resolve_uri(args.tracking_uri)
        _check_store(uri)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        runs = select_runs(client, args.experiment, ids, args.tag, args.max_runs)
        exp_names: dict[str, str] = {}
        infos = []
        with tempfile.TemporaryDirectory(prefix="cxr-compare-") as tmp:
            for run in runs:
                eid = run.info.experiment_id
                if eid not in exp_names:
                    exp_names[eid] = client.get_experiment(eid).name
                plots = () if args.no_plots else _plots(client, run.info.run_id, Path(tmp) / run.info.run_id, uri)
                infos.append(
                    RunInfo(
                        run_id=run.info.run_id,
                        name=run.info.run_name or run.data.tags.get("mlflow.runName", ""),
                        experiment=exp_names[eid],
                        status=run.info.status,
                        start_time=run.info.start_time,
                        params=dict(run.data.params),
                        metrics=dict(run.data.metrics),
                        tags=dict(run.data.tags),
                        plots=plots,
                    )
                )
            selection = ", ".join(
                x for x in (f"experiment {args.experiment}" if args.experiment else "", f"tag {args.tag}" if args.tag else "",
                            f"run ids {','.join(ids)}" if ids else "") if x
            )
            md_path, html_path = build_report(infos, Path(args.out), selection)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            raise
        print(f"error: MLflow at {args.tracking_uri}: {exc}", file=sys.stderr)
        return 2
    print(f"compared {len(infos)} run(s): {md_path} and {html_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
