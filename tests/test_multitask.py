"""Multi-task training with shared tickets: the task mixture, gradients kept inside each task's
ticket, and plain vs ticket sharing end to end on a tiny BERT and two generated tasks."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.experiments.multitask import MultitaskModel, TaskMixture, task_loss
from ticketlab.masks import StructuredGates, StructuredMask, save_mask
from ticketlab.models.tiny import tiny_model


def batches(name: str, count: int) -> list[dict]:
    return [
        {"input_ids": torch.full((2, 3), i), "labels": torch.tensor([0, 1]), "source": name}
        for i in range(count)
    ]


def test_every_batch_once_per_epoch_in_a_seeded_order_proportional_to_data():
    mixture = TaskMixture({"big": batches("big", 6), "small": batches("small", 2)}, seed=1)
    assert len(mixture) == 8
    seen = list(mixture)
    assert Counter(b["task"] for b in seen) == {"big": 6, "small": 2}
    assert all(b["task"] == b["source"] for b in seen)
    assert sorted(int(b["input_ids"][0, 0]) for b in seen if b["task"] == "big") == list(range(6))
    assert next(iter(seen[0])) == "input_ids"  # the training loop reads the batch size there
    first = mixture.order()
    assert first == [b["task"] for b in seen] == TaskMixture(mixture.loaders, seed=1).order()
    mixture.set_epoch(1)
    orders = {tuple(mixture.order(epoch)) for epoch in range(6)}
    assert len(orders) > 1  # reshuffled every epoch
    assert TaskMixture(mixture.loaders, seed=2).order(0) != first


def test_a_tasks_gradient_stays_inside_its_ticket():
    torch.manual_seed(0)
    encoder = tiny_model("bert", seed=0)
    model = MultitaskModel(encoder, {"a": 2, "b": 3})
    heads = torch.ones(2, 4, dtype=torch.bool)
    heads[0, 1] = False
    masks = {
        "a": StructuredMask(heads, torch.tensor([True, False])),
        "b": StructuredMask(torch.ones(2, 4, dtype=torch.bool), torch.ones(2, dtype=torch.bool)),
    }
    gates = StructuredGates(encoder, "layer")
    ids = torch.randint(5, 100, (4, 7), generator=torch.Generator().manual_seed(0))
    layer0, layer1 = encoder.encoder.layer[0], encoder.encoder.layer[1]
    d = encoder.config.hidden_size // encoder.config.num_attention_heads

    def grads(task: str, labels: torch.Tensor):
        model.zero_grad(set_to_none=True)
        task_loss(model, {"input_ids": ids, "labels": labels, "task": task}, gates, masks).backward()
        return (
            layer0.attention.self.query.weight.grad[d : 2 * d],  # head (0, 1)
            layer0.attention.self.query.weight.grad[:d],  # head (0, 0)
            layer1.intermediate.dense.weight.grad,  # FFN layer 1
            model.heads["b"].out.weight.grad,
        )

    pruned_head, kept_head, ffn1, other_head = grads("a", torch.tensor([0, 1, 1, 0]))
    assert torch.count_nonzero(pruned_head) == 0 and torch.count_nonzero(ffn1) == 0
    assert torch.count_nonzero(kept_head) > 0 and other_head is None  # task b's head is not used
    pruned_head, _, ffn1, other_head = grads("b", torch.tensor([0, 1, 2, 0]))
    assert torch.count_nonzero(pruned_head) > 0 and torch.count_nonzero(ffn1) > 0  # b's ticket is whole
    assert torch.count_nonzero(other_head) > 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ticketlab.data.synthetic import LEXICON, build_tokenizer, write_glue_tasks

    root = tmp_path_factory.mktemp("multitask")
    tiny_model("bert", seed=0, vocab_size=len(LEXICON.vocabulary()), num_hidden_layers=3).save_pretrained(
        root / "m"
    )
    build_tokenizer(root / "m")
    write_glue_tasks(root / "glue", num_train=48, num_dev=32)
    heads = torch.ones(3, 4, dtype=torch.bool)
    heads[0, :2] = False
    save_mask(StructuredMask(heads, torch.tensor([True, False, True])), root / "cola.safetensors")
    return root


def multitask(world, out, *extra):
    args = [
        "multitask",
        "--model",
        str(world / "m"),
        "--tasks",
        "cola,sst2",
        "--data-dir",
        str(world / "glue"),
    ]
    args += ["--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--cache-dir", str(world / "cache")]
    return main([*args, "--out", str(out), "--quiet", *extra])


def test_plain_and_ticket_sharing_end_to_end(world, capsys):
    mask = f"cola={world / 'cola.safetensors'}"
    assert multitask(world, world / "run", "--mask", mask, "--compare", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    plain, tickets = data["plain"], data["tickets"]
    assert plain["variant"] == "plain" and tickets["variant"] == "tickets"
    for results in (plain, tickets):
        assert results["training_steps"] == 2 * (3 + 3)  # 48 examples / 16 per batch, two tasks, 2 epochs
        assert {t: r["batches_per_epoch"] for t, r in results["tasks"].items()} == {"cola": 3, "sst2": 3}
        assert (
            "matthews" in results["tasks"]["cola"]["best"] and "accuracy" in results["tasks"]["sst2"]["best"]
        )
    assert tickets["tasks"]["cola"]["ticket"]["head_sparsity"] == pytest.approx(2 / 12)
    assert tickets["tasks"]["cola"]["ticket"]["ffn_sparsity"] == pytest.approx(1 / 3)
    assert plain["tasks"]["cola"]["ticket"] is None and tickets["tasks"]["sst2"]["ticket"] is None
    rows = {r["task"]: r for r in data["comparison"]}
    assert rows["average"]["difference"] == pytest.approx(tickets["best_average"] - plain["best_average"])
    saved = json.loads((world / "run" / "tickets" / "results.json").read_text())
    assert saved["best_average"] == tickets["best_average"]
    # Rerunning reuses the finished runs.
    assert multitask(world, world / "run", "--mask", mask, "--compare") == 0
    assert "tickets - plain" in capsys.readouterr().out


def test_bad_masks_are_one_line_errors(world, tmp_path, capsys):
    assert multitask(world, tmp_path / "a", "--mask", f"rte={world / 'cola.safetensors'}") == 2
    assert "not one of the tasks" in capsys.readouterr().err
    assert multitask(world, tmp_path / "b", "--compare") == 2
    assert "--compare needs tickets" in capsys.readouterr().err
    from ticketlab.masks import UnstructuredMask

    weights = UnstructuredMask({"x": torch.ones(3, dtype=torch.bool)})
    save_mask(weights, tmp_path / "u.safetensors")
    assert multitask(world, tmp_path / "c", "--mask", f"cola={tmp_path / 'u.safetensors'}") == 2
    assert "not a structured" in capsys.readouterr().err
