"""The one preamble of every job's command line: the profile, its overrides, logging, the data.

Each ``python -m jobs.<name>`` builds its parser with :func:`job_parser` (``--config``, ``--set``
and, where the job tracks, ``--tracking-uri`` and ``--parent-run-id``), adds its own arguments,
and runs its body under :func:`run`: a bad profile or unusable data is printed as one line
naming the fix and exits 2, never as a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from augment.config import ConfigError, RunConfig, load_config

__all__ = ["JobInputError", "job_parser", "load_job_config", "job_split", "run"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JobInputError(Exception):
    """Input the user can fix (profile, data, paths): printed as is, exit status 2."""


def job_parser(prog: str, doc: str | None, example: str, *, config_default: str | None = None,
               tracking: bool = True, parent: bool = True) -> argparse.ArgumentParser:
    """A parser with ``--config`` and ``--set`` (and ``--tracking-uri`` when the job tracks,
    ``--parent-run-id`` when it also runs as a child); ``example`` is a ``--set`` shown in the
    help, e.g. ``classifier.epochs=2``."""
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    p.add_argument("--config", default=config_default,
                   help="run profile (configs/*.yaml)" + ("" if config_default else "; default: built-in defaults"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config key, e.g. --set {example} (repeatable)")
    if tracking:
        p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides tracking.uri)")
    if tracking and parent:
        p.add_argument("--parent-run-id", default=None, help="make the MLflow run a child of this run")
    return p


def load_job_config(args: argparse.Namespace) -> RunConfig:
    """Logging on, then the profile with ``--set`` and ``--tracking-uri`` applied.

    Raises:
        JobInputError: the profile or an override is invalid (the message names the key).
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    overrides = list(args.overrides)
    if getattr(args, "tracking_uri", None):
        overrides.append(f"tracking.uri={args.tracking_uri}")
    try:
        return load_config(args.config, overrides)
    except ConfigError as exc:
        raise JobInputError(str(exc)) from None


def job_split(cfg: RunConfig):
    """The profile's data, prepared and split by patient (:func:`augment.data.prepare_data`).

    Raises:
        JobInputError: the data folder is missing or unusable.
    """
    from augment.data import DataError, prepare_data

    try:
        return prepare_data(cfg)[1]
    except (DataError, ValueError) as exc:
        raise JobInputError(f"data: {exc}") from None


def run(body: Callable[[], int], fixable: tuple[type[BaseException], ...] = ()) -> int:
    """``body()``; a :class:`JobInputError`, or one of the ``fixable`` errors (bad data, a missing
    pool: ``error: <message>``), is printed to stderr as exit status 2, never a stack trace."""
    try:
        return body()
    except JobInputError as exc:
        print(exc, file=sys.stderr)
        return 2
    except fixable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
