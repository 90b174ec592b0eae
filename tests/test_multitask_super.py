"""Multi-task tickets built from super-ticket sweeps: the choice rule on hand-made sweep results, and
the one-command path (sweeps, choice, plain and ticket-sharing runs, comparison) on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.glue_fixtures import one_thread, tiny_model_dir, write_glue_task  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.multitask import choose_super_ticket
from ticketlab.io import write_json


def fake_sweep(root: Path, full: float, winning: dict[float, float], seeds=(0, 1)) -> Path:
    """A finished super-ticket run as ``choose_super_ticket`` reads it (the files only)."""
    from ticketlab.masks import StructuredMask, save_mask

    write_json(
        root / "spec.json",
        {"kind": "SuperTicketSpec", "spec": {"task": "MRPC", "model": "m", "seeds": list(seeds)}},
    )
    points = [
        {"kind": "winning", "level": level, "weights_remaining": 1 - level / 2, "mean": mean, "std": 0.01,
         "seeds": len(seeds), "heads_pruned": int(8 * level), "ffn_pruned": 1, "matching": False}
        for level, mean in winning.items()
    ] + [{"kind": "random", "level": 0.5, "weights_remaining": 0.75, "mean": 0.99, "std": 0.0, "seeds": 2,
          "heads_pruned": 4, "ffn_pruned": 1, "matching": True}]  # fmt: skip
    write_json(
        root / "results.json", {"metric": "f1", "full": {"mean": full, "std": 0.02, "n": 2}, "points": points}
    )
    for seed in seeds:
        step = root / f"importance-seed{seed}"
        entries = []
        for level in winning:
            heads = torch.ones(2, 4, dtype=torch.bool)
            heads.view(-1)[: int(8 * level)] = False
            heads[1, seed] = False  # the seeds' masks differ
            name = f"masks/winning-{level:.2f}.safetensors"
            save_mask(StructuredMask(heads, torch.tensor([True, False])), step / name)
            entries.append({"kind": "winning", "level": level, "file": name, "heads_pruned": int(8 * level),
                            "ffn_pruned": 1, "weights_remaining": 1 - level / 2})  # fmt: skip
        write_json(step / "masks.json", {"masks": entries})
    return root


def test_the_best_winning_level_is_chosen_only_when_it_beats_the_full_model(tmp_path):
    sweep = fake_sweep(tmp_path / "a", full=0.80, winning={0.25: 0.83, 0.5: 0.81})
    choice = choose_super_ticket(sweep)
    assert (choice.task, choice.rule, choice.level, choice.seed) == ("mrpc", "best", 0.25, 0)
    assert choice.mask.endswith("importance-seed0/masks/winning-0.25.safetensors")
    assert choice.weights_remaining == pytest.approx(0.875) and choice.heads_pruned == 2
    assert "0.8300" in choice.reason and choice.full["mean"] == 0.80 and len(choice.winning) == 2
    # The random ticket's higher score does not count; the multi-task seed picks the sweep's mask.
    assert choose_super_ticket(sweep, preferred_seed=1).seed == 1
    assert choose_super_ticket(sweep, preferred_seed=7).seed == 0  # not swept: the first seed
    # No winning level above the full model: the full model, no mask.
    none = choose_super_ticket(fake_sweep(tmp_path / "b", full=0.90, winning={0.25: 0.83, 0.5: 0.90}))
    assert none.level is None and none.mask is None and none.weights_remaining == 1.0
    assert "no winning level beats the full model" in none.reason
    # A fixed level, or the full model, as the user asks.
    fixed = choose_super_ticket(sweep, level=0.5, mask_seed=1)
    assert (fixed.rule, fixed.level, fixed.seed) == ("fixed", 0.5, 1)
    assert choose_super_ticket(sweep, level=None).mask is None
    with pytest.raises(TicketlabError, match="no winning ticket at level 0.3"):
        choose_super_ticket(sweep, level=0.3)
    with pytest.raises(TicketlabError, match="has no seed 5"):
        choose_super_ticket(sweep, mask_seed=5)
    with pytest.raises(TicketlabError, match="not a 'ticketlab super-tickets' run"):
        choose_super_ticket(tmp_path)


RECIPE = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3"]


def test_one_command_sweeps_choose_and_compare_then_resume(tmp_path, capsys, monkeypatch):
    import ticketlab.experiments.multitask as multitask_module

    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    model = tiny_model_dir(tmp_path / "model")
    data = write_glue_task(tmp_path / "glue", "mrpc", {"train": 32, "dev": 16})
    write_glue_task(data, "rte", {"train": 32, "dev": 16}, seed=1)
    out = tmp_path / "mtl"
    argv = [
        "multitask",
        "--super-tickets",
        "--model",
        str(model),
        "--tasks",
        "mrpc,rte",
        "--data-dir",
        str(data),
    ]
    argv += [
        "--super-levels",
        "0.25,0.5",
        "--super-seeds",
        "0",
        "--super-variant",
        "michel2019",
        *RECIPE,
        "--out",
        str(out),
        "--quiet",
        "--json",
    ]
    assert main(argv) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == ["mrpc", "rte"]
    tickets = json.loads((out / "tickets.json").read_text())["tickets"]
    for task in ("mrpc", "rte"):
        sweep = json.loads((out / "sweeps" / task / "results.json").read_text())
        assert [p["kind"] for p in sweep["points"]] == ["winning", "winning"]  # only what the choice needs
        assert sweep["variant"] == "michel2019"  # a generated --super-* flag reached the sweep
        assert tickets[task]["full"]["mean"] == sweep["full"]["mean"]
        best = max(sweep["points"], key=lambda p: p["mean"])
        expected = best["level"] if best["mean"] > sweep["full"]["mean"] else None
        assert tickets[task]["level"] == expected
    rows = {r["task"]: r for r in comparison["rows"]}
    kept = [tickets[t]["weights_remaining"] for t in ("mrpc", "rte")]
    assert comparison["average_weights_kept"] == pytest.approx(sum(kept) / 2)
    plain = json.loads((out / "plain" / "results.json").read_text())
    assert rows["average"]["plain"] == pytest.approx(plain["best_average"])
    mrpc = plain["tasks"]["mrpc"]
    assert rows["mrpc"]["plain"] == pytest.approx(mrpc["best"][mrpc["main_metric"]])
    has_ticket = any(t["mask"] for t in tickets.values())
    assert (out / "tickets" / "results.json").exists() == has_ticket
    table = (out / "comparison.md").read_text()
    assert "| average |" in table and "weights kept" in table

    # Rerunning trains nothing; a fixed level through --from-super-tickets makes a new choice.
    calls = []
    real = multitask_module._train
    monkeypatch.setattr(multitask_module, "_train", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(argv) == 0 and calls == []
    capsys.readouterr()
    sweeps = [str(out / "sweeps" / "mrpc"), str(out / "sweeps" / "rte")]
    fixed = ["multitask", "--from-super-tickets", *sweeps, "--level", "mrpc=0.5", "--level", "rte=full"]
    assert main([*fixed, *RECIPE, "--out", str(tmp_path / "fixed"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "p=0.5" in text and "full model" in text
    chosen = json.loads((tmp_path / "fixed" / "tickets.json").read_text())["tickets"]
    assert (
        chosen["mrpc"]["rule"] == "fixed" and chosen["mrpc"]["level"] == 0.5 and chosen["rte"]["mask"] is None
    )
    ticket_run = json.loads((tmp_path / "fixed" / "tickets" / "results.json").read_text())
    assert ticket_run["tasks"]["mrpc"]["ticket"]["head_sparsity"] == pytest.approx(0.5)
    assert ticket_run["tasks"]["rte"]["ticket"] is None
    # Expected errors are one line.
    assert main([*fixed[:4], "--level", "cola=0.5", "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert "no super-ticket run" in capsys.readouterr().err
    assert main(["multitask", "--from-super-tickets", str(tmp_path), "--out", str(tmp_path / "e2")]) == 2
    assert "not a 'ticketlab super-tickets' run" in capsys.readouterr().err
