"""Fingerprints: XXH3 for new masks, BLAKE2b masks from earlier versions still verified."""

import sys
from pathlib import Path

import pytest
import torch

from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.masks import apply_mask, load_mask, read_header
from ticketlab.masks.fingerprint import ALGORITHM, BLAKE2B, combined, digest_pair, tensor_digest
from ticketlab.models import EncoderAdapter
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning import prune

fingerprint_module = sys.modules["ticketlab.masks.fingerprint"]  # the package re-exports the function
# Written by ticketlab before the switch to XXH3 (BLAKE2b digests), from formula_model() below.
BLAKE2B_MASK = Path(__file__).parent / "fixtures" / "mask_blake2b_v1.safetensors"


def formula_model():
    """A tiny BERT whose weights in scope come from a formula (no RNG), one of them -0.0."""
    model = tiny_model("bert")
    with torch.no_grad():
        for i, weight in enumerate(EncoderAdapter(model).prunable_weights("encoder").values()):
            values = torch.sin(torch.arange(weight.numel(), dtype=torch.float64) * 0.37 + i).float()
            weight.copy_(values.reshape(weight.shape))
            weight.view(-1)[7] = -0.0
    return model


def test_a_blake2b_mask_from_an_earlier_version_still_verifies():
    header = read_header(BLAKE2B_MASK)
    assert header["provenance"]["fingerprint"]["algorithm"] == BLAKE2B
    mask = load_mask(BLAKE2B_MASK)
    model = formula_model()
    apply_mask(model, mask)  # the kept weights match under BLAKE2b
    weights = EncoderAdapter(formula_model()).prunable_weights("encoder")
    recorded = mask.provenance.fingerprint
    assert recorded["model"] == combined(
        {n: tensor_digest(w, None, BLAKE2B) for n, w in weights.items()}, BLAKE2B
    )
    changed = formula_model()
    with torch.no_grad():
        changed.encoder.layer[1].output.dense.weight.mul_(1.01)
    with pytest.raises(MaskMismatchError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        apply_mask(changed, mask)


def test_new_masks_record_xxh3_and_verify(bert):
    mask = prune(bert, "omp", 0.5)
    assert mask.provenance.fingerprint["algorithm"] == ALGORITHM == "xxh3-128/float32-le/kept"
    blake = prune(bert, "omp", 0.5)
    blake.provenance.fingerprint = fingerprint_module.fingerprint(blake, bert, BLAKE2B)
    assert blake.provenance.fingerprint["kept"] != mask.provenance.fingerprint["kept"]
    apply_mask(tiny_model("bert"), mask)
    apply_mask(tiny_model("bert"), blake)
    with pytest.raises(MaskMismatchError):
        apply_mask(tiny_model("bert", seed=1), mask)


@pytest.mark.parametrize("algorithm", [ALGORITHM, BLAKE2B])
def test_digests_read_pruned_entries_as_zero_and_ignore_the_sign_of_zero(monkeypatch, algorithm):
    monkeypatch.setattr(fingerprint_module, "_CHUNK_SIZE", 100)  # several chunks, a ragged last one
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(33, 31, generator=generator)
    keep = torch.rand(33, 31, generator=generator) > 0.4
    reference = torch.where(keep, weight, torch.zeros(()))
    dense, kept = digest_pair(weight, keep, algorithm)
    assert kept == tensor_digest(reference, None, algorithm)  # pruned entries hash as +0.0
    assert dense == tensor_digest(weight, None, algorithm) != kept
    odd = weight.clone()
    odd[~keep] = torch.tensor([float("inf"), float("nan"), -1.0, -0.0]).repeat(int((~keep).sum()))[
        : int((~keep).sum())
    ]
    assert tensor_digest(odd, keep, algorithm) == kept  # whatever the pruned entries hold
    signed = reference.clone()
    signed[~keep] = -0.0
    assert tensor_digest(signed, None, algorithm) == tensor_digest(reference, None, algorithm)
    monkeypatch.setattr(fingerprint_module, "_CHUNK_SIZE", 1 << 17)
    assert digest_pair(weight, keep, algorithm) == (dense, kept)  # independent of the chunking


def test_half_precision_weights_hash_as_their_float32_values():
    weight = torch.randn(40, 24).bfloat16()
    keep = torch.rand(40, 24) > 0.5
    assert tensor_digest(weight, keep) == tensor_digest(weight.float(), keep)


def test_an_unknown_algorithm_is_refused_in_one_line(bert):
    mask = prune(bert, "omp", 0.5)
    mask.provenance.fingerprint["algorithm"] = "sha3-512/float32-le/kept"
    with pytest.raises(TicketlabError, match="unknown fingerprint algorithm 'sha3-512") as error:
        apply_mask(tiny_model("bert"), mask)
    assert "\n" not in str(error.value)
    apply_mask(tiny_model("bert"), mask, allow_fingerprint_mismatch=True)
