"""Real-data tier: pre-training losses of MiniLM-L6 tickets on WikiText-2 (skipped without ../shared)."""

import pytest

from tests.conftest import shared_path
from ticketlab.experiments.pretrain_loss import PretrainLossSpec, run_pretrain_loss
from ticketlab.masks import save_mask
from ticketlab.models import load_encoder
from ticketlab.pruning import prune

pytestmark = pytest.mark.real_data


def test_minilm_kd_loss_grows_with_sparsity_and_mlm_is_not_available(tmp_path, monkeypatch):
    model_path = str(shared_path("models", "all-MiniLM-L6-v2"))
    text = str(shared_path("data", "wikitext-2", "valid.txt"))
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    model = load_encoder(model_path)
    results = {}
    for sparsity in (0.5, 0.9):
        mask = prune(
            model, "omp", sparsity, scope="encoder+embeddings", scheme="per-matrix", source_model=model_path
        )
        path = save_mask(mask, tmp_path / f"omp{sparsity}.safetensors")
        spec = PretrainLossSpec(model=model_path, mask=str(path), text=text, max_sequences=8)
        results[sparsity] = run_pretrain_loss(spec, progress=False)
    assert 0 < results[0.5]["kd_loss"] < results[0.9]["kd_loss"]
    assert results[0.5]["mlm_loss"] is None and "no MLM head" in results[0.5]["mlm_loss_reason"]
    assert results[0.5]["num_sequences"] == 8


def test_minilm_tamt_kd_runs_end_to_end_at_exact_sparsity(tmp_path, monkeypatch):
    from ticketlab.experiments.tamt import TamtSpec, run_tamt
    from ticketlab.masks import apply_mask, load_mask
    from ticketlab.pruning import num_to_prune

    model_path = str(shared_path("models", "all-MiniLM-L6-v2"))
    text = str(shared_path("data", "wikitext-2", "test.txt"))
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    spec = TamtSpec(
        model=model_path,
        objective="kd",
        sparsity=0.7,
        text=text,
        steps=2,
        batch_size=2,
        max_length=32,
        max_sequences=8,
    )
    results = run_tamt(spec, tmp_path / "tamt.safetensors", progress=False)
    mask = load_mask(results["mask"])
    assert "embeddings.word_embeddings.weight" in mask.tensors
    for bits in mask.tensors.values():
        assert int((~bits).sum()) == num_to_prune(bits.numel(), 0.7)
    apply_mask(load_encoder(model_path), mask)  # fingerprinted against the dense MiniLM
