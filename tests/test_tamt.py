"""TAMT: straight-through gradients, exact top-k at every step, frozen weights, learning, resuming."""

import json

import pytest
import torch
from transformers import BertForPreTraining

from tests.pretrain_fixtures import tiny_tokenizer, wikitext_like
from ticketlab.cli import main
from ticketlab.data.text import load_text_blocks
from ticketlab.errors import TicketlabError
from ticketlab.experiments.pretrain_loss import pretraining_losses
from ticketlab.experiments.tamt import TamtSpec, run_tamt
from ticketlab.masks import apply_mask, load_mask, read_header
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning import lowest_k_mask, num_to_prune, prune
from ticketlab.pruning.tamt import LearnedMask, keep_bits, keep_bits_on_device, masked_weight
from ticketlab.training.tamt import TamtObjective, tamt_optimizer, tamt_step


def test_straight_through_gradient_is_output_gradient_times_weight():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=g)
    score = torch.randn(3, 4, generator=g, requires_grad=True)
    keep = torch.rand(3, 4, generator=g) > 0.5
    x = torch.randn(5, 4, generator=g)
    upstream = torch.randn(5, 3, generator=g)
    effective = masked_weight(weight, score, keep)
    assert torch.equal(effective, weight * keep)
    (x @ effective.T * upstream).sum().backward()
    grad_effective = upstream.T @ x  # dL/dW_eff of y = x W_eff^T, L = sum(y * upstream)
    torch.testing.assert_close(score.grad, grad_effective * weight)


@pytest.mark.parametrize("scheme", ["per-matrix", "global"])
def test_fast_top_k_agrees_with_lowest_k_mask_including_ties(scheme):
    g = torch.Generator().manual_seed(1)
    scores = {
        "a": torch.randint(0, 5, (7, 9), generator=g).float(),  # many ties
        "b": torch.randn(13, generator=g),
        "c": torch.zeros(4, 5),
    }
    for sparsity in (0.0, 0.3, 0.5, 0.77, 0.99):
        reference = lowest_k_mask(scores, sparsity, scheme)
        # The CPU path (lowest_k_mask itself) and the accelerator path (kthvalue on the device),
        # the latter run here on the CPU.
        for fast in (keep_bits(scores, sparsity, scheme), keep_bits_on_device(scores, sparsity, scheme)):
            assert all(torch.equal(fast[n], reference[n]) for n in scores), (sparsity, scheme)


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    tokenizer = tiny_tokenizer()
    model_dir = tmp_path / "model"
    tiny_model("bert", seed=0, model_class=BertForPreTraining).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    text = tmp_path / "train.txt"
    wikitext_like(text, paragraphs=40)
    return model_dir, tokenizer, text


def test_exact_counts_every_step_and_frozen_weights(tiny_setup):
    model_dir, tokenizer, text = tiny_setup
    model = tiny_model("bert", seed=0)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    blocks = load_text_blocks(tokenizer, text, max_length=16, progress=False)
    init = prune(model, "omp", 0.6, scope="encoder+embeddings", scheme="per-matrix")
    learned = LearnedMask(model, init, 0.6, "per-matrix")
    assert all(torch.equal(learned.current_keep()[n], init.tensors[n]) for n in init.tensors)
    objective = TamtObjective(model, learned, "kd", kd_kind="cosine")
    optimizer = tamt_optimizer(learned, None, "kd", lr=5e-3)
    with learned.attached():
        for step in range(6):
            ids, attention = (
                blocks.input_ids[step * 4 : step * 4 + 4],
                blocks.attention_mask[step * 4 : step * 4 + 4],
            )
            tamt_step(objective, optimizer, ids, attention, range(4), seed=0, step=step)
            keep = learned.current_keep()
            for name, bits in keep.items():
                assert int((~bits).sum()) == num_to_prune(bits.numel(), 0.6), (step, name)
            # the forward really uses the current top-k
            weight = model.encoder.layer[0].attention.self.query.weight
            assert torch.equal(
                weight,
                dense["encoder.layer.0.attention.self.query.weight"]
                * keep["encoder.layer.0.attention.self.query.weight"],
            )
    final = learned.to_mask(init.provenance)
    assert sum(int((final.tensors[n] != init.tensors[n]).sum()) for n in final.tensors) > 0  # the mask moved
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, dense[name]), name  # weights frozen, parametrization removed
        assert parameter.requires_grad  # and trainable again after detaching


def _kd_mse(model_dir, tokenizer, text, mask):
    from ticketlab.models import load_encoder

    teacher = load_encoder(str(model_dir))
    student = load_encoder(str(model_dir))
    apply_mask(student, mask, allow_fingerprint_mismatch=True)
    blocks = load_text_blocks(tokenizer, text, max_length=16, progress=False)
    return pretraining_losses(teacher, student, blocks, progress=False)["kd_loss"]


def test_tamt_kd_lowers_distillation_loss_below_its_omp_start(tiny_setup, tmp_path):
    model_dir, tokenizer, text = tiny_setup
    spec = TamtSpec(
        model=str(model_dir),
        objective="kd",
        sparsity=0.7,
        text=str(text),
        steps=40,
        batch_size=8,
        max_length=16,
        lr=2e-3,
        save_at=(20,),
        seed=0,
        dropout=False,
    )
    results = run_tamt(spec, tmp_path / "run", progress=False)
    trained = load_mask(results["mask"])
    from ticketlab.models import load_encoder

    omp = prune(load_encoder(str(model_dir)), "omp", 0.7, scope="encoder+embeddings", scheme="per-matrix")
    assert _kd_mse(model_dir, tokenizer, text, trained) < 0.9 * _kd_mse(model_dir, tokenizer, text, omp)
    header = read_header(results["mask"])
    params = header["provenance"]["method_params"]
    assert (
        header["provenance"]["method"] == "tamt" and params["objective"] == "kd" and params["init"] == "omp"
    )
    assert params["search_cost"]["steps"] == 40 and params["search_cost"]["examples"] == 320
    budget = load_mask(results["budget_masks"]["20"])
    for mask in (trained, budget):
        for bits in mask.tensors.values():
            assert int((~bits).sum()) == num_to_prune(bits.numel(), 0.7)
    # the mask applies to the dense model: fingerprint of the source weights
    apply_mask(load_encoder(str(model_dir)), trained)


def test_resume_after_interruption_gives_the_same_mask(tiny_setup, tmp_path):
    model_dir, tokenizer, text = tiny_setup
    spec = TamtSpec(
        model=str(model_dir),
        objective="mlm+kd",
        sparsity=0.5,
        text=str(text),
        steps=8,
        batch_size=4,
        max_length=16,
        lr=5e-3,
        checkpoint_every=3,
        seed=3,
        scheme="global",
        save_at=(4,),
    )
    whole = run_tamt(spec, tmp_path / "whole.safetensors", progress=False)

    def crash(step, _):
        if step == 5:
            raise KeyboardInterrupt

    out = tmp_path / "crashed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        run_tamt(spec, out, progress=False, on_step=crash)
    steps = tmp_path / "crashed.tamt"
    # The checkpoint (step 3) is kept with the claimed work; the budget at step 4 is published.
    assert (steps / ".final.partial" / "checkpoint.safetensors").is_file() and not out.exists()
    assert (steps / "budget_000004" / "DONE").is_file() and not (steps / "final").exists()
    assert load_mask(tmp_path / "crashed-step4.safetensors") == load_mask(whole["budget_masks"]["4"])
    resumed = run_tamt(spec, out, progress=False)
    assert load_mask(resumed["mask"]) == load_mask(whole["mask"])
    assert load_mask(resumed["budget_masks"]["4"]) == load_mask(whole["budget_masks"]["4"])
    assert sorted(p.name for p in steps.iterdir()) == [".steps.lock", "budget_000004", "final"]
    assert sorted(json.loads((steps / "final" / "DONE").read_text())["files"]) == [
        "mask.safetensors",
        "results.json",
    ]
    assert run_tamt(spec, out, progress=False)["spec_digest"] == resumed["spec_digest"]  # finished: no rerun


def test_cli_tamt_mlm_on_a_headless_model_builds_a_head(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    bare = tmp_path / "bare"
    tiny_model("bert", seed=0).save_pretrained(bare)
    tiny_tokenizer().save_pretrained(bare)
    text = tmp_path / "t.txt"
    wikitext_like(text, paragraphs=10)
    out = tmp_path / "tamt"
    code = main(
        [
            "tamt",
            "--model",
            str(bare),
            "--objective",
            "mlm",
            "--sparsity",
            "0.5",
            "--text",
            str(text),
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--max-length",
            "16",
            "--head-steps",
            "2",
            "--out",
            str(out),
            "--json",
            "--quiet",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["sparsity"] == pytest.approx(0.5, abs=0.01)
    header = read_header(out / "mask.safetensors")
    assert header["provenance"]["method_params"]["mlm_head"]["built"] is True
    code = main(
        [
            "tamt",
            "--model",
            str(bare),
            "--objective",
            "mlm",
            "--sparsity",
            "1.5",
            "--text",
            str(text),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    with pytest.raises(TicketlabError, match="outside"):
        TamtSpec(model="m", objective="kd", sparsity=0.5, steps=10, save_at=(20,)).validate()


def test_teacher_dropout_is_off_by_default_and_on_when_asked():
    model = tiny_model("bert", seed=0)
    model.config.hidden_dropout_prob = 0.5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    init = prune(model, "omp", 0.5, scope="encoder+embeddings", scheme="per-matrix")
    learned = LearnedMask(model, init, 0.5, "per-matrix")
    ids = torch.randint(5, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    with learned.attached():
        for teacher_dropout, differs in ((False, False), (True, True)):
            objective = TamtObjective(model, learned, "kd", teacher_dropout=teacher_dropout)
            first = objective._teacher_hidden(ids, attention)[-1]
            second = objective._teacher_hidden(ids, attention)[-1]
            assert (not torch.equal(first, second)) is differs, teacher_dropout
