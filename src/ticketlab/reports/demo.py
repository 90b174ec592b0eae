"""``ticketlab demo``: the whole story offline, on the CPU, in minutes.

The grid runs in ``experiments/demo.py``; this module, a layer above, writes the report of it and
says what it shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ticketlab.experiments.demo import DemoSettings, run_grid, verdict
from ticketlab.io import read_json, write_json
from ticketlab.reports.report import write_report


def run(
    out: Path, seed: int = 0, echo: Callable[[str], None] = print, settings: DemoSettings | None = None
) -> dict:
    """Run the demo into ``out`` (resumable) and return its summary."""
    settings = settings or DemoSettings()
    started = time.perf_counter()
    grid_root, summary, model_dir = run_grid(out, seed, echo, settings)
    report = write_report([grid_root], out / "report")
    echo((out / "report" / "results.md").read_text())
    top = max(settings.sparsities)
    rows = verdict(summary, top)
    for row in rows:
        if row["magnitude_wins"] is None:
            outcome = "no verdict: the full model stayed at chance on this task"
        elif row["magnitude_wins"]:
            outcome = "magnitude wins (the gap is larger than the seeds' spread)"
        else:
            outcome = "no clear difference (the gap is within the seeds' spread)"
        echo(
            f"{row['task']} at {top:.0%} sparsity: {row['method']} {row['magnitude']:.3f} vs random "
            f"{row['random']:.3f} ({row['metric']}; full model {row['full']:.3f}) -> {outcome}"
        )
    judged = [r for r in rows if r["magnitude_wins"] is not None]
    wins = sum(bool(r["magnitude_wins"]) for r in judged)
    echo(
        f"magnitude tickets beat random ones in {wins} of {len(judged)} comparisons at {top:.0%} sparsity "
        "on the tasks the full model learned"
    )
    for path in report["files"]:
        if path.endswith(".png"):
            echo(f"plot written to {path}")
    result = {
        "verdict": rows,
        "report": report["files"],
        "seconds": time.perf_counter() - started,
        "pretraining": read_json(model_dir / "pretraining.json"),
    }
    write_json(out / "demo.json", result)
    echo(f"demo finished in {result['seconds']:.0f}s; everything is in {out}")
    return result
