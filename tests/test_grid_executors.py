"""The local executor: two worker processes on one grid give the serial run's results."""

import contextlib
import json
import sys
import threading

import pytest
import torch

from tests.glue_fixtures import tiny_grid_spec
from ticketlab.experiments.grid import GridRunner, GridSpec
from ticketlab.experiments.grid.executors import run_grid_locally
from ticketlab.experiments.grid.plan import plan_steps
from ticketlab.masks import load_mask


@pytest.mark.slow
def test_two_local_workers_give_the_serial_results(tmp_path, monkeypatch):
    """This process (worker 0) and a spawned worker share the grid; the serial run's results."""
    import time

    from ticketlab.experiments.grid import executors

    path = tiny_grid_spec(tmp_path, ["full", "omp", "random", "imp"], sparsities=[0.5], imp_levels=[0.5])
    spec = GridSpec(**{**json.loads(path.read_text()), "seeds": [0, 1]})
    plan = plan_steps(spec)
    assert len(plan) == 11 and sum(bool(s.inputs) for s in plan) == 8  # a graph, not a list
    serial = GridRunner(spec, tmp_path / "serial", quiet=True, echo=lambda _: None).run_all()
    real_run_one, waited = executors.run_one, []

    def after_the_other_workers_first_step(runner, step):
        # Tiny steps are over before a spawned worker has imported torch: worker 0 would make them
        # all. So it waits for the other's first publication, and both make a share.
        deadline = time.time() + 120
        while not waited and not any(runner.step_done(s) for s in plan) and time.time() < deadline:
            time.sleep(0.05)
        waited.append(True)
        return real_run_one(runner, step)

    monkeypatch.setattr(executors, "run_one", after_the_other_workers_first_step)
    parallel = run_grid_locally(spec, tmp_path / "local", 2, quiet=True, echo=lambda _: None)
    assert parallel["steps"]["computed"] == 11 and parallel["steps"]["reused"] == 0
    assert [c["values"] for c in parallel["cells"]] == [c["values"] for c in serial["cells"]]
    workers = [json.loads(p.read_text()) for p in sorted((tmp_path / "local" / ".workers").glob("*.json"))]
    assert len(workers) == 2 and all(w["made"] >= 1 for w in workers)  # both did a share
    for name in (
        "tickets/omp-0.50.safetensors",
        "tickets/random-0.50-seed1.safetensors",
        "imp/mrpc/seed1/level_01/mask.safetensors",
    ):
        a, b = load_mask(tmp_path / "serial" / name), load_mask(tmp_path / "local" / name)
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    monkeypatch.setattr(executors, "run_one", real_run_one)
    again = run_grid_locally(spec, tmp_path / "local", 2, quiet=True, echo=lambda _: None)
    assert again["steps"]["computed"] == 0  # resumed: nothing left to do


def test_a_failing_step_is_recorded_and_the_others_go_on(tmp_path):
    """A worker records a failed step (error line, traceback, log), leaves out the steps that
    need it, makes the rest; the live view ends with the summary naming each failed step."""
    import io

    from ticketlab.experiments.grid.executors import unfinished_error, work_through
    from ticketlab.experiments.grid.failures import read_failures
    from ticketlab.experiments.grid.view import GridView

    path = tiny_grid_spec(tmp_path, ["full", "omp", "random"], sparsities=[0.5])
    spec = GridSpec.from_file(path)
    runner = GridRunner(spec, tmp_path / "grid", quiet=True, echo=lambda _: None)
    plan = plan_steps(spec)
    omp = tmp_path / "grid" / "tickets" / "omp-0.50.safetensors"
    omp.parent.mkdir(parents=True)
    omp.write_bytes(b"not a mask")  # "finished", but nothing can read it
    stream = io.StringIO()
    view = GridView(runner, plan, stream=stream)
    assert work_through(runner, plan, poll_seconds=0.01) == 1  # the full model's cell alone
    failures = read_failures(runner.root)
    assert set(failures) == {"cells/mrpc/omp-0.50-seed0", "tickets/random-0.50-seed0.safetensors"}
    for failure in failures.values():
        assert failure.error and (runner.root / failure.traceback).is_file()
        assert "Traceback" in (runner.root / failure.traceback).read_text()
    assert view.poll() == {"done": 2, "running": 0, "failed": 2, "blocked": 1, "waiting": 0}
    summary = view.close()
    text = stream.getvalue()
    assert "1 of 5 steps already done" in text and "[2/5] done cells/mrpc/full-0.00-seed0" in text
    assert "2 step(s) failed:" in text and "1 step(s) not run" in text
    for failure in summary:
        assert f"{failure.step}: {failure.error} (traceback {failure.traceback}" in text
    error = str(unfinished_error(summary))
    assert "2 step(s) failed" in error and "\n" not in error


def test_workers_started_together_take_different_first_steps(tmp_path, monkeypatch):
    """Worker i takes the i-th ready step (round robin), so two workers started at once do not
    both go for the first and one wait for the other's whole step."""
    from ticketlab.experiments.grid import executors

    path = tiny_grid_spec(tmp_path, ["full", "omp"], sparsities=[0.5])
    spec = GridSpec(**{**json.loads(path.read_text()), "seeds": [0, 1]})
    runner = GridRunner(spec, tmp_path / "grid", quiet=True, echo=lambda _: None)
    plan = plan_steps(spec)
    ready = [s.key for s in plan if not s.inputs]
    assert len(ready) == 3  # two full-model cells and the OMP ticket

    class Taken(Exception):
        pass

    def first(_runner, step):
        raise Taken(step.key)

    monkeypatch.setattr(executors, "run_one", first)
    taken = []
    for worker in range(4):
        with pytest.raises(Taken) as caught:
            executors.work_through(runner, plan, worker=worker)
        taken.append(str(caught.value))
    assert taken == [ready[0], ready[1], ready[2], ready[0]]


def test_the_live_view_shows_each_workers_step_on_a_terminal(tmp_path):
    import io

    from ticketlab.experiments.grid.failures import this_worker
    from ticketlab.experiments.grid.view import GridView
    from ticketlab.experiments.steps import StepStore

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    spec = GridSpec.from_file(tiny_grid_spec(tmp_path, ["full", "omp"], sparsities=[0.5]))
    runner = GridRunner(spec, tmp_path / "grid", quiet=True, echo=lambda _: None)
    plan = plan_steps(spec)
    stream = Terminal()
    view = GridView(runner, plan, stream=stream)
    # This process holds the full model's cell (a step whose body waits, then gives up unpublished).
    cell = next(step for step in plan if step.key == "cells/mrpc/full-0.00-seed0")
    runner.place(cell)
    place = tmp_path / "grid" / cell.key
    claimed, release = threading.Event(), threading.Event()

    def body(_tmp):
        claimed.set()
        release.wait(30)
        raise RuntimeError("given up")

    holder = threading.Thread(target=lambda: _swallow(lambda: StepStore(place.parent).run(place.name, body)))
    holder.start()
    try:
        assert claimed.wait(30)
        assert view.poll()["running"] == 1
        assert view.running == {"cells/mrpc/full-0.00-seed0": this_worker()}
    finally:
        release.set()
        holder.join()
    assert f"{this_worker()}: cells/mrpc/full-0.00-seed0" in stream.getvalue()  # the bar's line
    assert "done " not in stream.getvalue()  # a bar, not lines
    quiet = Terminal()
    GridView(runner, plan, quiet=True, stream=quiet).close()
    assert quiet.getvalue() == ""  # --quiet: no bar even on a terminal (and nothing finished here)


def _swallow(call):
    with contextlib.suppress(RuntimeError):  # the held step's body gives up on purpose
        call()


def test_the_ray_executor_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    from ticketlab.cli import main

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if not installed
    path = tiny_grid_spec(tmp_path, ["full"])
    code = main(["grid", str(path), "--executor", "ray", "--out", str(tmp_path / "grid")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'ticketlab[ray]'" in err[0], err
    assert main(["grid", str(path), "--gpus-per-step", "0.5", "--out", str(tmp_path / "grid")]) == 2
    assert "--gpus-per-step: only for --executor ray" in capsys.readouterr().err


@pytest.mark.slow
def test_a_grid_under_torchrun_on_two_ranks_completes_every_step_once(tmp_path, monkeypatch):
    """`torchrun --nproc_per_node 2 -m ticketlab grid`: the ranks train each cell together (DDP
    over gloo), the first publishes every step; the tickets are the one-process run's bits, nothing
    temporary or claimed is left, one report is printed, and a rerun computes nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    path = tiny_grid_spec(tmp_path, ["full", "omp", "random", "imp"], sparsities=[0.5], imp_levels=[0.5])
    spec = GridSpec.from_file(path)
    GridRunner(spec, tmp_path / "serial", quiet=True, echo=lambda _: None).run_all()
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "ticketlab", "grid", str(path), "--out", str(out), "--quiet", "--json"]
    for attempt in ("first", "rerun"):
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, f"{attempt}: {completed.stderr[-3000:]}"
        summary = json.loads(completed.stdout)  # one report: the second rank prints nothing
        if attempt == "first":
            # Each step counted once (by the first rank), the tickets too: every rank runs a step's
            # body, but only the first claims and publishes it.
            assert summary["steps"]["computed"] == len(plan_steps(spec)) == 6
            assert summary["steps"]["computed_by_kind"] == {"imp level": 2, "cell": 3, "omp": 1, "random": 1}
        else:
            assert summary["steps"]["computed"] == 0 and summary["steps"]["reused"] == 6
    cells = sorted(out.glob("cells/mrpc/*/results.json"))
    assert len(cells) == 3
    assert all(json.loads(cell.read_text())["num_processes"] == 2 for cell in cells)
    for name in ("tickets/omp-0.50.safetensors", "tickets/random-0.50-seed0.safetensors"):
        a, b = load_mask(tmp_path / "serial" / name), load_mask(out / name)
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert (out / "imp" / "mrpc" / "seed0" / "level_01" / "mask.safetensors").is_file()
    leftovers = [
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.name.endswith((".tmp", ".claim", ".partial")) or ".rank" in p.name
    ]
    assert leftovers == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; signals a process group")
def test_ctrl_c_stops_the_local_workers_cleanly_and_a_rerun_resumes(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) during `grid --executor local`: the command
    exits 130 with every worker gone and no claim left; the rerun makes only what was missing."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = tiny_grid_spec(tmp_path, ["full", "omp", "random"], sparsities=[0.5, 0.7])
    path.write_text(json.dumps({**json.loads(path.read_text()), "seeds": [0, 1]}))
    spec = GridSpec.from_file(path)
    out = tmp_path / "grid"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "TICKETLAB_CACHE": str(tmp_path / "cache"),
    }
    command = [sys.executable, "-m", "ticketlab", "grid", str(path), "--out", str(out)]
    command += ["--executor", "local", "--workers", "2", "--quiet", "--json"]
    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    plan = plan_steps(spec)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob("DONE")):
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    deadline = time.time() + 10  # a process may still be in its exit when the command has ended
    while _running_in_group(driver.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert _running_in_group(driver.pid) == []  # no worker outlived the command
    assert [p.name for p in out.rglob("*.claim")] == []
    done_before = len(list(out.rglob("DONE")))
    assert 1 <= done_before < len(plan)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["steps"]["reused"] >= done_before and summary["steps"]["planned"] == len(plan)
    serial = GridRunner(spec, tmp_path / "serial", quiet=True, echo=lambda _: None).run_all()
    assert [c["values"] for c in summary["cells"]] == [c["values"] for c in serial["cells"]]


def _running_in_group(group: int) -> list[int]:
    """The processes of a process group still running (a dead one waiting to be reaped by an
    init that does not reap, in a container, is not)."""
    from pathlib import Path

    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            running.append(int(stat.parent.name))
    return running
