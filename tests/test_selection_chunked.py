"""The chunked, bracketed global selection against a stable-sort reference, ties included."""

import numpy as np
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


def _tamt_like_scores(seed: int, moved_rows: int) -> dict[str, torch.Tensor]:
    # TAMT's scores: 2c where the initial mask keeps, 0 where it prunes; only some rows move
    # (the word-embedding rows of tokens in the batch), the rest keep both values exactly.
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for i, shape in enumerate([(60, 40), (50, 70)]):
        score = (torch.rand(shape, generator=generator) < 0.5).float() * 0.02
        score[:moved_rows] += 1e-3 * torch.randn(score[:moved_rows].shape, generator=generator)
        scores[f"m{i}"] = score
    return scores


@pytest.mark.parametrize("moved_rows", [0, 1, 5, 30])
@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.51, 0.8])
@pytest.mark.parametrize("scheme", ["global", "per-matrix"])
def test_huge_tie_groups_at_either_end_of_the_bracket(monkeypatch, moved_rows, sparsity, scheme):
    # The bracket ends exactly on a tied value (or collapses onto one): the ties are counted per
    # chunk, never collected, and the bits still equal the stable-sort reference; the exact
    # fallback must not run for these (a sample of every score: its margin is then ample).
    monkeypatch.setattr(selection, "_BRACKET_MIN_SIZE", 100)
    monkeypatch.setattr(selection, "_SAMPLE_DIVISOR", 1)
    monkeypatch.setattr(selection, "_CHUNK_SIZE", 97)

    def no_fallback(*_):
        raise AssertionError("the bracket missed and the exact fallback ran")

    monkeypatch.setattr(selection, "_prune_lowest_exact", no_fallback)
    for seed in range(3):
        scores = _tamt_like_scores(seed, moved_rows)
        found = lowest_k_mask(scores, sparsity, scheme)
        groups = [scores] if scheme == "global" else [{n: s} for n, s in scores.items()]
        for group in groups:
            reference = stable_sort_reference(group, sparsity)
            for name in group:
                assert torch.equal(found[name], reference[name]), (seed, name)
                assert int((~found[name]).sum()) == num_to_prune(group[name].numel(), sparsity) or (
                    scheme == "global"
                )


def test_each_tie_resolution_runs_and_agrees(monkeypatch):
    # The bracket is forced so that the threshold is its lower end, its upper end (apart or
    # collapsed), or strictly inside: each resolution runs and gives the stable-sort reference's
    # bits; a bracket that holds no threshold falls back to the exact path, with the same bits.
    monkeypatch.setattr(selection, "_BRACKET_MIN_SIZE", 100)
    monkeypatch.setattr(selection, "_CHUNK_SIZE", 97)
    taken = []
    for name in ("_prune_ties_at_lo", "_prune_ties_at_hi", "_prune_lowest_exact"):
        original = getattr(selection, name)

        def spy(*args, original=original, name=name):
            taken.append(name)
            return original(*args)

        monkeypatch.setattr(selection, name, spy)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(4000, generator=generator)
    zeros_ones = torch.cat([torch.zeros(2000), torch.ones(1000), torch.full((1000,), 2.0)])[order]
    cases = [  # (sparsity, bracket, the resolution expected)
        (0.3, (0.0, 1.0), ["_prune_ties_at_lo"]),  # k = 1200 of 2000 zeros
        (0.5, (0.0, 2.0), ["_prune_ties_at_lo"]),  # k = 2000: every zero, no tie kept
        (0.6, (0.0, 2.0), []),  # the ones lie strictly inside: found among the collected
        (0.6, (1.0, 1.0), ["_prune_ties_at_hi"]),  # collapsed onto the tied 1
        (0.9, (0.0, 2.0), ["_prune_ties_at_hi"]),  # k = 3600: 600 of the 1000 twos
        (0.9, (1.0, 1.0), ["_prune_ties_at_hi", "_prune_lowest_exact"]),  # missed: above
        (0.3, (1.0, 2.0), ["_prune_ties_at_lo", "_prune_lowest_exact"]),  # missed: below
    ]
    for sparsity, bracket, expected in cases:
        taken.clear()
        monkeypatch.setattr(selection, "_sample_bracket", lambda *_, b=bracket: tuple(map(np.float32, b)))
        for scores in ({"m": zeros_ones}, {"a": zeros_ones[:1500], "b": zeros_ones[1500:]}):
            found = lowest_k_mask(scores, sparsity)
            reference = stable_sort_reference(scores, sparsity)
            assert all(torch.equal(found[n], reference[n]) for n in scores), (sparsity, bracket)
            assert taken == expected, (sparsity, bracket, taken)
            taken.clear()


@pytest.mark.parametrize("scheme", ["global", "per-matrix"])
def test_threads_change_nothing(tiny_chunks_and_bracket, scheme):
    # Tensors are scanned (global) or selected (per matrix) on torch.get_num_threads() threads:
    # one thread or two, the bits are the stable-sort reference's.
    scores = {**_tied_scores(4), **{f"t{n}": s for n, s in _tamt_like_scores(4, 3).items()}}
    threads = torch.get_num_threads()
    try:
        found = {}
        for count in (1, 2):
            torch.set_num_threads(count)
            found[count] = lowest_k_mask(scores, 0.6, scheme)
    finally:
        torch.set_num_threads(threads)
    groups = [scores] if scheme == "global" else [{n: s} for n, s in scores.items()]
    for group in groups:
        reference = stable_sort_reference(group, 0.6)
        for name in group:
            assert torch.equal(found[1][name], reference[name]) and torch.equal(
                found[2][name], reference[name]
            )
