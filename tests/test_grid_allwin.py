"""All tickets winning (good / random / bad subnetworks) as methods of the ticket grid, at fixed sizes."""

from __future__ import annotations

import json

import pytest
import torch

from tests.glue_fixtures import one_thread, tiny_grid_spec  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridSpec, plan_cells
from ticketlab.experiments.store import RunDirectory, spec_hash
from ticketlab.experiments.winning_tickets import level_subnetworks
from ticketlab.masks import StructuredMask, load_mask
from ticketlab.pruning.importance import ImportanceScores
from ticketlab.pruning.structured import good_random_bad, level_steps, structured_mask_from_scores


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


def test_level_steps_land_on_every_level_with_bounded_steps():
    # BERT-base (144 heads, 12 FFN layers), levels 0.1, 0.2, 0.5 with the 10/12 FFN ratio: 14 heads
    # and 1 FFN layer, 28 and 2, 72 and 5; 14 heads a step. Worked by hand: from (28, 2) to (72, 5)
    # takes max(ceil(44 / 14), 3) = 4 steps, 11 heads each, FFN layers at 3 x i // 4 = 0, 1, 2, 3.
    assert level_steps([(72, 5), (14, 1), (28, 2)], 14) == [
        (14, 1),
        (28, 2),
        (39, 2),
        (50, 3),
        (61, 4),
        (72, 5),
    ]
    # FFN layers drive the step count when they grow faster; levels with equal counts share a step.
    steps = level_steps([(1, 3), (1, 3), (0, 0)], 4)
    assert steps == [(0, 1), (0, 2), (1, 3)]
    with pytest.raises(TicketlabError, match="grow together"):
        level_steps([(2, 1), (3, 0)], 1)
    with pytest.raises(TicketlabError, match="at least one head"):
        level_steps([(2, 1)], 0)


class FakeProbe:
    """A tiny BERT's shape, scripted importance (random per mask, so re-scoring matters) and a
    constant dev metric: what level_subnetworks needs of a TaskProbe, without data."""

    main_metric = "accuracy"

    def __init__(self, layers: int = 3):
        from ticketlab.models import EncoderAdapter
        from ticketlab.models.tiny import tiny_model

        self.adapter = EncoderAdapter(tiny_model("bert", num_hidden_layers=layers))
        self.scored: list[tuple[int, int]] = []

    def importance(self, mask: StructuredMask) -> ImportanceScores:
        pruned = (int((~mask.heads).sum()), int((~mask.ffn).sum()))
        self.scored.append(pruned)
        generator = torch.Generator().manual_seed(100 * pruned[0] + pruned[1])
        heads = torch.rand(mask.heads.shape, generator=generator) * mask.heads
        ffn = torch.rand(mask.ffn.shape, generator=generator) * mask.ffn
        return ImportanceScores(heads, ffn, variant="scripted")

    def evaluate(self, mask: StructuredMask) -> dict[str, float]:
        return {"accuracy": 0.5 + 0.01 * int(mask.heads.sum())}


def _subnetworks(path, probe, levels, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    return level_subnetworks(
        RunDirectory(path, None), probe, levels, path / "masks", seed=seed, echo=lambda _: None
    )


def test_level_masks_have_exact_counts_nested_good_and_seeded_random(tmp_path):
    # 3 layers x 4 heads. Levels 0.25, 0.5, 0.75: floor(p x 12) = 3, 6, 9 heads with
    # round(p x 10/12 x 3) = round(0.625), round(1.25), round(1.875) = 1, 1, 2 FFN layers.
    levels = [0.25, 0.5, 0.75]
    expected = {0.25: (3, 1), 0.5: (6, 1), 0.75: (9, 2)}
    probe = FakeProbe()
    summary = _subnetworks(tmp_path / "a", probe, levels)
    # Re-scored under the current mask at every step: one head a step (max(1, floor(0.1 x 12))).
    assert probe.scored == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1)]
    masks = {
        (e["kind"], e["level"]): load_mask(tmp_path / "a" / "masks" / e["file"]) for e in summary["masks"]
    }
    assert len(masks) == 9
    for (kind, level), mask in masks.items():
        heads, ffn = expected[level]
        assert (int((~mask.heads).sum()), int((~mask.ffn).sum())) == (heads, ffn), (kind, level)
    for level in levels:
        good, bad = masks["good", level], masks["bad", level]
        assert not torch.equal(good.heads, bad.heads)
        if int((~good.heads).sum()) <= int(good.heads.sum()):  # bad: every pruned head, topped up
            assert bad.heads[~good.heads].all()
        else:  # more pruned than kept: bad keeps only pruned heads
            assert not bad.heads[good.heads].any()
        # Random and bad come from the good mask with the seed, deterministically.
        drawn = good_random_bad(good, seed=0)
        assert drawn["random"] == masks["random", level] and drawn["bad"] == bad
        assert good_random_bad(good, seed=1)["random"] != masks["random", level]
    # Good masks are nested (one pruning trajectory through every level), random ones too (one
    # seeded permutation), as docs/structured.md says.
    for kind in ("good", "random"):
        for low, high in zip(levels, levels[1:]):
            assert not (masks[kind, high].heads & ~masks[kind, low].heads).any()
            assert not (masks[kind, high].ffn & ~masks[kind, low].ffn).any()
    good = next(e for e in summary["masks"] if e["kind"] == "good" and e["level"] == 0.75)
    assert good["step"] == 9 and good["pruned_metric"] == pytest.approx(0.5 + 0.01 * 3)

    # The same seed gives the same masks; a resumed run scores nothing again.
    again = FakeProbe()
    assert _subnetworks(tmp_path / "a", again, levels) == summary and again.scored == []
    assert load_mask(tmp_path / "a" / "masks" / "random-0.50.safetensors") == masks["random", 0.5]


def test_with_fixed_scores_iterative_pruning_is_the_one_shot_ranking(tmp_path):
    """An independent check of the walk: scores that do not change with the mask make iterative
    pruning prune the globally least important units, as one-shot ranking does."""
    probe = FakeProbe()
    fixed = probe.importance(StructuredMask.full(probe.adapter, "layer"))
    probe.importance = lambda mask: ImportanceScores(fixed.heads * mask.heads, fixed.ffn * mask.ffn, "fixed")
    _subnetworks(tmp_path / "fixed", probe, [0.3, 0.6])
    for level, (heads, ffn) in {0.3: (3, 1), 0.6: (7, 2)}.items():
        one_shot = structured_mask_from_scores(fixed.heads, fixed.ffn, heads, ffn, min_heads_per_layer=0)
        good = load_mask(tmp_path / "fixed" / "masks" / f"good-{level:.2f}.safetensors")
        assert torch.equal(good.heads, one_shot.heads) and torch.equal(good.ffn, one_shot.ffn)


def test_allwin_specs_are_checked(tmp_path):
    # Grids without these methods keep their run-directory names (new fields at their defaults).
    assert spec_hash(GridSpec(model="bert-base-uncased", tasks=["rte"])) == "a67b6d5f8d7e"
    assert (
        spec_hash(GridSpec(model="bert-base-uncased", tasks=["rte"], allwin_levels=[0.3])) != "a67b6d5f8d7e"
    )
    path = tmp_path / "g.json"
    for fields, message in (
        ({"methods": ["omp", "allwin-good"]}, r"allwin-\* methods need the full method"),
        (
            {"methods": ["full", "allwin-bad"], "allwin_levels": [1.2]},
            "allwin_levels are fractions of the heads",
        ),
        ({"methods": ["full", "allwin-bad"], "allwin_levels": [0.3, 0.3]}, "allwin_levels repeat"),
        ({"methods": ["full", "allwin-good"], "allwin_variant": "magic"}, "unknown importance variant"),
        ({"methods": ["full", "allwin-good"], "allwin_ffn_ratio": -1}, "allwin_ffn_ratio must be"),
        ({"methods": ["full", "allwin-good"], "tasks": ["squad"]}, "GLUE tasks"),
        ({"methods": ["full", "allwin-worst"]}, "unknown grid method 'allwin-worst'"),
    ):
        path.write_text(json.dumps({"model": "m", "tasks": ["rte"], **fields}))
        with pytest.raises(TicketlabError, match=message):
            GridSpec.from_file(path)
    spec = GridSpec(
        model="m",
        tasks=["rte"],
        methods=["full", "allwin-good", "allwin-bad", "super-winning"],
        sparsities=[0.5],
        seeds=[0, 1],
        allwin_levels=[0.2, 0.4],
    )
    spec.validate()
    cells = plan_cells(spec)
    assert sorted({c.sparsity for c in cells if c.method == "allwin-bad"}) == [0.2, 0.4]
    assert {c.sparsity for c in cells if c.method == "super-winning"} == {0.5}
    assert len(cells) == 2 * (1 + 2 + 2 + 1)


def test_grid_runs_allwin_subnetworks_skips_them_on_rerun_and_reports(tmp_path, capsys):
    methods = ["full", "allwin-good", "allwin-random", "allwin-bad"]
    # allwin_levels default to the sparsities: 2 and 4 of 8 heads, 0 and 1 of 2 FFN layers.
    spec_path = tiny_grid_spec(tmp_path, methods, sparsities=[0.25, 0.5])
    out = tmp_path / "grid"
    assert main(["grid", str(spec_path), "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cells = {(c["method"], c["sparsity"]): c for c in summary["cells"]}
    for method in ("allwin-good", "allwin-random", "allwin-bad"):
        assert {(method, 0.25), (method, 0.5)} <= set(cells)
    for level, (heads, ffn) in {0.25: (2, 0), 0.5: (4, 1)}.items():
        for kind in ("good", "random", "bad"):
            cell = json.loads(
                (out / "cells" / "mrpc" / f"allwin-{kind}-{level:.2f}-seed0" / "results.json").read_text()
            )
            assert (cell["heads_pruned"], cell["ffn_pruned"]) == (heads, ffn)
            assert cell["mask_kind"] == "structured" and cell["pruned_nonzero"] == 0
            assert 0 < cell["sparsity"] < 1
    tickets = out / "tickets" / "allwin" / "mrpc" / "seed0"
    assert (tickets / "step_04" / "scores.safetensors").exists() and not (tickets / "step_05").exists()
    masks = json.loads((tickets / "masks" / "masks.json").read_text())
    assert {(e["kind"], e["level"]) for e in masks["masks"]} == {
        (k, lv) for k in ("good", "random", "bad") for lv in (0.25, 0.5)
    }

    # Rerun: nothing is pruned or fine-tuned again.
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("cells/mrpc/*/results.json"), tickets / "masks"]}
    assert main(["grid", str(spec_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tune" not in printed and "iterative importance pruning" not in printed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| allwin-good |" in table and "| allwin-random |" in table and "| allwin-bad |" in table
    assert "Full model:" in table
