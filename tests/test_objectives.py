"""MLM corruption statistics and seeding; distillation losses against hand computations."""

import pytest
import torch
import torch.nn.functional as F

from ticketlab.errors import TicketlabError
from ticketlab.training.objectives import MlmMasking, kd_loss, kd_token_losses, mlm_loss

SPECIALS = (0, 1, 2, 3, 4)  # pad, unk, cls, sep, mask
MASK_ID = 4


def _masking(**kw):
    return MlmMasking(mask_token_id=MASK_ID, vocab_size=1000, special_ids=SPECIALS, **kw)


def _batch(rows=200, length=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (rows, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[::3, -40:] = 0  # padding on a third of the rows
    return ids


def test_mlm_masking_statistics_on_a_big_batch():
    ids = _batch()
    corrupted, labels = _masking()(ids, seed=7, keys=range(len(ids)))
    candidates = ~torch.isin(ids, torch.tensor(SPECIALS))
    chosen = labels != -100
    assert not (chosen & ~candidates).any()  # specials and padding never targets
    assert torch.equal(labels[chosen], ids[chosen])
    assert (corrupted[~chosen] == ids[~chosen]).all()  # non-targets untouched
    rate = chosen.sum().item() / candidates.sum().item()
    assert rate == pytest.approx(0.15, abs=0.003)
    n = chosen.sum().item()
    masked = (corrupted[chosen] == MASK_ID).sum().item() / n
    unchanged = (corrupted[chosen] == ids[chosen]).sum().item() / n
    randomised = 1 - masked - unchanged
    assert masked == pytest.approx(0.8, abs=0.01)
    # a random draw equals the original with probability 1/1000: ~0.1 + 0.0001 unchanged
    assert unchanged == pytest.approx(0.1, abs=0.006) and randomised == pytest.approx(0.1, abs=0.006)


def test_mlm_masking_is_seeded_per_sequence():
    ids = _batch(rows=8, length=64)
    masking = _masking()
    a = masking(ids, seed=3, keys=range(8))
    b = masking(ids, seed=3, keys=range(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the same rows in other batches (other batch size, other order) get the same corruption
    halves = [masking(ids[i : i + 4], seed=3, keys=range(i, i + 4)) for i in (0, 4)]
    assert torch.equal(torch.cat([h[1] for h in halves]), a[1])
    other = masking(ids, seed=4, keys=range(8))
    assert not torch.equal(other[1], a[1])


def test_mlm_loss_is_the_mean_over_targets():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    expected = torch.stack(
        [
            F.cross_entropy(logits[0, 0:1], labels[0, 0:1]),
            F.cross_entropy(logits[0, 2:3], labels[0, 2:3]),
            F.cross_entropy(logits[1, 2:3], labels[1, 2:3]),
        ]
    ).mean()
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def _hidden(seed, layers=3, batch=2, length=4, width=3):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, width, generator=g) for _ in range(layers))


def test_kd_loss_zero_against_itself():
    h = _hidden(0)
    attention = torch.ones(2, 4)
    assert kd_loss(h, h, attention, "mse").item() == 0.0
    assert kd_loss(h, h, attention, "cosine").item() == pytest.approx(0.0, abs=1e-6)


def test_kd_mse_matches_a_hand_computation_and_skips_the_embedding_output():
    # batch 1, 2 tokens (the second is padding), width 2; embedding output + 2 layers
    zeros = torch.zeros(1, 2, 2)
    student = (
        torch.full((1, 2, 2), 100.0),
        torch.tensor([[[1.0, 2.0], [9.0, 9.0]]]),
        torch.tensor([[[0.0, 3.0], [5.0, 5.0]]]),
    )
    teacher = (zeros, torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))
    attention = torch.tensor([[1, 0]])
    # layer 1, token 0: ((1-0)^2 + (2-0)^2) / 2 = 2.5; layer 2: (0 + 4) / 2 = 2; mean over layers 2.25
    assert kd_loss(student, teacher, attention, "mse").item() == pytest.approx(2.25)
    # cosine: layer 1 vs a zero teacher is 1 - 0; layer 2: cos((0,3),(0,1)) = 1 -> 0; mean 0.5
    assert kd_loss(student, teacher, attention, "cosine").item() == pytest.approx(0.5)


def test_kd_loss_ignores_padding_positions():
    s, t = _hidden(1), _hidden(2)
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    changed = tuple(x.clone() for x in s)
    for x in changed:
        x[0, 3] += 50.0
        x[1, 2:] -= 20.0
    for kind in ("mse", "cosine"):
        assert kd_loss(s, t, attention, kind).item() == pytest.approx(
            kd_loss(changed, t, attention, kind).item()
        )
    # and it is the layer mean of per-layer token means over the 5 real tokens
    per_layer = [((a - b) ** 2).mean(-1)[attention.bool()].mean() for a, b in zip(s[1:], t[1:])]
    assert kd_loss(s, t, attention, "mse").item() == pytest.approx(
        torch.stack(per_layer).mean().item(), rel=1e-6
    )


def test_kd_rejects_unknown_kinds_and_mismatched_depths():
    h = _hidden(0)
    with pytest.raises(TicketlabError, match="unknown distillation loss"):
        kd_token_losses(h, h, "l1")
    with pytest.raises(TicketlabError, match="hidden states"):
        kd_token_losses(h, h[:2], "mse")
