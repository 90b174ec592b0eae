"""The chunked, bracketed global selection against a stable-sort reference, ties included."""

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.pruning import lowest_k_mask, num_to_prune, selection


def stable_sort_reference(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Prune the k lowest by a stable sort of all scores in order: ties go first-come-first-pruned."""
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    k = num_to_prune(flat.numel(), sparsity)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    sizes = [s.numel() for s in scores.values()]
    return {n: b.reshape(s.shape) for (n, s), b in zip(scores.items(), torch.split(keep, sizes))}


def _tied_scores(seed: int) -> dict[str, torch.Tensor]:
    # Few distinct values, so the threshold is tied many times over and across chunk boundaries.
    generator = torch.Generator().manual_seed(seed)
    shapes = [(70, 50), (33,), (40, 61), (9, 9, 9)]
    return {
        f"m{i}": torch.randint(-6, 7, shape, generator=generator).float() / 4
        for i, shape in enumerate(shapes)
    }


@pytest.fixture
def tiny_chunks_and_bracket(monkeypatch):
    monkeypatch.setattr(selection, "_BRACKET_MIN_SIZE", 100)
    monkeypatch.setattr(selection, "_SAMPLE_SIZE", 512)
    monkeypatch.setattr(selection, "_CHUNK_SIZE", 97)


@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.77, 0.999])
@pytest.mark.parametrize("absolute", [False, True])
def test_bracketed_chunked_selection_equals_stable_sort(tiny_chunks_and_bracket, sparsity, absolute):
    for seed in range(3):
        scores = _tied_scores(seed)
        reference = stable_sort_reference(
            {n: s.abs() if absolute else s for n, s in scores.items()}, sparsity
        )
        found = lowest_k_mask(scores, sparsity, "global", absolute=absolute)
        for name in scores:
            assert torch.equal(found[name], reference[name]), (seed, name)


def test_exact_path_equals_stable_sort_with_ties():
    scores = _tied_scores(5)
    for sparsity in (0.3, 0.6):
        reference = stable_sort_reference(scores, sparsity)
        found = lowest_k_mask(scores, sparsity)
        assert all(torch.equal(found[n], reference[n]) for n in scores)


def test_per_matrix_with_absolute_equals_per_tensor_reference(tiny_chunks_and_bracket):
    scores = _tied_scores(7)
    found = lowest_k_mask(scores, 0.45, "per-matrix", absolute=True)
    for name, score in scores.items():
        reference = stable_sort_reference({name: score.abs()}, 0.45)[name]
        assert torch.equal(found[name], reference), name


def test_half_precision_scores_rank_like_their_float32_values(tiny_chunks_and_bracket):
    scores = {n: s.half() for n, s in _tied_scores(2).items()}
    reference = stable_sort_reference({n: s.float().abs() for n, s in scores.items()}, 0.6)
    found = lowest_k_mask(scores, 0.6, absolute=True)
    assert all(torch.equal(found[n], reference[n]) for n in scores)


@pytest.mark.parametrize("bracket", [False, True])
def test_nan_is_refused_naming_the_matrix(monkeypatch, bracket):
    if bracket:
        monkeypatch.setattr(selection, "_BRACKET_MIN_SIZE", 100)
        monkeypatch.setattr(selection, "_CHUNK_SIZE", 97)
    scores = _tied_scores(0)
    scores["m2"][3, 4] = float("nan")
    with pytest.raises(TicketlabError, match="'m2' contain NaN"):
        lowest_k_mask(scores, 0.5)


def test_infinities_of_both_signs_are_not_mistaken_for_nan(tiny_chunks_and_bracket):
    scores = _tied_scores(1)
    scores["m0"][0, 0], scores["m0"][0, 1] = float("inf"), float("-inf")
    found = lowest_k_mask(scores, 0.5)
    assert not found["m0"][0, 1] and found["m0"][0, 0]


def test_per_matrix_brackets_each_matrix_at_default_sizes(monkeypatch):
    # Matrices above _BRACKET_MIN_SIZE are selected by the sampled bracket, one per matrix, not by
    # a kthvalue each: the fallback must not run, and the bits equal the stable-sort reference.
    def no_fallback(*_):
        raise AssertionError("the bracket missed and the exact fallback ran")

    monkeypatch.setattr(selection, "_prune_lowest_exact", no_fallback)
    generator = torch.Generator().manual_seed(3)
    scores = {
        "a": torch.randn(256, 512, generator=generator),
        "b": torch.randint(-50, 51, (300, 400), generator=generator).float() / 7,  # heavy ties
    }
    assert min(s.numel() for s in scores.values()) >= selection._BRACKET_MIN_SIZE
    for sparsity in (0.1, 0.7, 0.95):
        found = lowest_k_mask(scores, sparsity, "per-matrix", absolute=True)
        for name, score in scores.items():
            reference = stable_sort_reference({name: score.abs()}, sparsity)[name]
            assert torch.equal(found[name], reference), (name, sparsity)
