"""The ticket grid and the report, end to end on generated GLUE data with a tiny model."""

import json

import pytest

from tests.glue_fixtures import one_thread, tiny_model_dir, write_glue_task  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridSpec, plan_cells


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


def test_grid_runs_every_method_skips_finished_cells_and_reports(tmp_path, capsys):
    model_dir = tiny_model_dir(tmp_path / "model")
    data = write_glue_task(tmp_path / "glue", "sst2", {"train": 32, "dev": 16})
    write_glue_task(data, "cola", {"train": 32, "dev": 16})
    spec = {
        "model": str(model_dir),
        "tasks": ["sst2", "cola"],
        "data_dir": str(data),
        "seeds": [0],
        "methods": ["full", "omp", "random", "imp", "permuted", "random-init"],
        "sparsities": [0.5],
        "imp_levels": [0.5],
        "transfer_from": ["sst2"],
        "recipe": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "log_every": 100},
    }
    spec_path = tmp_path / "grid.yaml"
    import yaml

    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "grid"
    assert main(["grid", str(spec_path), "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    methods = {(c["task"], c["method"]) for c in summary["cells"]}
    assert {("sst2", m) for m in ("full", "omp", "random", "imp", "permuted", "random-init")} <= methods
    assert ("cola", "imp@sst2") in methods and ("sst2", "imp@sst2") not in methods
    assert all(c["matching"] is None for c in summary["cells"] if c["method"] == "full")
    assert (out / "report" / "results.md").exists() and (
        out / "report" / "sst2_score_vs_sparsity.png"
    ).exists()
    assert (out / "report" / "mask_overlap.png").exists()
    omp = json.loads((out / "cells" / "sst2" / "omp-0.50-seed0" / "results.json").read_text())
    assert omp["pruned_nonzero"] == 0 and abs(omp["sparsity"] - 0.5) < 1e-3
    # Every results.json names its mask and hash; the controls say what they did to the weights.
    from ticketlab.data.cache import file_sha256

    omp_file = out / "tickets" / "omp-0.50.safetensors"
    assert omp["mask"] == str(omp_file) and omp["mask_sha256"] == file_sha256(omp_file)
    permuted = json.loads((out / "cells" / "sst2" / "permuted-0.50-seed0" / "results.json").read_text())
    assert permuted["mask_sha256"] == omp["mask_sha256"] and permuted["control"]["kind"] == "permuted"
    assert sorted(permuted["control"]["layer_order"]) == [0, 1]
    reinit = json.loads((out / "cells" / "sst2" / "random-init-0.50-seed0" / "results.json").read_text())
    assert reinit["control"] == {"kind": "random-init", "seed": 0}
    level1 = out / "imp" / "sst2" / "seed0" / "level_01"
    imp = json.loads((level1 / "results.json").read_text())
    assert imp["mask"] == "mask.safetensors" and imp["mask_sha256"] == file_sha256(
        level1 / "mask.safetensors"
    )

    # The full cell is IMP's level 0 (same spec), taken over rather than fine-tuned again; and it
    # is what fine-tuning that spec gives.
    from ticketlab.experiments.finetune import FinetuneSpec, run_finetune

    full = json.loads((out / "cells" / "sst2" / "full-0.00-seed0" / "results.json").read_text())
    assert full["reused_from"] == "imp/sst2/seed0/level_00"
    level0 = json.loads((out / "imp" / "sst2" / "seed0" / "level_00" / "results.json").read_text())
    assert full["best"] == level0["best"]
    cell_spec = FinetuneSpec.from_dict(
        json.loads((out / "cells" / "sst2" / "full-0.00-seed0" / "spec.json").read_text())
    )
    assert run_finetune(cell_spec, tmp_path / "full-again", quiet=True)["best"] == full["best"]

    # Rerun: nothing trains again (results files untouched).
    stamp = (out / "cells" / "sst2" / "omp-0.50-seed0" / "results.json").stat().st_mtime_ns
    assert main(["grid", str(spec_path), "--out", str(out), "--quiet"]) == 0
    assert (out / "cells" / "sst2" / "omp-0.50-seed0" / "results.json").stat().st_mtime_ns == stamp
    assert "Transfer" in capsys.readouterr().out

    assert (
        main(["report", str(out), str(out / "imp" / "sst2" / "seed0"), "--out", str(tmp_path / "rep")]) == 0
    )
    assert (tmp_path / "rep" / "results.csv").read_text().startswith("task,method")

    # The masks compared (overlap heat-map, layer profile): the evaluated sparsity's tickets of the
    # first seed, each distinct ticket once even when two run directories hold it.
    report = json.loads((out / "report" / "report.json").read_text())
    assert sorted(report["masks_compared"]) == ["imp@cola 50%", "imp@sst2 50%", "omp 50%", "random 50%"]
    assert main(["report", str(out), str(out), "--out", str(tmp_path / "twice")]) == 0
    twice = json.loads((tmp_path / "twice" / "report.json").read_text())
    assert twice["masks_compared"] == report["masks_compared"]


def test_bad_grid_specs_are_refused(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"model": "m", "tasks": ["rte"], "methods": ["omp", "magic"]}))
    with pytest.raises(TicketlabError, match="unknown grid method 'magic'"):
        GridSpec.from_file(path)
    path.write_text(json.dumps({"model": "m", "tasks": ["rte"], "sparsity": [0.5]}))
    with pytest.raises(TicketlabError, match="unknown field 'sparsity'"):
        GridSpec.from_file(path)
    path.write_text(json.dumps({"model": "m", "tasks": ["rte"], "sparsities": [0.55]}))
    with pytest.raises(TicketlabError, match="not one of the IMP levels"):
        GridSpec.from_file(path)
    path.write_text(json.dumps({"model": "m", "tasks": ["rte"], "recipe": {"learning_rate": 1}}))
    with pytest.raises(TicketlabError, match="unknown recipe field"):
        GridSpec.from_file(path)


def test_a_protocol_in_a_grid_file_sets_scope_and_scheme(tmp_path):
    from ticketlab.experiments.store import spec_hash

    path = tmp_path / "g.yaml"
    path.write_text("model: m\ntasks: [rte]\nmethods: [omp]\nprotocol: liu2022\n")
    spec = GridSpec.from_file(path)
    assert (spec.scope, spec.scheme) == ("encoder+embeddings", "per-matrix")
    explicit = tmp_path / "e.yaml"
    explicit.write_text(
        "model: m\ntasks: [rte]\nmethods: [omp]\nscope: encoder+embeddings\nscheme: per-matrix\n"
    )
    assert spec_hash(spec) == spec_hash(GridSpec.from_file(explicit))  # a shorthand, not a field
    path.write_text("model: m\ntasks: [rte]\nmethods: [omp]\nprotocol: liu2022\nscheme: global\n")
    assert (GridSpec.from_file(path).scope, GridSpec.from_file(path).scheme) == (
        "encoder+embeddings",
        "global",
    )
    path.write_text("model: m\ntasks: [rte]\nprotocol: chen2021\n")
    with pytest.raises(TicketlabError, match=r"g.yaml: protocol: 'chen2021' is not one of chen2020, liu2022"):
        GridSpec.from_file(path)


def test_plan_counts_cells():
    spec = GridSpec(
        model="m",
        tasks=["a", "b"],
        methods=["full", "omp", "random", "imp"],
        sparsities=[0.5, 0.7],
        seeds=[0, 1, 2],
        transfer_from=["a"],
    )
    cells = plan_cells(spec)
    # per task and seed: full + 2 omp + 2 random; transfer a -> b: 2 per seed
    assert len(cells) == 2 * 3 * 5 + 3 * 2


def test_report_records_hold_every_imp_level_but_only_evaluated_sparsities_are_tickets(tmp_path):
    from ticketlab.experiments.grid import collect_records, main_metric_of, result_cells, ticket_cells

    spec = GridSpec(
        model="m",
        tasks=["stsb"],
        methods=["full", "omp", "imp"],
        sparsities=[0.5, 0.7],
        imp_levels=[0.1, 0.3, 0.5, 0.7],
        seeds=[0, 1],
    )

    def imp(cells):
        return sorted((c.sparsity, c.seed) for c in cells if c.method == "imp")

    assert imp(ticket_cells(spec)) == [(0.5, 0), (0.5, 1), (0.7, 0), (0.7, 1)]
    assert imp(result_cells(spec)) == [(lv, seed) for lv in (0.1, 0.3, 0.5, 0.7) for seed in (0, 1)]
    # The IMP run's level folders hold the results: level 1 is sparsity 0.1, level 3 is 0.5.
    for level, value in ((1, 0.61), (3, 0.55)):
        run = tmp_path / "imp" / "stsb" / "seed0" / f"level_{level:02d}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"main_metric": "pearson", "best": {"pearson": value}}))
    records = collect_records(spec, tmp_path, main_metric_of)
    assert sorted((r.method, r.sparsity, r.value) for r in records) == [
        ("imp", 0.1, 0.61),
        ("imp", 0.5, 0.55),
    ]


def test_undefined_correlation_counts_as_zero_but_other_metrics_must_exist():
    from ticketlab.experiments.grid import main_metric_of

    collapsed = {"main_metric": "pearson", "best": {"pearson": None, "spearman": None}}
    assert main_metric_of("stsb", collapsed) == ("pearson", 0.0)
    assert main_metric_of("cola", {"main_metric": "matthews", "best": {"matthews": float("nan")}}) == (
        "matthews",
        0.0,
    )
    assert main_metric_of("stsb", {"main_metric": "pearson", "best": {"pearson": 0.8}}) == ("pearson", 0.8)
    with pytest.raises(TicketlabError, match="undefined accuracy"):
        main_metric_of("rte", {"main_metric": "accuracy", "best": {"accuracy": None}})
