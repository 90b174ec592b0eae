"""The local executor: two worker processes on one grid give the serial run's results."""

import json

import pytest
import torch

from tests.glue_fixtures import tiny_grid_spec
from ticketlab.experiments.grid import GridRunner, GridSpec
from ticketlab.experiments.grid.executors import run_grid_locally
from ticketlab.experiments.grid.plan import plan_steps
from ticketlab.masks import load_mask


@pytest.mark.slow
def test_two_local_workers_give_the_serial_results(tmp_path):
    path = tiny_grid_spec(tmp_path, ["full", "omp", "random", "imp"], sparsities=[0.5], imp_levels=[0.5])
    spec = GridSpec(**{**json.loads(path.read_text()), "seeds": [0, 1]})
    plan = plan_steps(spec)
    assert len(plan) == 11 and sum(bool(s.inputs) for s in plan) == 8  # a graph, not a list
    serial = GridRunner(spec, tmp_path / "serial", quiet=True, echo=lambda _: None).run_all()
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
    again = run_grid_locally(spec, tmp_path / "local", 2, quiet=True, echo=lambda _: None)
    assert again["steps"]["computed"] == 0  # resumed: nothing left to do
