"""Stage outputs on disk, reused when the same config produced them before.

Each stage writes into ``<output_dir>/stages/<stage>-<key>/`` where ``key`` hashes the
config sections the stage depends on and the keys of its upstream stages. The folder is
built under a temporary name and renamed into place when the stage finished, with its
``result.json``; a failed or interrupted stage leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

__all__ = ["StageResult", "stage_key", "run_stage"]


@dataclass(frozen=True)
class StageResult:
    """What a stage left on disk: its folder, its JSON result, and whether it was reused."""

    name: str
    key: str
    path: Path
    result: dict[str, Any]
    reused: bool


def stage_key(cfg_sections: dict[str, Any], upstream: list[str] | None = None) -> str:
    blob = json.dumps({"cfg": cfg_sections, "up": upstream or []}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_stage(
    output_dir: str | Path,
    name: str,
    key: str,
    fn: Callable[[Path], dict[str, Any]],
    force: bool = False,
) -> StageResult:
    """Run ``fn(work_dir) -> result`` once per key; later calls reuse the finished folder.

    Args:
        output_dir: the run's output folder.
        name: stage name (folder prefix).
        key: from :func:`stage_key`.
        fn: does the work, writing files under the folder it is given, and returns a
            JSON-serialisable dict. Paths in it should be relative to that folder.
        force: run again even when a finished folder exists.
    """
    final = Path(output_dir) / "stages" / f"{name}-{key}"
    done = final / "result.json"
    if done.is_file() and not force:
        log.info("stage %s: reusing %s", name, final)
        return StageResult(name, key, final, json.loads(done.read_text()), reused=True)
    work = final.with_name(final.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        result = fn(work)
        (work / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return StageResult(name, key, final, result, reused=False)
