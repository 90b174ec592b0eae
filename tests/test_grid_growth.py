"""A grid is a set of steps: grown by a seed and a method (and levels), it reuses every finished
step, counted; a changed recipe is not silently reused; the step graph lists each step's inputs."""

import json

import pytest

from tests.glue_fixtures import tiny_grid_spec
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridRunner, GridSpec
from ticketlab.experiments.grid.plan import plan_steps


def run(spec_path, out, **changes):
    data = {**json.loads(spec_path.read_text()), **changes}
    runner = GridRunner(GridSpec(**data), out, quiet=True, echo=lambda _: None)
    return runner, runner.run_all()


def stamps(root):
    """Modification times of every file inside a step (the run summaries are rewritten by design)."""
    summaries = {
        root / "results.json",
        *root.glob("imp/*/*/results.json"),
        *root.glob("steps/imp/*/results.json"),
    }
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file()
        and p not in summaries
        and not p.name.startswith(".")
        and p.name not in ("spec.json", "versions.json")
    }


def test_a_grid_grown_by_a_seed_and_a_method_reuses_every_earlier_step(tmp_path):
    spec_path = tiny_grid_spec(tmp_path, ["full", "omp", "imp"], sparsities=[0.5], imp_levels=[0.5])
    out = tmp_path / "grid"
    _, first = run(spec_path, out)
    # full + omp ticket + omp cell + the IMP run (its two levels)
    assert first["steps"] == {
        "planned": 4,
        "computed": 4,
        "reused": 0,
        "computed_by_kind": {"imp level": 2, "cell": 2, "omp": 1},
    }
    before = stamps(out)

    runner, grown = run(spec_path, out, seeds=[0, 1], methods=["full", "omp", "imp", "random"])
    steps = grown["steps"]
    # Reused: the four steps of the first grid. New: IMP seed 1, full and omp cells of seed 1,
    # random tickets and cells for both seeds.
    assert steps["reused"] == 4 and steps["planned"] == 4 + 7
    assert steps["computed_by_kind"] == {"imp level": 2, "cell": 4, "random": 2}
    after = stamps(out)
    assert [name for name, stamp in before.items() if after[name] != stamp] == []  # nothing rewritten
    recorded = json.loads((out / "spec.json").read_text())
    assert recorded["spec"]["seeds"] == [0, 1] and len(recorded["grown_from"]) == 1
    assert {(c["method"], c["n"]) for c in grown["cells"]} >= {("full", 2), ("omp", 2), ("random", 2)}

    # The same grid again: every step reused, nothing computed.
    _, again = run(spec_path, out, seeds=[0, 1], methods=["full", "omp", "imp", "random"])
    assert again["steps"]["computed"] == 0 and again["steps"]["reused"] == 11


def test_imp_levels_added_on_top_grow_the_imp_run(tmp_path):
    spec_path = tiny_grid_spec(tmp_path, ["imp"], sparsities=[0.5], imp_levels=[0.5])
    out = tmp_path / "grid"
    run(spec_path, out)
    _, grown = run(spec_path, out, sparsities=[0.5, 0.7], imp_levels=[0.5, 0.7])
    # The former last level is redone (it must now prune for the next), then the new level runs.
    assert grown["steps"]["computed_by_kind"] == {"imp level": 1}
    assert (out / "imp" / "mrpc" / "seed0" / "level_02" / "mask.safetensors").is_file()


def test_a_changed_recipe_is_refused_and_a_cell_recipe_change_makes_a_new_cell(tmp_path):
    spec_path = tiny_grid_spec(tmp_path, ["full"], sparsities=[0.5])
    out = tmp_path / "grid"
    run(spec_path, out)
    first = (out / "cells/mrpc/full-0.00-seed0").resolve()
    recipe = json.loads(spec_path.read_text())["recipe"]
    with pytest.raises(TicketlabError, match="fields that differ: recipe"):
        run(spec_path, out, recipe={**recipe, "lr": 5e-4})
    # task_recipes may grow (a new task needs its own): a cell whose recipe it changes is another
    # step (named by its spec), made anew; the first stays in the store for whoever links it.
    _, changed = run(spec_path, out, task_recipes={"mrpc": {"lr": 5e-4}})
    assert changed["steps"]["computed"] == 1
    second = (out / "cells/mrpc/full-0.00-seed0").resolve()
    assert second != first and first.is_dir() and (second / "results.json").is_file()
    assert json.loads((second / "spec.json").read_text())["lr"] == 5e-4


def test_the_step_graph_names_each_steps_inputs():
    spec = GridSpec(
        model="m", tasks=["rte"], methods=["full", "omp", "random", "imp", "super-winning"], seeds=[0]
    )
    steps = {s.key: s for s in plan_steps(spec)}
    order = list(steps)
    for step in steps.values():
        for needed in step.inputs:
            assert order.index(needed) < order.index(step.key), (step.key, needed)
    assert steps["tickets/random-0.50-seed0.safetensors"].inputs == ("tickets/omp-0.50.safetensors",)
    assert steps["cells/rte/full-0.00-seed0"].inputs == ("imp/rte/seed0",)
    assert steps["tickets/super/rte/seed0"].inputs == ("cells/rte/full-0.00-seed0",)
    assert steps["cells/rte/super-winning-0.70-seed0"].inputs == ("tickets/super/rte/seed0",)


def test_status_lists_each_step_and_what_it_waits_for(tmp_path, capsys):
    import os

    from ticketlab.cli import main

    spec_path = tiny_grid_spec(tmp_path, ["full", "omp", "random"], sparsities=[0.5])
    out = tmp_path / "grid"
    assert main(["grid", str(spec_path), "--out", str(out), "--status", "--json"]) == 0
    states = {s["step"]: s for s in json.loads(capsys.readouterr().out)}
    assert states["tickets/omp-0.50.safetensors"]["state"] == "ready"
    assert states["cells/mrpc/full-0.00-seed0"]["state"] == "ready"
    assert states["cells/mrpc/omp-0.50-seed0"]["waiting_for"] == ["tickets/omp-0.50.safetensors"]
    assert states["tickets/random-0.50-seed0.safetensors"]["state"] == "waiting"
    claim = {
        "host": os.uname().nodename,
        "boot": "",
        "pid": os.getpid(),
        "start": None,
        "token": "t",
        "claimed_at": 0.0,
        "lease_until": 1e12,
    }
    # Another process holds OMP's ticket: its claim is in the store the place links into.
    place = out / "tickets" / "omp-0.50.safetensors"
    entry = place.parent / os.readlink(place)
    (entry.parent / f".{entry.name}.claim").write_text(json.dumps(claim))
    assert main(["grid", str(spec_path), "--out", str(out), "--status"]) == 0
    text = capsys.readouterr().out
    assert "running" in text and "1 running, 1 ready, 3 waiting" in text
    assert not entry.exists()  # --status runs nothing
