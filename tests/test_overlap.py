import torch

from ticketlab.analysis import expected_random_jaccard, pairwise_overlap
from ticketlab.pruning import prune


def test_expected_random_jaccard_matches_monte_carlo(bert):
    reference_a = prune(bert, "omp", 0.3)
    reference_b = prune(bert, "omp", 0.8, scheme="per-matrix")
    expected = expected_random_jaccard(reference_a, reference_b)
    draws = [
        prune(bert, "random", 0, seed=s, reference=reference_a).jaccard(
            prune(bert, "random", 0, seed=100 + s, reference=reference_b)
        )
        for s in range(5)
    ]
    assert abs(sum(draws) / len(draws) - expected) < 0.005


def test_identical_masks_overlap_fully_and_nested_masks_exceed_chance(bert):
    a = prune(bert, "omp", 0.5)
    b = prune(bert, "omp", 0.8)
    pairs = pairwise_overlap({"a": a, "a2": a, "b": b})
    by_pair = {(p.a, p.b): p for p in pairs}
    assert by_pair[("a", "a2")].jaccard == 1.0
    nested = by_pair[("a", "b")]
    assert abs(nested.jaccard - b.num_kept() / a.num_kept()) < 1e-12  # b is inside a
    assert nested.jaccard > nested.jaccard_random
    assert torch.isclose(
        torch.tensor(nested.ratio_to_random), torch.tensor(nested.jaccard / nested.jaccard_random)
    )
