"""Grid methods are registered strategy objects: a new one is a new module, no edit of the grid."""

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.glue_fixtures import tiny_grid_spec
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridRunner, GridSpec, grid_method_names, method_of
from ticketlab.experiments.grid.layout import Cell
from ticketlab.experiments.grid.methods import GridMethod, base, registered
from ticketlab.experiments.grid.plan import plan_steps
from ticketlab.experiments.steps import StepStore
from ticketlab.masks import load_mask

GRID_PACKAGE = Path(__file__).parents[1] / "src" / "ticketlab" / "experiments" / "grid"


@dataclass
class RankingSettings:
    scheme: str = "per-matrix"


class PerMatrixOmp(GridMethod):
    """What a user's module would hold: OMP ranked within each matrix whatever the grid's scheme."""

    name = "omp-per-matrix"
    help = "one-shot magnitude pruning, ranked within each matrix"
    settings_type = RankingSettings

    def ticket_path(self, spec, root, cell):
        return root / "tickets" / f"{self.name}-{cell.sparsity:.2f}.safetensors"

    def ticket_step(self, spec, cell):
        return self.file_step(spec, Cell("", self.name, cell.sparsity, 0))  # one for every task and seed

    def make(self, runner, step):
        from ticketlab.masks import save_mask
        from ticketlab.pruning import prune

        path = self.ticket_path(runner.spec, runner.root, step.cell)

        def make(file):
            mask = prune(
                runner.pretrained(),
                "omp",
                step.cell.sparsity,
                scope=runner.spec.scope,
                scheme=self.settings(runner.spec).scheme,
                source_model=runner.spec.model,
            )
            save_mask(mask, file)
            runner.computed[self.name] += 1

        StepStore(path.parent).run_file(path.name, make)
        return path


@pytest.fixture
def per_matrix_omp(monkeypatch):
    registered()  # the built-in methods first
    monkeypatch.setitem(base._METHODS, PerMatrixOmp.name, PerMatrixOmp())
    return PerMatrixOmp.name


def test_a_registered_method_runs_in_a_grid_without_touching_the_grid(tmp_path, per_matrix_omp):
    path = tiny_grid_spec(tmp_path, ["full", per_matrix_omp], sparsities=[0.5])
    spec = GridSpec.from_file(path)
    steps = plan_steps(spec)
    assert [(s.kind, s.key) for s in steps] == [
        ("cell", "cells/mrpc/full-0.00-seed0"),
        (per_matrix_omp, "tickets/omp-per-matrix-0.50.safetensors"),
        ("cell", "cells/mrpc/omp-per-matrix-0.50-seed0"),
    ]
    assert steps[2].inputs == (steps[1].key,)
    summary = GridRunner(spec, tmp_path / "grid", quiet=True, echo=lambda _: None).run_all()
    assert summary["steps"]["computed_by_kind"] == {"cell": 2, per_matrix_omp: 1}
    assert {(c["method"], c["sparsity"]) for c in summary["cells"]} == {("full", 0.0), (per_matrix_omp, 0.5)}
    mask = load_mask(tmp_path / "grid" / "tickets" / "omp-per-matrix-0.50.safetensors")
    for name, keep in mask.tensors.items():  # exactly half of every matrix kept: ranked per matrix
        assert int(keep.sum()) == keep.numel() // 2, name
    results = json.loads(
        (tmp_path / "grid" / "cells/mrpc/omp-per-matrix-0.50-seed0/results.json").read_text()
    )
    assert results["mask"].endswith("omp-per-matrix-0.50.safetensors") and results["mask_sha256"]


def test_a_method_s_own_settings_are_parsed_before_anything_runs(tmp_path, per_matrix_omp):
    path = tiny_grid_spec(tmp_path, ["full", per_matrix_omp], method_settings={per_matrix_omp: {"schema": 1}})
    with pytest.raises(TicketlabError, match="method_settings.omp-per-matrix.*schema"):
        GridSpec.from_file(path)
    path = tiny_grid_spec(tmp_path, ["full", per_matrix_omp], method_settings={"omp": {"scheme": "global"}})
    with pytest.raises(TicketlabError, match="method_settings names 'omp', which is not one of the grid's"):
        GridSpec.from_file(path)
    path = tiny_grid_spec(tmp_path, ["full", "omp"], method_settings={"omp": {"scheme": "global"}})
    with pytest.raises(TicketlabError, match="grid method 'omp' takes no settings"):
        GridSpec.from_file(path)
    path = tiny_grid_spec(
        tmp_path, ["full", per_matrix_omp], method_settings={per_matrix_omp: {"scheme": "global"}}
    )
    assert method_of(per_matrix_omp).settings(GridSpec.from_file(path)) == RankingSettings("global")


def test_the_registry_knows_every_method_and_refuses_others():
    names = grid_method_names()
    assert names[:5] == ("full", "omp", "random", "imp", "tamt")
    assert {"permuted", "random-init", "super-winning", "allwin-bad"} <= set(names)
    assert "imp@" not in names  # transfer is asked for by transfer_from, not in methods
    assert method_of("imp@mrpc").name == "imp@"
    assert all(m.help for m in registered())
    with pytest.raises(TicketlabError, match="unknown grid method 'nope'.*full, omp"):
        method_of("nope")


def test_the_grid_never_tests_a_method_by_name():
    """The spec, plan, runner and records ask the registry: no method's name is written in them."""
    names = set(grid_method_names()) - {"full"} | {"imp@"}
    spec = ast.parse((GRID_PACKAGE / "spec.py").read_text())
    grid_spec = next(n for n in spec.body if isinstance(n, ast.ClassDef) and n.name == "GridSpec")
    validate = next(n for n in grid_spec.body if isinstance(n, ast.FunctionDef) and n.name == "validate")
    trees = [validate] + [
        ast.parse((GRID_PACKAGE / m).read_text()) for m in ("plan.py", "run.py", "records.py")
    ]
    for module, tree in zip(["GridSpec.validate", "plan.py", "run.py", "records.py"], trees):
        literals = {
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        assert not literals & names, (module, literals & names)
