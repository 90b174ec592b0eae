"""Super tickets (structured) as methods of the ticket grid."""

from __future__ import annotations

import json

import pytest

from tests.glue_fixtures import one_thread, tiny_grid_spec  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridSpec, plan_cells
from ticketlab.experiments.store import spec_hash


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


def test_grid_run_directory_names_of_existing_specs_are_unchanged():
    # Pinned before the super-* fields existed: new fields at their defaults stay out of the hash.
    assert spec_hash(GridSpec(model="bert-base-uncased", tasks=["rte"])) == "a67b6d5f8d7e"
    spec = GridSpec(
        model="bert-base-uncased",
        tasks=["rte", "mrpc"],
        methods=["full", "omp", "imp"],
        sparsities=[0.5, 0.7],
        seeds=[0, 1],
        recipe={"lr": 1e-4},
    )
    assert spec_hash(spec) == "0f1f0521c2b3"
    assert spec_hash(GridSpec(model="bert-base-uncased", tasks=["rte"], super_levels=[0.3])) != "a67b6d5f8d7e"


def test_super_cells_use_their_own_levels():
    spec = GridSpec(
        model="m",
        tasks=["rte"],
        methods=["full", "omp", "super-winning", "super-random"],
        sparsities=[0.5, 0.7],
        seeds=[0, 1],
        super_levels=[0.2, 0.4, 0.6],
    )
    cells = plan_cells(spec)
    assert sorted({c.sparsity for c in cells if c.method == "super-random"}) == [0.2, 0.4, 0.6]
    assert len(cells) == 2 * (1 + 2 + 3 + 3)
    assert {
        c.sparsity for c in plan_cells(GridSpec(model="m", tasks=["rte"], methods=["full", "super-losing"]))
    } == {
        0.0,
        0.5,
        0.7,
    }


def test_super_methods_are_checked(tmp_path):
    path = tmp_path / "g.json"
    for fields, message in (
        ({"methods": ["omp", "super-winning"]}, "need the full method"),
        ({"methods": ["full", "super-winning"], "super_levels": [1.2]}, "fractions of the heads"),
        ({"methods": ["full", "super-best"]}, "unknown grid method 'super-best'"),
        ({"methods": ["full", "super-random"], "super_variant": "magic"}, "unknown importance variant"),
    ):
        path.write_text(json.dumps({"model": "m", "tasks": ["rte"], **fields}))
        with pytest.raises(TicketlabError, match=message):
            GridSpec.from_file(path)


def test_grid_runs_super_tickets_beside_omp(tmp_path, capsys):
    from ticketlab.masks import load_mask

    methods = ["full", "omp", "super-winning", "super-random", "super-losing"]
    spec_path = tiny_grid_spec(tmp_path, methods, sparsities=[0.5])
    out = tmp_path / "grid"
    assert main(["grid", str(spec_path), "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    methods = {c["method"]: c for c in summary["cells"]}
    assert {"full", "omp", "super-winning", "super-random", "super-losing"} <= set(methods)
    assert methods["super-winning"]["sparsity"] == 0.5 and methods["super-winning"]["matching"] is not None
    cell = json.loads((out / "cells" / "mrpc" / "super-winning-0.50-seed0" / "results.json").read_text())
    assert cell["heads_pruned"] == 4 and cell["mask_kind"] == "structured" and cell["pruned_nonzero"] == 0
    # Its column is the fraction of heads; the plot places it at the weights it pruned.
    assert methods["super-winning"]["weight_sparsity"] == cell["sparsity"] != 0.5
    assert methods["omp"]["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    mask = load_mask(out / "tickets" / "super" / "mrpc" / "seed0" / "masks" / "winning-0.50.safetensors")
    assert int((~mask.heads).sum()) == 4 and int((~mask.ffn).sum()) == 1
    assert (out / "cells" / "mrpc" / "full-0.00-seed0" / "model" / "model.safetensors").exists()
    # The report shows them beside OMP.
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "results.md").read_text()
    # Structured and unstructured tickets are different protocols: each row says which.
    assert "| super-winning (encoder/structured) |" in table and "| omp (encoder/global) |" in table
