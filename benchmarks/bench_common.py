"""Helpers shared by the benchmark scripts: timing, the machine's description, JSON and Markdown output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall-clock seconds of one call, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def summary(times: list[float]) -> dict[str, float]:
    """Median (the figure we report), min and max of a list of timings, in seconds."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU count, torch threads, load, versions, date."""
    import numpy
    import safetensors
    import torch
    import transformers

    import ticketlab

    try:
        load = os.getloadavg()
    except OSError:  # not on every platform
        load = None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": [round(x, 2) for x in load] if load else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "ticketlab": ticketlab.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": numpy.__version__,
        },
    }


def quiet_run(threads: int | None = None) -> None:
    """As the CLI runs: no load report or progress bar per model load; ``threads`` torch threads."""
    import torch
    import transformers

    if threads is not None:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def relative_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies under it, else ``~/...`` when it lies
    under the home folder (run directories in the ticketlab cache): results name no folders of this
    machine."""
    resolved = Path(path).resolve()
    for base, shown in ((Path.cwd().resolve(), None), (Path.home().resolve(), Path("~"))):
        if resolved.is_relative_to(base):
            relative = resolved.relative_to(base)
            return str(shown / relative if shown else relative)
    return str(path)


def relative_paths(data: Any) -> Any:
    """``data`` with every absolute path (in any string, list or dict inside it) made relative, as
    :func:`relative_path` does for one."""
    if isinstance(data, dict):
        return {key: relative_paths(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [relative_paths(value) for value in data]
    if isinstance(data, str) and data.startswith(os.sep):
        return relative_path(data)
    return data


def write_results(name: str, data: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` (or ``path``), with the machine's description and
    every absolute path in ``data`` made relative (:func:`relative_paths`), and return its path."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **relative_paths(data)}
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")  # one per process: tasks may share a file
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def markdown_table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def shared_dir() -> Path | None:
    """``$TICKETLAB_SHARED`` (the real-data folder) if set and present."""
    value = os.environ.get("TICKETLAB_SHARED")
    return Path(value) if value and Path(value).is_dir() else None


def require_shared(script: str, *relative: str) -> list[Path]:
    """The folders ``relative`` under ``$TICKETLAB_SHARED``, or exit with a message naming ``script``."""
    import sys

    shared = shared_dir()
    if shared is None:
        sys.exit(
            f"{script}: set TICKETLAB_SHARED to the shared folder (../shared) with {', '.join(relative)}"
        )
    paths = [shared / part for part in relative]
    for path in paths:
        if not path.exists():
            sys.exit(f"{script}: {path} is missing (needed under TICKETLAB_SHARED: {', '.join(relative)})")
    return paths
