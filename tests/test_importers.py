"""The originals' mask files, as their code saved them, import to the mask they encode."""

import pickle

import pytest
import torch
from transformers import BertForSequenceClassification

from ticketlab.errors import MaskFormatError, MaskMismatchError
from ticketlab.masks import import_original_mask
from ticketlab.pruning import prune


def test_bert_tickets_float_masks(bert, tmp_path):
    mask = prune(bert, "omp", 0.6)
    original = {f"bert.{n}_mask": bits.float() for n, bits in mask.tensors.items()}
    original["classifier.weight_mask"] = torch.ones(2, 32)  # a task-head key they never pruned
    torch.save(original, tmp_path / "mask.pt")
    imported, report = import_original_mask(tmp_path / "mask.pt", bert)
    assert imported == mask
    assert report.source_format == "bert-tickets"
    assert report.unplaced == ["classifier.weight_mask"]
    assert imported.provenance.scope == "encoder"


def test_tamt_bool_masks_with_word_embeddings_onto_a_task_model(bert, bert_dir, tmp_path):
    mask = prune(bert, "omp", 0.5, scope="encoder+embeddings", scheme="per-matrix")
    torch.save({f"bert.{n}": bits for n, bits in mask.tensors.items()}, tmp_path / "tamt.pt")
    task_model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    imported, report = import_original_mask(tmp_path / "tamt.pt", task_model)
    assert imported == mask
    assert report.source_format == "tamt" and not report.unplaced
    assert imported.provenance.scope == "encoder+embeddings"


def test_missing_matrices_stay_dense_and_are_reported(bert, tmp_path):
    mask = prune(bert, "omp", 0.5)
    partial = {f"bert.{n}_mask": b.float() for n, b in mask.tensors.items() if "pooler" not in n}
    torch.save(partial, tmp_path / "m.pt")
    imported, report = import_original_mask(tmp_path / "m.pt", bert)
    assert report.not_in_file == ["pooler.dense.weight"]
    assert imported.tensors["pooler.dense.weight"].all()


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_never_executed(tmp_path, bert):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"bert.encoder.layer.0.attention.self.query.weight_mask": _Exploit()}, handle)
    with pytest.raises(MaskFormatError, match="not a loadable"):
        import_original_mask(path, bert)


def test_wrong_model_and_wrong_values_are_refused(bert, tmp_path):
    torch.save({"bert.encoder.layer.0.attention.self.query.weight_mask": torch.ones(5, 5)}, tmp_path / "a.pt")
    with pytest.raises(MaskMismatchError, match="shape"):
        import_original_mask(tmp_path / "a.pt", bert)
    torch.save(
        {"bert.encoder.layer.0.attention.self.query.weight_mask": torch.full((32, 32), 0.5)},
        tmp_path / "b.pt",
    )
    with pytest.raises(MaskFormatError, match="other than 0 and 1"):
        import_original_mask(tmp_path / "b.pt", bert)
    torch.save({"gpt.h.0.weight": torch.ones(2)}, tmp_path / "c.pt")
    with pytest.raises(MaskMismatchError, match="none of its"):
        import_original_mask(tmp_path / "c.pt", bert)
