"""BertAdam against hand-computed steps, the resumed linear schedule, and what it changes in TAMT."""

import math

import pytest
import torch
from torch import nn

from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from ticketlab.errors import TicketlabError
from ticketlab.training.bertadam import BertAdam
from ticketlab.training.loop import Callback, TrainConfig, train


def reference_steps(p, grads, lrs, wd, max_norm=1.0, b1=0.9, b2=0.999, eps=1e-6):
    """BertAdam by hand, on Python floats: clip the tensor's gradient, raw moments, no bias correction."""
    p, m, v = list(p), [0.0] * len(p), [0.0] * len(p)
    for g, lr in zip(grads, lrs):
        norm = math.sqrt(sum(x * x for x in g))
        if norm > max_norm:
            g = [x * max_norm / (norm + 1e-6) for x in g]  # torch's clip_grad_norm_ coefficient
        for i, x in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * x
            v[i] = b2 * v[i] + (1 - b2) * x * x
            p[i] -= lr * (m[i] / (math.sqrt(v[i]) + eps) + wd * p[i])
    return p


def test_three_steps_match_the_hand_computed_update_with_clipping_and_weight_decay():
    big = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64))
    tiny = nn.Parameter(torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64))
    optimizer = BertAdam(
        [{"params": [big], "weight_decay": 0.1}, {"params": [tiny], "weight_decay": 0.0}], lr=0.01
    )
    # big: norm 5, 2.5, 0.5 (clipped, clipped, not); tiny: TAMT-sized gradients, never clipped.
    big_grads = [[3.0, 4.0, 0.0, 0.0], [0.0, -1.5, 2.0, 0.0], [0.3, 0.0, 0.0, -0.4]]
    tiny_grads = [[1e-7, -2e-7, 5e-7], [1e-7, -2e-7, 5e-7], [2e-7, -1e-7, 5e-7]]
    lrs = [0.01, 0.0075, 0.005]  # a schedule sets the group's lr between steps
    for g_big, g_tiny, lr in zip(big_grads, tiny_grads, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        big.grad = torch.tensor(g_big, dtype=torch.float64).reshape(2, 2)
        tiny.grad = torch.tensor(g_tiny, dtype=torch.float64)
        optimizer.step()
    expected_big = reference_steps([1.0, -2.0, 0.5, 0.0], big_grads, lrs, wd=0.1)
    expected_tiny = reference_steps([0.3, -0.1, 0.2], tiny_grads, lrs, wd=0.0)
    torch.testing.assert_close(big.detach().reshape(-1), torch.tensor(expected_big, dtype=torch.float64))
    torch.testing.assert_close(tiny.detach(), torch.tensor(expected_tiny, dtype=torch.float64))
    assert int(optimizer.state[big]["step"]) == 3


def test_first_step_in_numbers_and_tiny_gradients_move_by_their_size_not_their_sign():
    p = nn.Parameter(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    optimizer = BertAdam([p], lr=0.01, weight_decay=0.1)
    p.grad = torch.tensor([0.6, 1e-6, 1e-7], dtype=torch.float64)  # norm 0.6: not clipped
    optimizer.step()
    # by hand: m = 0.1 g, sqrt(v) = sqrt(0.001) |g|; p -= 0.01 * (m / (sqrt(v) + 1e-6) + 0.1 * p)
    m = [0.06, 1e-7, 1e-8]
    root_v = [math.sqrt(0.001) * g for g in (0.6, 1e-6, 1e-7)]
    expected = [1.0 - 0.01 * (mi / (ri + 1e-6) + 0.1) for mi, ri in zip(m, root_v)]
    assert expected[0] == pytest.approx(1.0 - 0.01 * (3.16211 + 0.1), abs=1e-7)
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64))
    moved = (1.0 - 0.001) - p.detach()  # the motion apart from the weight decay
    # a gradient 10x smaller moves about 10x less (AdamW would move all three by about the same)
    assert 5 < float(moved[1] / moved[2]) < 15 and float(moved[0] / moved[1]) > 30


def test_bad_settings_are_refused():
    with pytest.raises(TicketlabError, match="epsilon"):
        BertAdam([nn.Parameter(torch.zeros(1))], eps=-1.0)


class Rates(Callback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, state):
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def _rates(steps, schedule_start, warmup_ratio=0.0):
    model = nn.Linear(3, 1)
    rates = Rates()
    batches = [{"x": torch.ones(2, 3)}] * steps
    config = TrainConfig(
        lr=0.1,
        max_steps=steps,
        max_grad_norm=None,
        schedule_start=schedule_start,
        warmup_ratio=warmup_ratio,
        quiet=True,
    )
    optimizer = BertAdam(model.parameters(), lr=0.1)
    train(
        model,
        batches,
        None,
        config,
        callbacks=[rates],
        loss_fn=lambda m, b: m(b["x"]).sum(),
        optimizer=optimizer,
    )
    return rates.lrs


def test_a_resumed_linear_schedule_continues_the_uninterrupted_one():
    whole = _rates(5, 0)
    assert whole == pytest.approx([0.08, 0.06, 0.04, 0.02, 0.0])  # the original's 1 - step/total
    assert _rates(3, 2) == pytest.approx(whole[2:])
    warm = _rates(10, 0, warmup_ratio=0.2)
    assert _rates(6, 4, warmup_ratio=0.2) == pytest.approx(warm[4:])


def test_bertadam_swaps_far_fewer_kept_weights_than_adamw_at_the_same_lr(tmp_path, monkeypatch):
    """The bug: AdamW's epsilon 1e-8 makes TAMT sign descent, so the 2c / 0 scores cross en masse."""
    from tests.pretrain_fixtures import tiny_pretraining_setup
    from ticketlab.experiments.tamt import TamtSpec, run_tamt
    from ticketlab.masks import load_mask, read_header
    from ticketlab.models import load_encoder
    from ticketlab.pruning import prune

    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    model_dir, text = tiny_pretraining_setup(tmp_path, paragraphs=20)
    omp = prune(load_encoder(str(model_dir)), "omp", 0.5, scope="encoder+embeddings", scheme="per-matrix")
    kept = sum(int(bits.sum()) for bits in omp.tensors.values())
    swapped = {}
    for optimizer in ("adamw", "bertadam"):
        spec = TamtSpec(
            model=str(model_dir),
            objective="kd",
            sparsity=0.5,
            text=str(text),
            steps=20,
            batch_size=4,
            max_length=16,
            lr=1e-3,
            dropout=False,
            optimizer=optimizer,
        )
        results = run_tamt(spec, tmp_path / optimizer, progress=False)
        mask = load_mask(results["mask"])
        swapped[optimizer] = sum(int((omp.tensors[n] & ~mask.tensors[n]).sum()) for n in omp.tensors) / kept
        record = read_header(results["mask"])["provenance"]["method_params"]["optimizer"]
        assert record["name"] == optimizer and record["lr"] == 1e-3
        if optimizer == "bertadam":
            assert (record["eps"], record["max_grad_norm"], record["bias_correction"]) == (1e-6, 1.0, False)
            assert (record["lr_schedule"], record["schedule_steps"]) == ("linear", 20)
        else:
            assert (record["eps"], record["lr_schedule"], record["bias_correction"]) == (
                1e-8,
                "constant",
                True,
            )
    # measured: adamw 15.5% of the kept weights swapped, bertadam 4.1%
    assert swapped["adamw"] > 0.10 and swapped["bertadam"] < 0.5 * swapped["adamw"], swapped
    # A finished run is never overwritten by other settings (an old adamw mask, a new default).
    with pytest.raises(
        TicketlabError, match="finished TAMT run of other settings \\(optimizer 'adamw', not 'bertadam'"
    ):
        run_tamt(spec, tmp_path / "adamw", progress=False)


def test_the_one_temporary_update_is_bit_for_bit_the_expression():
    # BertAdam forms m / (sqrt(v) + eps) in one temporary (speed); the bits must be those of the
    # plain expression it replaced, step after step, with weight decay and clipping at work.
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(300, 70, generator=generator)
    grads = [torch.randn(300, 70, generator=generator) * scale for scale in (1e-6, 1e-3, 0.5, 3.0)]
    param = nn.Parameter(start.clone())
    optimizer = BertAdam([param], lr=1e-2, weight_decay=0.01)
    p, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        holder = nn.Parameter(torch.zeros_like(start))
        holder.grad = grad.clone()
        torch.nn.utils.clip_grad_norm_([holder], 1.0, foreach=False)  # torch's per-tensor clipping
        g = holder.grad
        m.mul_(0.9).add_(g, alpha=0.1)
        v.mul_(0.999).addcmul_(g, g, value=0.001)
        update = m / (v.sqrt() + 1e-6)
        update.add_(p, alpha=0.01)
        p.add_(update, alpha=-1e-2)
        assert torch.equal(param.detach(), p)
