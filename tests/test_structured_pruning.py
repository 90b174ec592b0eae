import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks import StructuredMask
from ticketlab.pruning.structured import (
    ffn_layers_for_level,
    good_random_bad,
    iterative_step,
    nested_structured_masks,
    structured_levels,
    structured_mask_from_scores,
)

L, H = 12, 12  # BERT-base sized score tables


def _scores(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(L, H, generator=generator), torch.rand(L, generator=generator)


def test_levels_pair_heads_with_round_10p_ffn_layers_of_12():
    levels = structured_levels(12, 12)
    assert [lv.num_heads_pruned for lv in levels] == [14, 28, 43, 57, 72, 86, 100, 115]
    assert [lv.num_ffn_pruned for lv in levels] == [1, 2, 3, 4, 5, 6, 7, 8]
    # Scaled to other depths with halves rounded up (6 layers: round(5 p)).
    assert [ffn_layers_for_level(p, 6) for p in (0.1, 0.3, 0.5, 0.8)] == [1, 2, 3, 4]
    assert ffn_layers_for_level(0.5, 12, ffn_ratio=0.0) == 0
    with pytest.raises(TicketlabError):
        structured_levels(2, 4, [0.9])  # would empty a layer


@pytest.mark.parametrize("kind", ["winning", "losing", "random"])
def test_nested_masks_have_exact_counts_one_head_per_layer_and_nest(kind):
    heads, ffn = _scores()
    masks = nested_structured_masks(heads, ffn, kind=kind, seed=3)
    levels = structured_levels(L, H)
    previous = None
    for level, (fraction, mask) in zip(levels, masks.items()):
        assert fraction == level.head_fraction
        assert int((~mask.heads).sum()) == level.num_heads_pruned
        assert int((~mask.ffn).sum()) == level.num_ffn_pruned
        assert (mask.heads.sum(dim=1) >= 1).all()
        if previous is not None:  # nested: a higher level keeps a subset
            assert not (mask.heads & ~previous.heads).any() and not (mask.ffn & ~previous.ffn).any()
        previous = mask


def test_winning_prunes_the_least_and_losing_the_most_important():
    heads, ffn = _scores()
    win = structured_mask_from_scores(heads, ffn, 20, 3, kind="winning", min_heads_per_layer=0)
    lose = structured_mask_from_scores(heads, ffn, 20, 3, kind="losing", min_heads_per_layer=0)
    order = torch.argsort(heads.reshape(-1))
    assert set(torch.nonzero(~win.heads.reshape(-1)).flatten().tolist()) == set(order[:20].tolist())
    assert set(torch.nonzero(~lose.heads.reshape(-1)).flatten().tolist()) == set(order[-20:].tolist())
    assert set(torch.nonzero(~win.ffn).flatten().tolist()) == set(torch.argsort(ffn)[:3].tolist())
    assert set(torch.nonzero(~lose.ffn).flatten().tolist()) == set(torch.argsort(ffn)[-3:].tolist())


def test_one_head_per_layer_survives_even_when_its_layer_is_least_important():
    heads = torch.rand(4, 3)
    heads[2] = -1.0  # layer 2 is the least important everywhere
    mask = structured_mask_from_scores(heads, torch.rand(4), 6, 0)
    assert int(mask.heads[2].sum()) == 1 and int((~mask.heads).sum()) == 6
    with pytest.raises(TicketlabError, match="cannot prune"):
        structured_mask_from_scores(heads, torch.rand(4), 9, 0)


def test_random_masks_are_seeded_exact_and_without_duplicates():
    heads, ffn = _scores()
    a = structured_mask_from_scores(heads, ffn, 72, 5, kind="random", seed=1)
    b = structured_mask_from_scores(heads, ffn, 72, 5, kind="random", seed=1)
    c = structured_mask_from_scores(heads, ffn, 72, 5, kind="random", seed=2)
    assert a == b and a != c
    # Exact counts prove no unit was drawn twice (drawing with replacement would prune fewer).
    for mask in (a, c):
        assert int((~mask.heads).sum()) == 72 and int((~mask.ffn).sum()) == 5
    # Random ignores the scores.
    assert structured_mask_from_scores(-heads, ffn, 72, 5, kind="random", seed=1) == a


def test_iterative_step_prunes_14_of_144_and_one_ffn_among_survivors():
    heads, ffn = _scores()
    mask = StructuredMask(torch.ones(L, H, dtype=torch.bool), torch.ones(L, dtype=torch.bool))
    history = []
    for step in range(3):
        heads, ffn = _scores(step)  # fresh scores every step
        new = iterative_step(mask, heads, ffn)
        assert not (new.heads & ~mask.heads).any()  # pruned stay pruned
        assert int((~new.heads).sum()) == 14 * (step + 1) and int((~new.ffn).sum()) == step + 1
        history.append(new)
        mask = new
    small = StructuredMask(
        torch.tensor([[True, True, False], [True, False, False]]), torch.tensor([True, False])
    )
    last = iterative_step(small, torch.rand(2, 3), torch.rand(2))  # only one head can still go
    assert int(last.heads.sum()) == 2 and int(last.ffn.sum()) == 0


def test_good_random_bad_have_equal_sizes_and_bad_holds_the_pruned_units():
    heads, ffn = _scores()
    good = structured_mask_from_scores(heads, ffn, 40, 3)  # more survive (104) than were pruned (40)
    sets = good_random_bad(good, seed=4)
    for mask in sets.values():
        assert int(mask.heads.sum()) == 104 and int(mask.ffn.sum()) == 9
    assert not (~good.heads & ~sets["bad"].heads).any()  # every pruned head is in bad
    assert not (~good.ffn & ~sets["bad"].ffn).any()
    assert sets["random"] != good and good_random_bad(good, seed=4)["random"] == sets["random"]

    heavy = structured_mask_from_scores(heads, ffn, 100, 8)  # 44 survive, 100 pruned
    bad = good_random_bad(heavy, seed=0)["bad"]
    assert int(bad.heads.sum()) == 44 and not (bad.heads & heavy.heads).any()  # drawn from the pruned only


def test_kept_weight_fraction_matches_the_expanded_mask(bert):
    from ticketlab.models import EncoderAdapter
    from ticketlab.pruning.structured import kept_weight_fraction

    adapter = EncoderAdapter(bert)
    layer_mask = StructuredMask(
        torch.tensor([[True, False, True, False], [False, True, True, True]]), torch.tensor([False, True])
    )
    neuron_mask = StructuredMask(
        layer_mask.heads, torch.rand(2, 64, generator=torch.Generator().manual_seed(0)) > 0.3
    )
    for mask in (layer_mask, neuron_mask):
        for scope in ("encoder", "encoder+embeddings"):
            expanded = mask.to_unstructured(adapter, scope)
            assert kept_weight_fraction(mask, adapter, scope) == pytest.approx(
                1 - expanded.sparsity, abs=1e-12
            )


def test_stopping_rule_keeps_the_step_before_the_first_drop_below_90_percent():
    from ticketlab.pruning.structured import last_step_above

    assert last_step_above([0.85, 0.84, 0.77, 0.80], reference=0.86) == 1  # 0.77 < 0.774
    assert last_step_above([0.85, 0.84], reference=0.86) == 1
    assert last_step_above([0.70], reference=0.86) == -1


def test_good_random_bad_of_an_unstructured_magnitude_mask(bert):
    from ticketlab.pruning import prune

    good = prune(bert, "omp", 0.3)  # 70% survive, so bad = all pruned + random survivors
    sets = good_random_bad(good, seed=0)
    kept = good.num_kept()
    for name in ("random", "bad"):
        mask = sets[name]
        assert mask.names == good.names and mask.num_kept() == kept
        assert mask.provenance.method.startswith(f"{name}-of:")
    for name, bits in good.tensors.items():
        assert not (~bits & ~sets["bad"].tensors[name]).any()  # every pruned weight is in bad
    assert sets["random"] != good
    heavy = prune(bert, "omp", 0.8)
    bad = good_random_bad(heavy, seed=1)["bad"]
    assert bad.num_kept() == heavy.num_kept() and (bad & heavy).num_kept() == 0
