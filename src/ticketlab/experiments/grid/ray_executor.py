"""The ``ray`` executor: a grid's step graph as Ray tasks, on a local Ray or on a cluster.

Each unfinished step of the plan is one task, submitted with the ObjectRefs of the tasks of its
inputs as arguments, so Ray starts it only once they have finished, and with the resources a step
asks for (``num_cpus``, ``num_gpus``: fractional GPUs let several small fine-tunes share one card).
A task runs its step through a ``GridRunner`` on the shared run directory, so the step protocol
keeps it safe: claims keep two attempts off one step, and output is published by rename. When a
worker dies in the middle of a step (killed, or its node lost), Ray retries the task
(``max_retries``); the retry takes over the dead worker's claim and starts the step again from its
last published state, and nothing half-written is read. A step that fails is recorded
(``failures``) and the tasks that need it return without running.

Every node that runs steps must see the run directory at the same path (a shared file system):
the driver checks it before it submits anything, by writing a token file that a small task on
each such node must read back. Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ticketlab.errors import TicketlabError, strip_ansi
from ticketlab.experiments.grid.executors import VIEW_SECONDS, run_one, unfinished_error
from ticketlab.experiments.grid.failures import (
    clear_failures,
    read_failures,
    record_failure,
)
from ticketlab.experiments.grid.plan import GridStep, plan_steps
from ticketlab.experiments.grid.run import GridRunner
from ticketlab.experiments.grid.spec import GridSpec
from ticketlab.experiments.grid.view import GridView

RAY_EXTRA = "pip install 'ticketlab[ray]'"
CONNECT_SECONDS = 10.0  # how long --address HOST:PORT gets to answer at all
CHECK_SECONDS = 120.0  # how long the run-directory check waits for every node's answer
CANCEL_GRACE_SECONDS = 20.0  # after Ctrl-C: how long interrupted steps get to release their claims


@dataclass(frozen=True)
class RayOptions:
    """Where and how the steps run. ``address``: None starts a local Ray with room for ``workers``
    steps at a time (default: as many CPUs as the machine has cores); ``"auto"`` or ``HOST:PORT`` connects to a running cluster, whose
    size is its own. Each step asks for ``cpus_per_step`` CPUs (its torch threads: the whole part,
    at least 1) and ``gpus_per_step`` GPUs (fractions share a card)."""

    address: str | None = None
    workers: int | None = None
    cpus_per_step: float = 1.0
    gpus_per_step: float = 0.0
    max_retries: int = 3

    def validate(self) -> None:
        if not (math.isfinite(self.cpus_per_step) and math.isfinite(self.gpus_per_step)):
            raise TicketlabError("--cpus-per-step and --gpus-per-step must be finite numbers")
        if self.cpus_per_step <= 0:
            raise TicketlabError(f"--cpus-per-step must be positive, got {self.cpus_per_step}")
        if self.gpus_per_step < 0 or (self.gpus_per_step > 1 and not float(self.gpus_per_step).is_integer()):
            raise TicketlabError(
                f"--gpus-per-step must be a fraction in (0, 1] or a whole number, got {self.gpus_per_step}"
            )
        if self.workers is not None and self.workers < 1:
            raise TicketlabError(f"--workers must be at least 1, got {self.workers}")
        if self.workers is not None and self.address is not None:
            raise TicketlabError(
                "--workers sets the size of a Ray started here; with --address the cluster's own "
                "resources decide how many steps run at once"
            )

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_step))


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise TicketlabError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def start_ray(options: RayOptions) -> bool:
    """Connect to the cluster at ``options.address``, or start a local Ray (no dashboard, quiet
    logs, a small object store: steps hand back only small records). Returns whether this call
    started or connected (and so should shut down); an already initialised Ray is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = {"log_to_driver": False, "logging_level": logging.ERROR, "namespace": "ticketlab"}
    try:
        if options.address is not None:
            _check_reachable(options.address)
            ray.init(address=options.address, **common)
        else:
            # --workers N: room for N steps; else the machine's cores (cores / cpus-per-step steps).
            cpus = math.ceil(options.workers * options.cpus_per_step) if options.workers else os.cpu_count()
            ray.init(
                num_cpus=cpus or 1,
                include_dashboard=False,
                object_store_memory=100 * 1024 * 1024,
                **common,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {options.address}" if options.address else "a local Ray"
        line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TicketlabError(f"cannot start or reach {where}: {line}") from None
    return True


def _check_reachable(address: str) -> None:
    """Refuse at once an address nobody listens on (Ray itself would retry for minutes)."""
    if address == "auto":
        return  # Ray looks for the cluster this machine is part of, and says at once when none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise TicketlabError(f"--address {address}: give auto or HOST:PORT of the cluster's head")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise TicketlabError(
            f"--address {address}: nothing answers there ({error.strerror or error}); is the cluster up "
            "(ray start --head on its head node)?"
        ) from None


def step_nodes(ray: Any, options: RayOptions) -> list[dict[str, Any]]:
    """The live nodes with the resources of one step (refused when there is none)."""
    nodes = [
        node
        for node in ray.nodes()
        if node.get("Alive")
        and node["Resources"].get("CPU", 0) >= options.cpus_per_step
        and node["Resources"].get("GPU", 0) >= options.gpus_per_step
    ]
    if not nodes:
        gpus = f" and {options.gpus_per_step:g} GPU" if options.gpus_per_step else ""
        raise TicketlabError(
            f"no node of the Ray cluster has the resources of one step ({options.cpus_per_step:g} CPU{gpus}); "
            "lower --cpus-per-step / --gpus-per-step"
        )
    return nodes


def check_run_directory(
    ray: Any, root: Path, nodes: list[dict[str, Any]], *, what: str = "run directory", write: bool = True
) -> None:
    """Refuse (one line) unless a worker on every node of ``nodes`` reads the token file the
    driver writes in the folder ``root`` (the run directory, or the ``what`` named: the grid's
    store); ``write=False`` writes none: what a worker on another file system sees."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    file = root / f".ray-check-{token}"
    if write:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(token)
    # The probe is the standard library's own reader: a worker answers without importing ticketlab
    # (and torch), which the steps' workers do anyway.
    probe = ray.remote(num_cpus=0, max_retries=1)(Path.read_text)
    blind = []
    try:
        refs = {
            node.get("NodeManagerAddress", node["NodeID"]): probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(file)
            for node in nodes
        }
        for node, ref in refs.items():
            try:
                if ray.get(ref, timeout=CHECK_SECONDS) != token:
                    blind.append(node)
            except ray.exceptions.RayTaskError:  # no such file there
                blind.append(node)
            except ray.exceptions.GetTimeoutError:
                raise TicketlabError(
                    f"the Ray worker on {node} did not answer within {CHECK_SECONDS:.0f} s whether it sees "
                    f"the {what} {root}"
                ) from None
    finally:
        file.unlink(missing_ok=True)
    if blind:
        raise TicketlabError(
            f"the Ray workers on {', '.join(sorted(blind))} cannot see the {what} {root}: every node "
            "must share the output file system at the same path (give --out and --store folders on it)"
        )


# Each worker process keeps the runner of the command it works for: Ray reuses workers across a
# command's tasks (a cluster's, across commands too: a new command gets a new runner).
_RUNNER: dict[str, GridRunner] = {}


def _runner_for(spec_data: dict[str, Any], root: str, options: dict[str, Any]) -> GridRunner:
    run = options.get("run", "")
    if run not in _RUNNER:
        _RUNNER.clear()
        _RUNNER[run] = GridRunner(
            GridSpec(**spec_data), root, cache_dir=options["cache_dir"], quiet=True, echo=_silent
        )
    return _RUNNER[run]


def _silent(_: str) -> None:
    return None


def step_task(
    spec_data: dict[str, Any], root: str, step: GridStep, options: dict[str, Any], *inputs: dict[str, Any]
) -> dict[str, Any]:
    """One Ray task: make ``step`` in the run directory ``root`` once its ``inputs`` (the records
    of the tasks it waited on) are there; returns its record (``executors.run_one``)."""
    import torch

    upstream = next((i for i in inputs if not i["ok"]), None)
    if upstream is not None:  # a step it needs failed: nothing to do (the failure is recorded)
        return {"step": step.key, "ok": False, "blocked_by": upstream["step"], "computed": {}, "made": False}
    if options.get("cwd") and os.path.isdir(options["cwd"]):
        os.chdir(options["cwd"])  # relative paths of the spec (model, data) mean what they mean to the driver
    torch.set_num_threads(options["threads"])
    return run_one(_runner_for(spec_data, root, options), step)


def run_grid_on_ray(
    spec: GridSpec,
    out: str | Path,
    options: RayOptions | None = None,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """The grid's unfinished steps as Ray tasks (see the module); the same results as the serial
    run, its summary returned. The live view goes to ``stream`` (default: standard output)."""
    options = options or RayOptions()
    options.validate()
    ray = import_ray()
    runner = GridRunner(spec, out, cache_dir=cache_dir, quiet=quiet, echo=echo)  # checks the folder
    root = runner.root.resolve()
    plan = plan_steps(spec)
    todo = [step for step in plan if not runner.step_done(step)]
    clear_failures(root)
    records: list[dict[str, Any]] = []
    if todo:  # a finished grid needs no Ray
        started = start_ray(options)
        try:
            nodes = step_nodes(ray, options)
            check_run_directory(ray, root, nodes)
            store = runner.store.path.resolve() if runner.store is not None else None
            if store is not None and not store.is_relative_to(root):
                check_run_directory(ray, store, nodes, what="grid's step store")
            echo(f"grid: {len(todo)} of {len(plan)} steps to run as Ray tasks on {len(nodes)} node(s)")
            view = GridView(runner, plan, quiet=quiet, stream=stream)
            records = _submit_and_wait(ray, spec, root, plan, todo, options, cache_dir, view)
        finally:
            if started:
                ray.shutdown()
    failures = list(read_failures(root).values())
    unfinished = sum(not runner.step_done(step) for step in todo)
    if failures or unfinished:
        more = unfinished - len(failures)
        raise unfinished_error(failures, [f"{more} step(s) not run: a step they need failed"] if more else [])
    computed: Counter[str] = Counter()
    for record in records:
        computed.update(record["computed"])
    return runner.summarize(plan, len(todo), computed)


def _submit_and_wait(
    ray: Any,
    spec: GridSpec,
    root: Path,
    plan: list[GridStep],
    todo: list[GridStep],
    options: RayOptions,
    cache_dir: str | None,
    view: GridView,
) -> list[dict[str, Any]]:
    """Submit ``todo`` (in plan order, each after its inputs) and wait, showing ``view``;
    returns the tasks' records. A task lost for good (its retries spent) is recorded as failed."""
    from ticketlab.experiments.store import spec_to_dict

    task = ray.remote(max_retries=options.max_retries, retry_exceptions=False)(step_task)
    spec_ref = ray.put(spec_to_dict(spec))
    task_options = {
        "threads": options.threads,
        "cache_dir": cache_dir,
        "cwd": os.getcwd(),
        "run": uuid.uuid4().hex,  # this command: its tasks share a runner in each worker
    }
    refs: dict[str, Any] = {}
    for step in todo:
        after = [refs[key] for key in step.inputs if key in refs]  # inputs done already are not waited on
        refs[step.key] = task.options(
            num_cpus=options.cpus_per_step, num_gpus=options.gpus_per_step, name=step.key
        ).remote(spec_ref, str(root), step, task_options, *after)
    by_ref = {ref: key for key, ref in refs.items()}
    order = {step.key: index for index, step in enumerate(plan)}
    records: list[dict[str, Any]] = []
    lost: list[str] = []
    waiting = list(refs.values())
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=VIEW_SECONDS)
            for ref in sorted(ready, key=lambda r: order[by_ref[r]]):  # inputs before their users
                try:
                    records.append(ray.get(ref))
                except ray.exceptions.RayError as error:  # the task's retries are spent
                    step = next(s for s in todo if s.key == by_ref[ref])
                    if not any(key in lost for key in step.inputs):
                        # Ray's message ends with the cause (a worker that died, a missing module).
                        text = strip_ansi(str(error)).strip()
                        cause = text.splitlines()[-1].strip() if text else type(error).__name__
                        record_failure(root, step, f"the Ray task failed: {cause}", details=text)
                    lost.append(step.key)
            view.poll()
    except KeyboardInterrupt:
        _cancel(ray, waiting)
        view.close()
        raise
    view.close()
    return records


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Ctrl-C: interrupt the running steps (each releases its claim and drops its temporary
    folder, as on any KeyboardInterrupt), give them a moment, then end what is left."""
    for ref in refs:
        ray.cancel(ref, force=False, recursive=True)
    deadline = time.time() + CANCEL_GRACE_SECONDS
    left = list(refs)
    while left and time.time() < deadline:
        _, left = ray.wait(left, num_returns=len(left), timeout=0.5)
    for ref in left:
        ray.cancel(ref, force=True)
