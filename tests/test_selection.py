"""Magnitude and random selection against independent references."""

import pytest
import torch
import torch.nn.utils.prune as torch_prune

from ticketlab.errors import TicketlabError
from ticketlab.models import EncoderAdapter
from ticketlab.pruning import lowest_k_mask, num_to_prune, prune, selection


def test_global_omp_equals_torch_global_unstructured(bert):
    adapter = EncoderAdapter(bert)
    mask = prune(bert, "omp", 0.6, scope="encoder", scheme="global")
    modules = [(adapter.base.get_submodule(n.rsplit(".", 1)[0]), "weight") for n in mask.tensors]
    total = sum(m.weight.numel() for m, _ in modules)
    torch_prune.global_unstructured(
        modules, pruning_method=torch_prune.L1Unstructured, amount=num_to_prune(total, 0.6)
    )
    for (module, _), name in zip(modules, mask.tensors):
        assert torch.equal(module.weight_mask.bool(), mask.tensors[name]), name
    assert mask.num_pruned() == int(total * 0.6)


def test_per_matrix_omp_equals_kthvalue_reference(bert):
    mask = prune(bert, "omp", 0.37, scheme="per-matrix")
    adapter = EncoderAdapter(bert)
    for name, bits in mask.tensors.items():
        weight = adapter.parameter(name).detach().abs().flatten()
        k = int(weight.numel() * 0.37)
        threshold = torch.kthvalue(weight, k).values
        assert torch.equal(bits.flatten(), weight > threshold), name
        assert int((~bits).sum()) == k


def test_embedding_scope_counts_the_word_embeddings(bert):
    mask = prune(bert, "omp", 0.5, scope="encoder+embeddings", scheme="per-matrix")
    assert "embeddings.word_embeddings.weight" in mask.tensors
    emb = mask.tensors["embeddings.word_embeddings.weight"]
    assert int((~emb).sum()) == emb.numel() // 2


def test_ties_are_broken_first_come_first_pruned():
    scores = {"a": torch.zeros(3, 3), "b": torch.zeros(4)}
    keep = lowest_k_mask(scores, 0.5, "global")  # k = floor(13 * 0.5) = 6
    assert keep["a"].flatten().tolist() == [False] * 6 + [True] * 3
    assert keep["b"].all()


def test_bracketed_threshold_matches_exact_selection(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    scores = {f"m{i}": torch.randn(300, 200, generator=generator).abs() for i in range(5)}
    scores["m0"][:10, :10] = 0.25  # ties inside the bracket
    monkeypatch.setattr(selection, "_BRACKET_MIN_SIZE", 1 << 30)  # the reference: one kthvalue
    exact = lowest_k_mask(scores, 0.41, "global")
    monkeypatch.setattr(selection, "_BRACKET_MIN_SIZE", 1000)
    monkeypatch.setattr(selection, "_SAMPLE_SIZE", 4096)
    assert all(torch.equal(exact[n], b) for n, b in lowest_k_mask(scores, 0.41, "global").items())
    monkeypatch.setattr(selection, "_BRACKET_MARGIN", 0.0)  # forces the bracket to miss: fallback
    assert all(torch.equal(exact[n], b) for n, b in lowest_k_mask(scores, 0.41, "global").items())


@pytest.mark.parametrize("scheme", ["global", "per-matrix"])
def test_random_masks_have_exact_counts_and_follow_the_seed(bert, scheme):
    a = prune(bert, "random", 0.7, scheme=scheme, seed=1)
    b = prune(bert, "random", 0.7, scheme=scheme, seed=1)
    c = prune(bert, "random", 0.7, scheme=scheme, seed=2)
    total = a.num_weights()
    assert a == b and a != c
    if scheme == "global":
        assert a.num_pruned() == int(total * 0.7)
    else:
        for bits in a.tensors.values():
            assert int((~bits).sum()) == int(bits.numel() * 0.7)


def test_matched_random_copies_the_reference_counts_per_matrix(bert):
    reference = prune(bert, "omp", 0.8, scheme="global")
    matched = prune(bert, "random", 0.0, seed=3, reference=reference)
    for name, bits in reference.tensors.items():
        assert int((~matched.tensors[name]).sum()) == int((~bits).sum())
    assert matched != reference
    assert matched.provenance.method_params["variant"] == "matched"


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_impossible_sparsity_is_refused(bert, bad):
    with pytest.raises(TicketlabError, match="sparsity"):
        prune(bert, "omp", bad)


def test_unknown_method_and_scheme_are_refused(bert):
    with pytest.raises(TicketlabError, match="unknown pruning method"):
        prune(bert, "oracle", 0.5)
    with pytest.raises(TicketlabError, match="unknown scheme"):
        prune(bert, "omp", 0.5, scheme="per-row")


def test_nested_magnitude_contains_the_previous_level(bert):
    first = prune(bert, "omp", 0.3)
    with torch.no_grad():  # perturb weights as training would, then prune further within the first mask
        for p in EncoderAdapter(bert).prunable_weights().values():
            p.add_(torch.randn_like(p) * 0.05)
    second = prune(bert, "omp", 0.6, within=first)
    assert second.num_pruned() == int(second.num_weights() * 0.6)
    assert (first - second).num_kept() == first.num_kept() - second.num_kept()  # second is a subset
    assert ((second - first).num_kept()) == 0
