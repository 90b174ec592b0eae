"""Executors: who runs the steps of a grid's plan. ``serial`` (one process, in order) and ``local``
(N worker processes on this machine, sharing the run directory through the step protocol).

A worker repeatedly takes a step whose inputs are finished and that nobody holds, and makes it;
claims keep two workers off one step, so the results are those of the serial run (fine-tuning is
deterministic given its spec and the number of threads, which every worker is given). The driver
waits for the workers and writes the summary.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.plan import GridStep, plan_steps
from ticketlab.experiments.grid.run import GridRunner
from ticketlab.experiments.grid.spec import GridSpec
from ticketlab.io import read_json, write_json

EXECUTORS = ("serial", "local")
WORKERS_DIR = ".workers"  # each worker's account of what it did, read by the driver


def work_through(runner: GridRunner, plan: list[GridStep], poll_seconds: float = 0.5) -> int:
    """Make every step of ``plan`` that is not finished, taking only steps whose inputs are
    finished and that no other live process holds; returns how many steps this process made."""
    by_key = {step.key: step for step in plan}
    made = 0
    while True:
        pending = [step for step in plan if not runner.step_done(step)]
        if not pending:
            return made
        ready = [
            step
            for step in pending
            if all(runner.step_done(by_key[key]) for key in step.inputs if key in by_key)
            and not runner.step_busy(step)
        ]
        if not ready:  # everything left is held by others, or waits for what they hold
            time.sleep(poll_seconds)
            continue
        before = sum(runner.computed.values())
        runner.run_step(ready[0])  # another worker may take it first: then this waits for it
        made += sum(runner.computed.values()) > before


def _worker(index: int, spec_data: dict[str, Any], out: str, options: dict[str, Any]) -> None:
    """One worker process (started with spawn): its own runner on the shared run directory."""
    import torch

    torch.set_num_threads(options["threads"])
    report = Path(out) / WORKERS_DIR / f"worker-{index}.json"
    runner = GridRunner(
        GridSpec(**spec_data),
        out,
        cache_dir=options["cache_dir"],
        quiet=True,
        echo=lambda line: print(f"[worker {index}] {line}", flush=True) if not options["quiet"] else None,
    )
    try:
        made = work_through(runner, plan_steps(runner.spec))
        write_json(report, {"made": made, "computed": dict(runner.computed), "error": None})
    except BaseException as error:  # noqa: BLE001 - the driver reports every worker's failure
        line = str(error).splitlines()[0] if str(error) else type(error).__name__
        write_json(
            report,
            {
                "made": 0,
                "computed": dict(runner.computed),
                "error": line,
                "traceback": traceback.format_exc(),
            },
        )
        raise SystemExit(1) from None


def run_grid_locally(
    spec: GridSpec,
    out: str | Path,
    workers: int,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The grid with ``workers`` processes on this machine (each pinned to one GPU, round robin,
    when the machine has GPUs); the same results as the serial run, its summary returned."""
    import torch

    if workers < 1:
        raise TicketlabError(f"--workers must be at least 1, got {workers}")
    runner = GridRunner(spec, out, cache_dir=cache_dir, quiet=quiet, echo=echo)  # checks the folder
    plan = plan_steps(spec)
    # What this run computes: the steps not finished now (an IMP run's levels may be shared by two
    # workers, so the workers' own counts can add up to more).
    pending = sum(not runner.step_done(step) for step in plan)
    reports = runner.root / WORKERS_DIR
    reports.mkdir(exist_ok=True)
    for old in reports.glob("worker-*.json"):
        old.unlink()
    options = {"threads": torch.get_num_threads(), "cache_dir": cache_dir, "quiet": quiet}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    context = multiprocessing.get_context("spawn")  # no forked torch state, as on every platform
    processes = []
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        for index in range(workers):
            if gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
            process = context.Process(
                target=_worker, args=(index, _spec_data(spec), str(runner.root), options), daemon=False
            )
            process.start()
            processes.append(process)
        echo(f"grid: {len(plan)} steps on {workers} local workers")
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got the same signal: they release their claims
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    finally:
        if gpus:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    accounts = [read_json(p) for p in sorted(reports.glob("worker-*.json"))]
    failures = [f"worker {i}: {a['error']}" for i, a in enumerate(accounts) if a.get("error")]
    missing = workers - len(accounts)
    if failures or missing:
        lost = [f"{missing} worker(s) died without a report (killed?)"] if missing else []
        raise TicketlabError(
            "the grid did not finish: "
            + "; ".join(failures + lost)
            + f" (tracebacks in {reports}); rerun the same command to resume"
        )
    computed: Counter[str] = Counter()
    for account in accounts:
        computed.update(account["computed"])
    return runner.summarize(plan, pending, computed)


def _spec_data(spec: GridSpec) -> dict[str, Any]:
    from ticketlab.experiments.store import spec_to_dict

    return spec_to_dict(spec)
