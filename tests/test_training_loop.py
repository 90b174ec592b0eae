"""The training loop: it learns, holds masks, is deterministic, stops on NaN, evaluates on schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from ticketlab.models.tiny import tiny_model
from ticketlab.training.callbacks import JsonlLogger, MaskEnforcement
from ticketlab.training.loop import (
    Callback,
    NonFiniteLossError,
    TrainConfig,
    make_optimizer,
    parameter_groups,
    train,
)


def classifier(seed: int = 0):
    from transformers import BertForSequenceClassification

    return tiny_model("bert", seed=seed, model_class=BertForSequenceClassification, num_labels=2)


def separable_data(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Label 1 iff the tokens after [CLS] come from 10..19 (else from 20..29)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    ids = torch.where(labels[:, None] == 1, 10, 20) + torch.randint(0, 10, (count, 8), generator=generator)
    ids[:, 0] = 2
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(count)]


def loader(data, seed: int = 0, batch_size: int = 16) -> DataLoader:
    return DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def accuracy_on(data):
    ids = torch.stack([d["input_ids"] for d in data])
    labels = torch.stack([d["labels"] for d in data])

    def evaluate(model, accelerator):
        logits = model(input_ids=ids.to(accelerator.device)).logits
        return {"accuracy": float((logits.argmax(-1).cpu() == labels).float().mean())}

    return evaluate


class Recorder(Callback):
    def __init__(self):
        self.losses, self.lrs, self.evals, self.events = [], [], [], []

    def on_train_begin(self, state):
        self.events.append("begin")

    def on_step_end(self, state):
        self.losses.append(state.loss)
        self.lrs.append(state.lr)

    def on_evaluate(self, state, record, is_best):
        self.evals.append((record.step, is_best))

    def on_epoch_end(self, state):
        self.events.append(f"epoch{int(state.epoch)}")

    def on_train_end(self, state, result):
        self.events.append("end")

    def on_train_error(self, state, error):
        self.events.append(f"error:{type(error).__name__}")


def test_learns_a_separable_task():
    model = classifier()
    dev = separable_data(64, seed=1)
    recorder = Recorder()
    config = TrainConfig(lr=1e-2, epochs=6, quiet=True, main_metric="accuracy")
    result = train(model, loader(separable_data(64)), accuracy_on(dev), config, callbacks=[recorder])
    assert result.steps == 24 and result.train_examples == 384
    assert sum(recorder.losses[-4:]) / 4 < sum(recorder.losses[:4]) / 4 - 0.15
    assert result.history[0].metrics["accuracy"] < 0.8 and result.final.metrics["accuracy"] >= 0.95
    assert result.best.metrics["accuracy"] >= result.final.metrics["accuracy"]
    assert recorder.events == ["begin", "epoch1", "epoch2", "epoch3", "epoch4", "epoch5", "epoch6", "end"]
    assert result.examples_per_second > 0


def test_masked_weights_stay_exactly_zero():
    from ticketlab.pruning import prune

    model = classifier()
    mask = prune(model, "random", 0.5, scope="encoder", scheme="global", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(lr=1e-2, epochs=2, weight_decay=0.1, quiet=True)
    callback = MaskEnforcement(mask=mask)
    train(model, loader(separable_data(64)), None, config, callbacks=[callback])
    params = dict(model.named_parameters())
    for name, bits in mask.tensors.items():
        weight = params["bert." + name].detach()
        assert torch.count_nonzero(weight[~bits]) == 0, name
        assert not torch.equal(weight[bits], before["bert." + name][bits]), name  # the kept ones trained
    assert callback.enforcer._handles == []  # hooks removed at the end


def _run(seed: int):
    torch.manual_seed(seed)
    model = classifier(seed=0)
    config = TrainConfig(lr=1e-3, epochs=2, seed=seed, quiet=True, eval_every=3)
    result = train(model, loader(separable_data(48), seed=seed), accuracy_on(separable_data(16, 1)), config)
    return result, {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_same_seed_same_run():
    first, weights_1 = _run(seed=3)
    second, weights_2 = _run(seed=3)
    assert [r.metrics for r in first.history] == [r.metrics for r in second.history]
    assert all(torch.equal(weights_1[n], weights_2[n]) for n in weights_1)
    _, weights_3 = _run(seed=4)
    assert not all(torch.equal(weights_1[n], weights_3[n]) for n in weights_1)


def test_nan_loss_stops_with_clear_error(tmp_path):
    model = classifier()
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = model(**batch).loss
        return loss * float("nan") if calls["n"] == 3 else loss

    recorder = Recorder()
    log = tmp_path / "log.jsonl"
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 3"):
        train(
            model,
            loader(separable_data(64)),
            None,
            TrainConfig(lr=1e-3, quiet=True),
            callbacks=[recorder, JsonlLogger(log, every=1)],
            loss_fn=loss_fn,
        )
    assert recorder.events[-1] == "error:NonFiniteLossError" and len(recorder.losses) == 2
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[-1]["event"] == "error" and "nan" in lines[-1]["error"]
    assert not any(line["event"] == "train_end" for line in lines)


def test_evaluation_schedule_and_best_tracking(tmp_path):
    values = iter([0.5, 0.7, 0.6, float("nan"), 0.65, 0.4])
    recorder = Recorder()
    log = tmp_path / "log.jsonl"
    config = TrainConfig(lr=1e-3, epochs=2, eval_every=3, quiet=True)  # 4 steps per epoch
    result = train(
        classifier(),
        loader(separable_data(64)),
        lambda model, accelerator: {"score": next(values)},
        config,
        callbacks=[recorder, JsonlLogger(log, every=2)],
    )
    # Steps 3, 4 (epoch end), 6, 8 (epoch end = final); no duplicate evaluation at step 8.
    assert [r.step for r in result.history] == [3, 4, 6, 8]
    assert result.best.step == 4 and result.best.metrics == {"score": 0.7} and result.main_metric == "score"
    assert math.isnan(result.history[3].metrics["score"]) and result.final.step == 8
    assert [e[1] for e in recorder.evals] == [True, True, False, False]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["event"] for line in lines].count("eval") == 4
    assert [line["step"] for line in lines if line["event"] == "train"] == [2, 4, 6, 8]
    assert lines[0]["event"] == "train_begin" and lines[-1]["event"] == "train_end"


def test_max_steps_evaluates_the_final_model():
    config = TrainConfig(lr=1e-3, epochs=3, max_steps=5, quiet=True)
    result = train(classifier(), loader(separable_data(64)), lambda m, a: {"x": 1.0}, config)
    assert result.steps == 5 and [r.step for r in result.history] == [4, 5]


def test_warmup_then_linear_decay_and_no_decay_groups():
    model = classifier()
    groups = parameter_groups(model, 0.01)
    no_decay = {id(p) for p in groups[1]["params"]}
    for name, param in model.named_parameters():
        expect = name.endswith("bias") or "LayerNorm" in name
        assert (id(param) in no_decay) == expect, name
    recorder = Recorder()
    config = TrainConfig(lr=1e-3, epochs=1, warmup_ratio=0.25, quiet=True)
    train(model, loader(separable_data(128)), None, config, callbacks=[recorder])
    # 8 steps, 2 of warm-up: lr after step k is 1e-3 * k/2 for k <= 2, then decays linearly to 0.
    assert recorder.lrs == pytest.approx(
        [5e-4, 1e-3, 1e-3 * 5 / 6, 1e-3 * 4 / 6, 1e-3 * 3 / 6, 1e-3 * 2 / 6, 1e-3 / 6, 0.0]
    )


def test_fused_adamw_makes_the_per_tensor_update():
    # The loop uses torch's fused AdamW (several times faster on CPU); it must do the same update
    # as the reference per-tensor AdamW, with the same groups (no decay on biases and LayerNorm).
    fused_model, reference_model = classifier(), classifier()
    config = TrainConfig(lr=1e-3, weight_decay=0.1)
    fused = make_optimizer(fused_model, config)
    assert fused.defaults["fused"] is True
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    reference = torch.optim.AdamW(parameter_groups(reference_model, 0.1), lr=1e-3, foreach=False)
    batch = {k: torch.stack([d[k] for d in separable_data(16)]) for k in ("input_ids", "labels")}
    for model, optimizer in ((fused_model, fused), (reference_model, reference)):
        for _ in range(3):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    start = dict(classifier().named_parameters())
    trained = dict(fused_model.named_parameters())
    for name, value in reference_model.named_parameters():
        assert not torch.equal(value, start[name]), f"{name} did not move"
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6)


def test_bad_config_is_a_clear_error():
    from ticketlab.errors import TicketlabError

    with pytest.raises(TicketlabError, match="warm-up ratio"):
        train(classifier(), loader(separable_data(16)), None, TrainConfig(warmup_ratio=1.5))


def test_bf16_mixed_precision_keeps_the_mask():
    """Mixed precision (bf16 autocast, here on the CPU) trains fp32 weights and holds the mask."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ticketlab.pruning import prune

    AcceleratorState._reset_state(True)  # the accelerator state is process-wide: start a fresh one
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        model = classifier()
        mask = prune(model, "random", 0.5, seed=0)
        config = TrainConfig(lr=1e-2, epochs=2, quiet=True)
        result = train(
            model,
            loader(separable_data(64)),
            accuracy_on(separable_data(16, 1)),
            config,
            accelerator=accelerator,
            callbacks=[MaskEnforcement(mask=mask)],
        )
        precision = accelerator.mixed_precision
    finally:
        AcceleratorState._reset_state(True)
    assert precision == "bf16" and result.steps == 8
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(torch.count_nonzero(params["bert." + n].detach()[~b]) == 0 for n, b in mask.tensors.items())


def test_same_updates_as_a_plain_pytorch_loop():
    """The loop is AdamW + linear warm-up/decay + clipping and nothing else: step for step it
    gives the weights of a hand-written reference loop (same data order, same dropout seed)."""
    import copy

    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    model = classifier()
    reference = copy.deepcopy(model)
    data = separable_data(48)
    config = TrainConfig(
        lr=3e-3, epochs=2, warmup_ratio=0.2, weight_decay=0.05, max_grad_norm=0.5, seed=7, quiet=True
    )
    train(model, DataLoader(data, batch_size=16), None, config)

    set_seed(7)
    decay = [p for p in reference.parameters() if p.ndim >= 2]
    no_decay = [p for p in reference.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=3e-3
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, 6)  # ceil(0.2 * 6) warm-up steps of 6
    reference.train()
    for _ in range(2):
        for batch in DataLoader(data, batch_size=16):
            reference(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6, msg=name)
