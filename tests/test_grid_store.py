"""Steps named by what determines them: two grids share a store; names are pinned; grid folders
made before stores keep their steps in place."""

import json
from pathlib import Path

import pytest
import torch

from tests.glue_fixtures import tiny_grid_spec
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridRunner, GridSpec
from ticketlab.experiments.grid.plan import plan_steps
from ticketlab.experiments.grid.step_store import STORE_FILE, GridStore
from ticketlab.masks import load_mask


def grid(spec_path: Path, **changes) -> GridSpec:
    return GridSpec(**{**json.loads(spec_path.read_text()), **changes})


def quiet_runner(spec, out, **options) -> GridRunner:
    return GridRunner(spec, out, quiet=True, echo=lambda _: None, **options)


def test_two_grids_share_the_steps_of_one_store(tmp_path):
    spec_path = tiny_grid_spec(tmp_path, ["full", "omp", "random"], sparsities=[0.5])
    first = quiet_runner(grid(spec_path), tmp_path / "a").run_all()
    assert first["steps"]["computed"] == 5  # 2 tickets, 3 cells
    store = tmp_path / "a" / "steps"
    # Another grid, another folder: a second seed and a control, on the first grid's store.
    other = grid(spec_path, seeds=[0, 1], methods=["full", "omp", "random", "permuted"])
    second = quiet_runner(other, tmp_path / "b", store=store).run_all()
    # Reused: OMP's ticket, random's of seed 0, the three cells of seed 0. New: random's ticket of
    # seed 1, the three cells of seed 1 and the two permuted cells.
    assert second["steps"] == {
        "planned": 11,
        "computed": 6,
        "reused": 5,
        "computed_by_kind": {"cell": 5, "random": 1},
    }
    for place in (
        "cells/mrpc/full-0.00-seed0",
        "tickets/omp-0.50.safetensors",
        "cells/mrpc/random-0.50-seed0",
    ):
        assert (tmp_path / "a" / place).resolve() == (tmp_path / "b" / place).resolve(), place
        assert (tmp_path / "b" / place).resolve().is_relative_to(store.resolve())
    a = {(c["method"], c["sparsity"]): c["values"] for c in first["cells"]}
    b = {(c["method"], c["sparsity"]): c["values"] for c in second["cells"]}
    assert all(b[key][:1] == a[key] for key in a)  # seed 0's results are the same files
    # The store is fixed when a grid is made.
    with pytest.raises(TicketlabError, match="keeps its steps in the store .*not .*elsewhere"):
        quiet_runner(other, tmp_path / "b", store=tmp_path / "elsewhere")


def test_a_step_is_named_by_what_determines_it_not_by_its_place(tmp_path):
    spec = GridSpec(
        model="bert-base-uncased", tasks=["mrpc"], methods=["full", "omp", "imp"], sparsities=[0.5], seeds=[0]
    )
    runner = quiet_runner(spec, tmp_path / "grid")
    digests = {step.key: runner.digest(step) for step in plan_steps(spec)}
    # Pinned: a change of what names a step would orphan every store made before it.
    assert digests == {
        "imp/mrpc/seed0": "e352e7a2ea9bd0cd",
        "cells/mrpc/full-0.00-seed0": "3ee5bc3fa862d3be",
        "tickets/omp-0.50.safetensors": "f0ec57b8094ce687",
        "cells/mrpc/omp-0.50-seed0": "0af0e67c21982719",
    }
    # The same cell in a grid with another seed list, another method and IMP levels: same names.
    grown = GridSpec(
        model="bert-base-uncased",
        tasks=["mrpc"],
        methods=["full", "omp", "random"],
        sparsities=[0.5, 0.7],
        seeds=[0, 3],
    )
    elsewhere = quiet_runner(grown, tmp_path / "other")
    steps = {step.key: step for step in plan_steps(grown)}
    assert elsewhere.digest(steps["tickets/omp-0.50.safetensors"]) == digests["tickets/omp-0.50.safetensors"]
    # A full cell takes IMP's level 0 over when the grid has IMP: that orders it, it does not name it.
    assert elsewhere.digest(steps["cells/mrpc/full-0.00-seed0"]) == digests["cells/mrpc/full-0.00-seed0"]
    # What determines a step does change its name: the scope of OMP's ticket, a cell's recipe.
    base = {
        "model": "bert-base-uncased",
        "tasks": ["mrpc"],
        "methods": ["omp"],
        "sparsities": [0.5],
        "seeds": [0],
    }
    for changed in (GridSpec(**base, scope="encoder+embeddings"), GridSpec(**base, recipe={"lr": 1e-4})):
        runner = quiet_runner(changed, tmp_path / f"g{len(list(tmp_path.iterdir()))}")
        by_key = {step.key: runner.digest(step) for step in plan_steps(changed)}
        assert by_key["cells/mrpc/omp-0.50-seed0"] != digests["cells/mrpc/omp-0.50-seed0"]


def test_a_grid_made_before_stores_keeps_its_steps_in_place(tmp_path, monkeypatch):
    spec = grid(tiny_grid_spec(tmp_path, ["full", "omp"], sparsities=[0.5]))
    out = tmp_path / "old"
    with monkeypatch.context() as patch:  # the layout of the grids made before stores
        patch.setattr(GridStore, "open", classmethod(lambda cls, root, store=None: None))
        quiet_runner(spec, out).run_all()
    cell = out / "cells/mrpc/omp-0.50-seed0"
    assert cell.is_dir() and not cell.is_symlink() and not (out / STORE_FILE).exists()
    mask = load_mask(out / "tickets/omp-0.50.safetensors")
    again = quiet_runner(spec, out).run_all()
    assert again["steps"]["computed"] == 0 and not (out / STORE_FILE).exists()  # nothing moved
    assert all(
        torch.equal(mask.tensors[k], load_mask(out / "tickets/omp-0.50.safetensors").tensors[k])
        for k in mask.tensors
    )
    with pytest.raises(TicketlabError, match="made before step stores.*--store cannot share"):
        quiet_runner(spec, out, store=tmp_path / "store")


def test_a_damaged_step_of_the_store_is_named_by_its_place_and_redone_through_it(tmp_path):
    from ticketlab.experiments.store import redo_steps

    spec = grid(tiny_grid_spec(tmp_path, ["full", "omp"], sparsities=[0.5]))
    out = tmp_path / "grid"
    first = quiet_runner(spec, out).run_all()
    cell = out / "cells/mrpc/omp-0.50-seed0"
    (cell / "results.json").write_text("")  # emptied after it was published
    with pytest.raises(
        TicketlabError, match=r"step .*cells/mrpc/omp-0.50-seed0 \(stored in .*steps/cell/.*damaged"
    ):
        quiet_runner(spec, out).run_all()
    assert redo_steps(out, ["cells/mrpc/omp-0.50-seed0"]) == ["cells/mrpc/omp-0.50-seed0"]
    again = quiet_runner(spec, out).run_all()
    assert again["steps"]["computed"] == 1
    assert [c["values"] for c in again["cells"]] == [c["values"] for c in first["cells"]]
