import numpy as np
import pytest

from ticketlab.analysis.aggregate import (
    ResultRecord,
    aggregate,
    csv_table,
    highest_matching_sparsity,
    markdown_table,
)
from ticketlab.analysis.plots import plot_layer_profile, plot_overlap_heatmap, plot_score_vs_sparsity


def _records():
    rows = []
    for seed, (full, imp5, imp7, rnd5) in enumerate(
        [(0.80, 0.79, 0.70, 0.60), (0.84, 0.83, 0.72, 0.62), (0.82, 0.81, 0.74, 0.58)]
    ):
        rows += [
            ResultRecord("rte", "full", 0.0, seed, "accuracy", full),
            ResultRecord("rte", "imp", 0.5, seed, "accuracy", imp5),
            ResultRecord("rte", "imp", 0.7, seed, "accuracy", imp7),
            ResultRecord("rte", "random", 0.5, seed, "accuracy", rnd5),
        ]
    return rows


def test_cells_use_sample_std_and_mark_matching():
    cells = {(c.method, c.sparsity): c for c in aggregate(_records())}
    full = cells[("full", 0.0)]
    assert full.mean == pytest.approx(0.82) and full.std == pytest.approx(np.std([0.80, 0.84, 0.82], ddof=1))
    assert cells[("imp", 0.5)].matching is True  # 0.81 >= 0.82 - 0.02
    assert cells[("imp", 0.7)].matching is False
    assert cells[("random", 0.5)].matching is False
    assert full.matching is None
    assert highest_matching_sparsity(cells.values()) == {("rte", "imp"): 0.5, ("rte", "random"): None}


def test_tables_and_plots_are_written(tmp_path):
    cells = aggregate(_records())
    table = markdown_table(cells)
    assert "| imp | 81.00 ± 2.00 ✓ | 72.00 ± 2.00 |" in table
    assert csv_table(cells).splitlines()[0].startswith("task,method,sparsity")
    for path in (
        plot_score_vs_sparsity(cells, "rte", tmp_path / "rte.png"),
        plot_overlap_heatmap(["a", "b"], np.array([[1.0, 0.3], [0.3, 1.0]]), tmp_path / "overlap.png"),
        plot_layer_profile({"omp": {"0": 0.4, "1": 0.6, "other": 0.5}}, tmp_path / "layers.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_losses_are_shown_unscaled_and_scores_x100():
    records = [
        ResultRecord("mlm", "full", 0.0, seed, "mlm_loss", loss) for seed, loss in enumerate([2.0, 2.2])
    ] + [ResultRecord("mlm", "imp", 0.5, seed, "mlm_loss", loss) for seed, loss in enumerate([2.1, 2.3])]
    table = markdown_table(aggregate(records))
    assert "(mlm_loss, mean ± std" in table and "x100" not in table
    assert "| imp | 2.20 ± 0.14 ✓ |" in table


def test_a_full_model_at_chance_level_gets_a_caveat():
    def cola(full_values):
        return [ResultRecord("cola", "full", 0.0, s, "matthews", v) for s, v in enumerate(full_values)] + [
            ResultRecord("cola", "omp", 0.5, s, "matthews", 0.0) for s in range(len(full_values))
        ]

    untrained = markdown_table(aggregate(cola([0.0, 0.02, 0.0])))
    assert "Caveat" in untrained and "matching* it means nothing" in untrained
    trained = markdown_table(aggregate(cola([0.30, 0.34, 0.32])))
    assert "Caveat" not in trained


def test_only_true_replicates_pool_and_duplicate_seeds_are_refused(tmp_path):
    from ticketlab.analysis.aggregate import replicate_key
    from ticketlab.errors import TicketlabError

    recipe_a = replicate_key({"model": "m", "task": "rte", "lr": 2e-5, "seed": 0, "mask": "a.safetensors"})
    assert recipe_a == replicate_key({"model": "m", "task": "rte", "lr": 2e-5, "seed": 3, "mask": "b"})
    recipe_b = replicate_key({"model": "m", "task": "rte", "lr": 1e-4, "seed": 0})
    assert recipe_a != recipe_b and replicate_key(None) == ""
    records = [
        ResultRecord("rte", "full", 0.0, 0, "accuracy", 0.80, "a/0", recipe=recipe_a),
        ResultRecord("rte", "full", 0.0, 1, "accuracy", 0.84, "a/1", recipe=recipe_a),
        ResultRecord("rte", "full", 0.0, 0, "accuracy", 0.60, "b/0", recipe=recipe_b),  # another recipe
        ResultRecord("rte", "omp", 0.5, 0, "accuracy", 0.79, "a/omp", "encoder", "global", recipe_a),
        ResultRecord("rte", "omp", 0.5, 0, "accuracy", 0.70, "a/omp-pm", "encoder", "per-matrix", recipe_a),
    ]
    cells = aggregate(records + [records[0]])  # the same result twice counts once
    full = [c for c in cells if c.method == "full"]
    assert sorted((c.recipe, c.seeds) for c in full) == sorted([(recipe_a, [0, 1]), (recipe_b, [0])])
    omp = {c.scheme: c for c in cells if c.method == "omp"}
    assert omp["global"].values == [0.79] and omp["per-matrix"].values == [0.70]
    assert omp["global"].to_dict()["scope"] == "encoder"
    table = markdown_table(cells)
    assert f"recipe {recipe_a}" in table and f"recipe {recipe_b}" in table
    assert "| omp (encoder/global) |" in table and "| omp (encoder/per-matrix) |" in table
    with pytest.raises(TicketlabError, match="with seed 1 and the same recipe"):
        aggregate(records + [ResultRecord("rte", "full", 0.0, 1, "accuracy", 0.5, "c/1", recipe=recipe_a)])
