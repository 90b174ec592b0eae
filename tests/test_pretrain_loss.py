"""Pre-training losses of tickets on a tiny BERT with an MLM head, through the API and the CLI."""

import copy
import json

import pytest
import torch
from transformers import BertForMaskedLM, BertForPreTraining

from tests.pretrain_fixtures import tiny_tokenizer, wikitext_like
from ticketlab.cli import main
from ticketlab.data.text import load_text_blocks
from ticketlab.experiments.pretrain_loss import pretraining_losses
from ticketlab.masks import apply_mask
from ticketlab.models.mlm_head import EncoderWithMlmHead, head_from_checkpoint, load_mlm_head, save_mlm_head
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning import prune
from ticketlab.training.mlm_head import train_mlm_head
from ticketlab.training.objectives import MlmMasking, mlm_loss


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    tokenizer = tiny_tokenizer()
    model = tiny_model("bert", seed=0, model_class=BertForMaskedLM)
    model_dir = tmp_path / "mlm"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    text_path = tmp_path / "valid.txt"
    wikitext_like(text_path, paragraphs=15)
    blocks = load_text_blocks(tokenizer, text_path, max_length=32, progress=False)
    return model, model_dir, tokenizer, text_path, blocks


def test_copied_head_scores_exactly_like_the_hugging_face_model(setup):
    model, model_dir, tokenizer, _, blocks = setup
    encoder = model.bert
    head, reason = head_from_checkpoint(str(model_dir), encoder)
    assert head is not None, reason
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=128)
    corrupted, labels = masking(blocks.input_ids[:4], seed=0, keys=range(4))
    with torch.no_grad():
        reference = model(input_ids=corrupted, attention_mask=blocks.attention_mask[:4], labels=labels).loss
        wrapped = EncoderWithMlmHead(encoder, head)
        hidden = wrapped(corrupted, blocks.attention_mask[:4]).last_hidden_state
        ours = mlm_loss(wrapped.logits_at(hidden, labels != -100), labels[labels != -100])
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_more_pruning_means_more_distillation_loss_and_dense_is_zero(setup):
    model, model_dir, tokenizer, _, blocks = setup
    teacher = model.bert
    head, _ = head_from_checkpoint(str(model_dir), teacher)
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=128)
    results = {}
    for sparsity in (0.0, 0.1, 0.9):
        student = copy.deepcopy(teacher)
        mask = prune(student, "random", sparsity, scope="encoder", seed=1)
        apply_mask(student, mask)
        results[sparsity] = pretraining_losses(
            teacher, student, blocks, masking=masking, head=head, progress=False, batch_size=3
        )
    assert results[0.0]["kd_loss"] == 0.0
    assert results[0.0]["mlm_loss"] == pytest.approx(results[0.0]["mlm_loss_dense"])
    assert results[0.9]["kd_loss"] > results[0.1]["kd_loss"] > 0.0
    # the batch size does not change the losses (token-weighted over the whole text)
    again = pretraining_losses(
        teacher, teacher, blocks, masking=masking, head=head, progress=False, batch_size=16
    )
    assert again["mlm_loss"] == pytest.approx(results[0.0]["mlm_loss"], rel=1e-5)


def test_built_head_learns_and_round_trips(setup, tmp_path):
    _, _, tokenizer, _, blocks = setup
    encoder = tiny_model("bert", seed=0)
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=128)
    head, record = train_mlm_head(encoder, blocks, 30, masking, targets_per_step=64, lr=1e-2, progress=False)
    assert record["built"] and record["final_loss"] < record["first_loss"]
    path = save_mlm_head(head, tmp_path / "head", record)
    loaded, info = load_mlm_head(path.parent, encoder)
    assert info["steps"] == 30
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), loaded.state_dict().values()))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_with_and_without_a_head(setup, tmp_path, capsys):
    _, _, tokenizer, text_path, _ = setup
    # a checkpoint with pooler and MLM head (BertForPreTraining), so masks fingerprint the same weights
    with_head = tmp_path / "pretraining"
    tiny_model("bert", seed=0, model_class=BertForPreTraining).save_pretrained(with_head)
    tokenizer.save_pretrained(with_head)
    mask = tmp_path / "omp.safetensors"
    assert (
        run_cli(capsys, "prune", "--model", with_head, "--method", "omp", "--sparsity", 0.5, "--out", mask)[0]
        == 0
    )
    code, out, _ = run_cli(
        capsys,
        "pretrain-loss",
        "--model",
        with_head,
        "--mask",
        mask,
        "--text",
        text_path,
        "--max-length",
        32,
        "--json",
        "--quiet",
    )
    data = json.loads(out)
    assert code == 0 and data["mlm_loss"] > 0 and data["kd_loss"] > 0 and data["sparsity"] == 0.5
    assert data["mlm_head"]["source"] == "checkpoint" and data["kd_loss_kind"] == "mse"

    bare = tmp_path / "bare"
    tiny_model("bert", seed=0).save_pretrained(bare)
    tokenizer.save_pretrained(bare)
    code, out, _ = run_cli(
        capsys, "pretrain-loss", "--model", bare, "--text", text_path, "--max-length", 32, "--json", "--quiet"
    )
    data = json.loads(out)
    assert code == 0 and data["mlm_loss"] is None and "no MLM head" in data["mlm_loss_reason"]
    assert data["kd_loss"] == 0.0
    code, out, _ = run_cli(
        capsys,
        "pretrain-loss",
        "--model",
        bare,
        "--text",
        text_path,
        "--max-length",
        32,
        "--mlm-head",
        "auto",
        "--head-steps",
        3,
        "--kd-loss",
        "cosine",
        "--json",
        "--quiet",
    )
    data = json.loads(out)
    assert code == 0 and data["mlm_loss"] > 0 and data["mlm_head"]["built"] is True
    code, _, err = run_cli(
        capsys,
        "pretrain-loss",
        "--model",
        bare,
        "--text",
        tmp_path / "nope.txt",
        "--max-length",
        64,
        "--quiet",
    )
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
