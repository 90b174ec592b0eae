"""Executors: who runs the steps of a grid's plan. ``serial`` (one process, in order), ``local``
(N workers on this machine: the driver and N - 1 processes it starts, sharing the run directory
through the step protocol) and
``ray`` (tasks on a Ray cluster or a local Ray: ``ray_executor``).

A worker repeatedly takes a step whose inputs are finished and that nobody holds, and makes it;
claims keep two workers off one step, so the results are those of the serial run (fine-tuning is
deterministic given its spec and the number of threads, which every worker is given). A step that
fails is recorded (``failures``) and skipped by every worker, with the steps that need it; the
others go on. The driver shows the live view (``view``) while it waits, then the failure summary,
and writes the summary of results.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.failures import (
    WORKERS_DIR,
    StepFailure,
    blocked_steps,
    clear_failures,
    read_failures,
    record_failure,
    this_worker,
)
from ticketlab.experiments.grid.plan import GridStep, plan_steps
from ticketlab.experiments.grid.run import GridRunner
from ticketlab.experiments.grid.spec import GridSpec
from ticketlab.experiments.grid.view import GridView
from ticketlab.io import read_json, write_json

EXECUTORS = ("serial", "local", "ray")
VIEW_SECONDS = 0.5  # how often the driver looks at the run directory for its live view


def run_one(runner: GridRunner, step: GridStep) -> dict[str, Any]:
    """Make one step (its inputs finished) and say how it went: ``ok``, its ``error`` line (the
    failure recorded for every worker to see), what it ``computed`` by kind, whether it ``made``
    anything (False when another worker had made it), and its own ``seconds``."""
    before = Counter(runner.computed)
    started = time.time()
    error = None
    try:
        runner.run_step(step)
    except Exception as failure:  # noqa: BLE001 - recorded with its traceback, the grid goes on
        error = record_failure(runner.root, step, failure).error
    computed = runner.computed - before
    return {
        "step": step.key,
        "ok": error is None,
        "error": error,
        "computed": dict(computed),
        "made": error is None and bool(computed),
        "seconds": time.time() - started,
        "finished": time.time(),
        "worker": this_worker(),
    }


def work_through(runner: GridRunner, plan: list[GridStep], poll_seconds: float = 0.5, worker: int = 0) -> int:
    """Make every step of ``plan`` that is not finished, taking only steps whose inputs are
    finished and that no other live process holds, and leaving out the steps that failed (here
    or in another worker) and those that need them; returns how many steps this process made.

    ``worker`` (this worker's index) staggers the first choice: workers started together see the
    same ready steps, and worker ``i`` takes the ``i``-th of them (round robin) rather than all
    the first, which all but one would then wait for; afterwards a step held by a live worker is
    never chosen, so they rarely meet."""
    by_key = {step.key: step for step in plan}
    made = 0
    while True:
        failed = set(read_failures(runner.root))
        left_out = failed | blocked_steps(plan, failed)
        pending = [step for step in plan if step.key not in left_out and not runner.step_done(step)]
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
        # Another worker may still take it first: then this one waits for it, and goes on.
        made += run_one(runner, ready[worker % len(ready)])["made"]


def unfinished_error(failures: list[StepFailure], also: list[str] = ()) -> TicketlabError:
    """The one-line error of a grid run that left steps unfinished (the view listed them)."""
    causes = list(also)
    if failures:
        named = ", ".join(f.step for f in failures[:3]) + (", ..." if len(failures) > 3 else "")
        causes.insert(0, f"{len(failures)} step(s) failed ({named})")
    return TicketlabError(
        f"the grid did not finish: {'; '.join(causes)}; see the summary above, then rerun the same "
        "command to resume (failed steps are retried)"
    )


def _work(index: int, runner: GridRunner) -> None:
    """Worker ``index``'s share of the plan, and its report (what it made, or its error) in the
    run directory for the driver; an error is re-raised once reported."""
    report = runner.root / WORKERS_DIR / f"worker-{index}.json"
    try:
        made = work_through(runner, plan_steps(runner.spec), worker=index)
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
        raise


def _worker_runner(spec: GridSpec, out: str | Path, cache_dir: str | None) -> GridRunner:
    """A worker's own runner on the shared run directory: the driver's live view tells what each
    worker does, so the workers themselves stay silent."""
    return GridRunner(spec, out, cache_dir=cache_dir, quiet=True, echo=_silent)


def _worker(index: int, spec_data: dict[str, Any], out: str, options: dict[str, Any]) -> None:
    """A worker process (started with spawn): its own runner on the shared run directory."""
    import torch

    torch.set_num_threads(options["threads"])
    try:
        _work(index, _worker_runner(GridSpec(**spec_data), out, options["cache_dir"]))
    except BaseException:  # noqa: BLE001 - reported in its file, the exit status says so too
        raise SystemExit(1) from None


def run_grid_locally(
    spec: GridSpec,
    out: str | Path,
    workers: int,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """The grid with ``workers`` workers on this machine: this process and ``workers - 1``
    others (each pinned to one GPU, round robin, when the machine has GPUs); the same results as
    the serial run, its summary returned. The live view goes to ``stream`` (default: standard
    output).

    This process is worker 0: it starts on the first step at once, while the others start up
    (a spawned process imports torch and transformers, seconds that this one has already spent),
    and its live view is drawn by a thread beside it."""
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
    clear_failures(runner.root)
    options = {"threads": torch.get_num_threads(), "cache_dir": cache_dir}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    context = multiprocessing.get_context("spawn")  # no forked torch state, as on every platform
    processes = []
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    view = GridView(runner, plan, quiet=quiet, stream=stream)
    watching = threading.Event()
    watcher = threading.Thread(target=_watch, args=(view, watching), name="grid-view", daemon=True)
    try:
        for index in range(1, workers):
            if gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
            process = context.Process(
                target=_worker, args=(index, _spec_data(spec), str(runner.root), options), daemon=False
            )
            process.start()
            processes.append(process)
        if gpus:  # this process (worker 0) sees every GPU and computes on the first
            _restore_env("CUDA_VISIBLE_DEVICES", saved)
        echo(f"grid: {len(plan)} steps on {workers} local workers")
        watcher.start()
        with contextlib.suppress(Exception):  # a failure is in its report, summarized below
            _work(0, _worker_runner(spec, runner.root, cache_dir))
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got the same signal: they release their claims
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        _stop_watching(watcher, watching)
        view.close()
        raise
    finally:
        if gpus:
            _restore_env("CUDA_VISIBLE_DEVICES", saved)
    _stop_watching(watcher, watching)
    failures = view.close()
    accounts = [read_json(p) for p in sorted(reports.glob("worker-*.json"))]
    crashes = [f"worker {i}: {a['error']}" for i, a in enumerate(accounts) if a.get("error")]
    missing = workers - len(accounts)
    if failures or crashes or missing:
        lost = [f"{missing} worker(s) died without a report (killed?)"] if missing else []
        where = [f"tracebacks in {reports}"] if crashes else []
        raise unfinished_error(failures, crashes + lost + where)
    computed: Counter[str] = Counter()
    for account in accounts:
        computed.update(account["computed"])
    return runner.summarize(plan, pending, computed)


def _watch(view: GridView, stop: threading.Event) -> None:
    """The live view's thread: a look at the run directory every ``VIEW_SECONDS`` until told."""
    while not stop.wait(VIEW_SECONDS):
        view.poll()


def _stop_watching(watcher: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    if watcher.is_alive():
        watcher.join()


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _silent(_: str) -> None:
    return None


def _spec_data(spec: GridSpec) -> dict[str, Any]:
    from ticketlab.experiments.store import spec_to_dict

    return spec_to_dict(spec)
