"""The Ray executor on a local Ray with 2 workers: the serial run's results, and a worker killed
(kill -9) in the middle of a step does not change them. One Ray session for the module."""

import json
import os
import signal
import threading
import time

import pytest
import torch

from tests.glue_fixtures import TINY_RECIPE, tiny_grid_spec, tiny_model_dir, write_glue_task
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridRunner, GridSpec
from ticketlab.experiments.grid.plan import plan_steps
from ticketlab.experiments.steps import DONE
from ticketlab.masks import load_mask

ray = pytest.importorskip("ray")

from ticketlab.experiments.grid.ray_executor import (  # noqa: E402 - after the skip
    RayOptions,
    check_run_directory,
    run_grid_on_ray,
    start_ray,
    step_nodes,
)

pytestmark = pytest.mark.slow
QUIET = {"quiet": True, "echo": lambda _: None}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with room for 2 steps at a time, shared by the tests (it takes seconds to start)."""
    started = start_ray(RayOptions(workers=2))
    yield ray
    if started:
        ray.shutdown()


def serial_run(spec, out):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray step (one CPU each): the same threads, the same numbers
    try:
        return GridRunner(spec, out, **QUIET).run_all()
    finally:
        torch.set_num_threads(threads)


def same_masks(a_root, b_root, names):
    for name in names:
        a, b = load_mask(a_root / name), load_mask(b_root / name)
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors), name


def test_a_grid_on_two_ray_workers_gives_the_serial_results(local_ray, tmp_path, capsys):
    path = tiny_grid_spec(tmp_path, ["full", "omp", "random"], sparsities=[0.5, 0.7])
    path.write_text(json.dumps({**json.loads(path.read_text()), "seeds": [0, 1]}))
    spec = GridSpec.from_file(path)
    plan = plan_steps(spec)
    # OMP -> matched random -> their cells: a graph of 16 steps, 12 with inputs.
    assert len(plan) == 16 and sum(bool(s.inputs) for s in plan) == 12
    serial = serial_run(spec, tmp_path / "serial")
    # The command line, on the module's Ray (a Ray already started is used as it is).
    assert main(["grid", str(path), "--executor", "ray", "--out", str(tmp_path / "ray"), "--json"]) == 0
    out, err = capsys.readouterr()
    parallel = json.loads(out)
    assert parallel["steps"]["computed"] == 16 and parallel["steps"]["computed_by_kind"] == {
        "cell": 10,
        "omp": 2,
        "random": 4,
    }
    assert [c["values"] for c in parallel["cells"]] == [c["values"] for c in serial["cells"]]
    same_masks(
        tmp_path / "serial",
        tmp_path / "ray",
        [f"tickets/omp-{s}.safetensors" for s in ("0.50", "0.70")]
        + [f"tickets/random-{s}-seed{seed}.safetensors" for s in ("0.50", "0.70") for seed in (0, 1)],
    )
    # Two Ray workers shared the cells (each published cell names its publisher), none the driver.
    publishers = {
        json.loads((folder / DONE).read_text())["published_by"]["pid"]
        for folder in (tmp_path / "ray" / "cells" / "mrpc").iterdir()
        if (folder / DONE).is_file()
    }
    assert len(publishers) == 2 and os.getpid() not in publishers
    # Not a terminal: one line per finished step, no bar (on stderr: stdout holds the JSON).
    lines = [line for line in err.splitlines() if " done " in line]
    assert len(lines) == 16 and lines[-1].startswith("[16/16] done ")
    again = run_grid_on_ray(spec, tmp_path / "ray", RayOptions(), **QUIET)
    assert again["steps"]["computed"] == 0  # resumed: nothing left to do


def test_a_ray_worker_killed_in_a_step_is_retried_with_the_same_results(local_ray, tmp_path):
    # Cells long enough (about a second each) to be caught in the middle.
    spec = GridSpec(
        model=str(tiny_model_dir(tmp_path / "model")),
        tasks=["mrpc"],
        data_dir=str(write_glue_task(tmp_path / "glue", "mrpc", {"train": 600, "dev": 16})),
        seeds=[0, 1],
        methods=["full", "omp"],
        sparsities=[0.5],
        recipe=TINY_RECIPE,
    )
    serial = serial_run(spec, tmp_path / "serial")
    out = tmp_path / "ray"
    killed: list[tuple[str, int]] = []

    def kill_the_first_worker_in_a_cell() -> None:
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            # A cell's claim (in the grid's store, or in place), naming the worker that holds it.
            for claim in (c for c in out.rglob(".*.claim") if "mrpc" in str(c.relative_to(out))):
                try:
                    pid = json.loads(claim.read_text())["pid"]
                except (OSError, ValueError):
                    continue  # being written, or just released
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append((claim.name, pid))
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_first_worker_in_a_cell, daemon=True)
    killer.start()
    parallel = run_grid_on_ray(spec, out, RayOptions(), **QUIET)
    killer.join()
    assert killed, "no worker was caught in a step"
    assert parallel["steps"]["computed"] == 5
    assert [c["values"] for c in parallel["cells"]] == [c["values"] for c in serial["cells"]]
    same_masks(tmp_path / "serial", tmp_path / "ray", ["tickets/omp-0.50.safetensors"])
    # The killed attempt left nothing behind: no claim, no temporary folder, no failure.
    assert not list(out.rglob(".*.claim")) and not list(out.rglob(".*.tmp"))
    assert not (out / ".workers" / "failed").exists()


def test_ray_refuses_a_run_directory_its_workers_cannot_see(local_ray, tmp_path):
    options = RayOptions()
    check_run_directory(ray, tmp_path, step_nodes(ray, options))  # a local Ray sees it
    with pytest.raises(TicketlabError, match="cannot see the run directory .*share the output file system"):
        check_run_directory(ray, tmp_path, step_nodes(ray, options), write=False)
    with pytest.raises(TicketlabError, match="no node of the Ray cluster has the resources of one step"):
        step_nodes(ray, RayOptions(cpus_per_step=64))
