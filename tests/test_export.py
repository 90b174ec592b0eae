"""Exported tickets: dense for plain transformers, CSR layers on the CPU, the 2:4 layout."""

import json

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

from ticketlab.cli import main
from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.masks import apply_mask, save_mask
from ticketlab.masks.export import export_ticket
from ticketlab.models import EncoderAdapter
from ticketlab.models.sparse import CsrLinear, load_sparse
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning import prune

TOKENS = torch.randint(0, 128, (3, 17), generator=torch.Generator().manual_seed(0))


def masked_outputs(model, mask):
    apply_mask(model, mask).remove()
    with torch.no_grad():
        return model(input_ids=TOKENS).last_hidden_state


def test_dense_export_loads_in_plain_transformers_with_its_provenance(bert, tmp_path):
    mask = prune(bert, "omp", 0.6)
    expected = masked_outputs(tiny_model("bert"), mask)
    summary = export_ticket(tiny_model("bert"), mask, tmp_path / "dense", "dense")
    assert summary["format"] == "dense"
    reloaded = BertModel.from_pretrained(tmp_path / "dense").eval()
    ticket = reloaded.config.ticketlab_ticket
    assert ticket["method"] == "omp" and ticket["num_pruned"] == mask.num_pruned()
    assert ticket["scope"] == "encoder" and ticket["fingerprint_algorithm"].startswith("xxh3")
    adapter = EncoderAdapter(reloaded)
    for name, bits in mask.tensors.items():
        assert torch.all(adapter.parameter(name).detach()[~bits] == 0), name
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=TOKENS).last_hidden_state, expected)
    card = (tmp_path / "dense" / "README.md").read_text()
    assert card.startswith("---\n") and "tags: [ticketlab" in card and '"num_pruned"' in card


@pytest.mark.parametrize("scope", ["encoder", "encoder+embeddings"])
def test_csr_export_runs_sparse_and_equals_the_masked_dense_model(bert, tmp_path, scope):
    mask = prune(bert, "omp", 0.8, scope=scope, scheme="per-matrix")
    expected = masked_outputs(tiny_model("bert"), mask)
    summary = export_ticket(tiny_model("bert"), mask, tmp_path / "csr", "csr")
    loaded = load_sparse(tmp_path / "csr")
    layers = [m for m in loaded.modules() if isinstance(m, CsrLinear)]
    assert len(layers) == summary["sparse_layers"] == len(mask.tensors) - (scope != "encoder")
    assert summary["dense_matrices"] == (["embeddings.word_embeddings.weight"] if scope != "encoder" else [])
    kept = sum(layer.weight_values.numel() for layer in layers)
    linear_kept = sum(int(b.sum()) for n, b in mask.tensors.items() if "word_embeddings" not in n)
    assert kept == linear_kept  # only the kept weights are stored (random weights have no zeros)
    with torch.no_grad():
        found = loaded(input_ids=TOKENS).last_hidden_state
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=0)
    dense = load_sparse(tmp_path / "csr", dense=True)
    with torch.no_grad():
        torch.testing.assert_close(dense(input_ids=TOKENS).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_csr_export_keeps_the_task_head(bert, tmp_path):
    classifier = tiny_model("bert", model_class=BertForSequenceClassification, num_labels=3)
    mask = prune(classifier, "omp", 0.5)
    apply_mask(reference := tiny_model("bert", model_class=BertForSequenceClassification, num_labels=3), mask)
    export_ticket(classifier, mask, tmp_path / "cls", "csr")
    loaded = load_sparse(tmp_path / "cls")
    assert isinstance(loaded, BertForSequenceClassification)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=TOKENS).logits, reference.eval()(input_ids=TOKENS).logits, atol=1e-5, rtol=0
        )


def test_two_four_layout_round_trips_and_refuses_a_cpu(bert, tmp_path):
    mask = prune(bert, "nm", 0.5)
    expected = masked_outputs(tiny_model("bert"), mask)
    export_ticket(tiny_model("bert"), mask, tmp_path / "24", "2:4")
    header = json.loads((tmp_path / "24" / "ticketlab_sparse.json").read_text())
    assert header["sparse_format"] == "2:4"
    assert all(sizes["n"] == 2 and sizes["m"] == 4 for sizes in header["layers"].values())
    if not torch.cuda.is_available():
        with pytest.raises(TicketlabError, match="only on a CUDA GPU") as error:
            load_sparse(tmp_path / "24")
        assert "\n" not in str(error.value)
    dense = load_sparse(tmp_path / "24", dense=True)
    with torch.no_grad():
        assert torch.equal(dense(input_ids=TOKENS).last_hidden_state, expected)


def test_two_four_refuses_a_mask_that_is_not_two_four(bert, tmp_path):
    mask = prune(bert, "omp", 0.5)
    with pytest.raises(TicketlabError, match=r"is not 2:4: group \d+ of row \d+ keeps [34] of 4"):
        export_ticket(tiny_model("bert"), mask, tmp_path / "24", "2:4")
    assert not (tmp_path / "24").exists()


def test_export_checks_the_fingerprint(bert, tmp_path):
    mask = prune(bert, "omp", 0.5)
    with pytest.raises(MaskMismatchError):
        export_ticket(tiny_model("bert", seed=1), mask, tmp_path / "x", "dense")
    export_ticket(tiny_model("bert", seed=1), mask, tmp_path / "x", "dense", allow_fingerprint_mismatch=True)


def test_cli_export(bert, bert_dir, tmp_path, capsys):
    mask_path = save_mask(prune(bert, "omp", 0.9), tmp_path / "m.safetensors")

    def export(export_format: str, *extra: str) -> int:
        flags = ["--model", str(bert_dir), "--mask", str(mask_path), "--format", export_format]
        return main(["export", *flags, "--out", str(tmp_path / export_format.replace(":", "-")), *extra])

    for export_format in ("dense", "csr"):
        assert export(export_format, "--json") == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["format"] == export_format and summary["sparsity"] == pytest.approx(0.9, abs=1e-3)
    sizes = {f: (tmp_path / f / "model.safetensors").stat().st_size for f in ("dense", "csr")}
    assert sizes["csr"] < sizes["dense"]
    assert export("2:4") == 2 and "is not 2:4" in capsys.readouterr().err
