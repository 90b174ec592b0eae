"""The failed steps of a grid run, as every executor's workers record them in the run directory.

A worker whose step raises writes one record, ``.workers/failed/<step>.json`` (the step, its error
line, the worker, and where its traceback and its log are), and goes on with the steps that do not
need it. The records are files in the shared run directory, so the workers of a local or a Ray
executor (on any node) skip a step another worker found failing, and the driver's live view and
its closing summary read them. A new run of the grid clears them first: rerunning retries.
"""

from __future__ import annotations

import os
import shutil
import socket
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from ticketlab.errors import TicketlabError, first_line
from ticketlab.experiments.grid.plan import GridStep
from ticketlab.experiments.steps import StepStore
from ticketlab.io import read_json, write_json

WORKERS_DIR = ".workers"  # each worker's account of what it did, read by the driver
FAILED_DIR = "failed"
LOG_FILE = "log.jsonl"  # a fine-tuning step's log (experiments.finetune.LOG_FILE)


@dataclass(frozen=True)
class StepFailure:
    """One failed step: its key, its error's first line, who ran it, and its traceback and log
    files (relative to the run directory; ``log`` is None when the step wrote none)."""

    step: str
    error: str
    worker: str
    traceback: str
    log: str | None = None

    def describe(self) -> str:
        files = f"traceback {self.traceback}" + (f", log {self.log}" if self.log else "")
        return f"{self.step}: {self.error} ({files})"


def this_worker() -> str:
    """How a worker is named in the live view and the records: ``pid N on HOST``, as claims are."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def error_line(error: BaseException) -> str:
    """One line for a failed step: the message (with the exception's type unless it is ours)."""
    line = first_line(error)
    return line if isinstance(error, TicketlabError) else f"{type(error).__name__}: {line}"


def _slug(step_key: str) -> str:
    return step_key.replace("/", "__")


def failures_dir(root: Path) -> Path:
    return root / WORKERS_DIR / FAILED_DIR


def record_failure(
    root: Path,
    step: GridStep,
    error: BaseException | str,
    *,
    details: str | None = None,
    worker: str | None = None,
) -> StepFailure:
    """Write the record of ``step``'s failure: an exception (its traceback kept), or an error
    line with the ``details`` to keep in its place; returns it."""
    folder = failures_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / f"{_slug(step.key)}.traceback.txt"
    if isinstance(error, BaseException):
        trace.write_text("".join(traceback.format_exception(error)))
        line = error_line(error)
    else:
        trace.write_text((details or error) + "\n")
        line = error
    failure = StepFailure(
        step=step.key,
        error=line,
        worker=worker or this_worker(),
        traceback=str(trace.relative_to(root)),
        log=_failed_log(root, step),
    )
    write_json(folder / f"{_slug(step.key)}.json", asdict(failure))
    return failure


def _failed_log(root: Path, step: GridStep) -> str | None:
    """The log the step's failed attempt left (the step protocol keeps it in ``.<name>.failed``)."""
    path = root / step.key
    kept = StepStore(path.parent).failed_path(path.name)
    for candidate in (kept / LOG_FILE, kept):
        if candidate.exists():  # in the grid's store: inside the grid's folder, or elsewhere
            inside = candidate.absolute().is_relative_to(root.absolute())
            return str(candidate.absolute().relative_to(root.absolute()) if inside else candidate)
    return None


def read_failures(root: Path) -> dict[str, StepFailure]:
    """Every failure recorded by this run of the grid, by step key."""
    failures = {}
    for file in sorted(failures_dir(root).glob("*.json")):
        try:
            failure = StepFailure(**read_json(file))
        except (OSError, ValueError, TypeError):
            continue  # a record being written right now: read it at the next look
        failures[failure.step] = failure
    return failures


def clear_failures(root: Path) -> None:
    """Forget the failures of earlier runs (a new run retries those steps)."""
    shutil.rmtree(failures_dir(root), ignore_errors=True)


def blocked_steps(plan: list[GridStep], failed: set[str]) -> set[str]:
    """The steps that cannot run because a step they need (directly or not) failed."""
    blocked: set[str] = set()
    for step in plan:  # the plan lists every step after the steps it needs
        if any(key in failed or key in blocked for key in step.inputs):
            blocked.add(step.key)
    return blocked
