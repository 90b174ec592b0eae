"""Real-data tier: MiniLM-L6 from ../shared (skipped when TICKETLAB_SHARED is not set)."""

import pytest
import torch

from tests.conftest import shared_path
from ticketlab.masks import apply_mask, save_mask
from ticketlab.models import EncoderAdapter, load_encoder
from ticketlab.pruning import PROTOCOLS, prune

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def minilm_path():
    return shared_path("models", "all-MiniLM-L6-v2")


@pytest.mark.parametrize("protocol", ["chen2020", "liu2022"])
def test_minilm_prunes_to_exact_counts_under_both_protocols(minilm_path, protocol, tmp_path):
    model = load_encoder(str(minilm_path))
    settings = PROTOCOLS[protocol]
    mask = prune(model, "omp", 0.7, **settings, source_model=str(minilm_path))
    adapter = EncoderAdapter(model)
    total = sum(adapter.parameter(n).numel() for n in mask.tensors)
    # 6 layers x (4 x 384^2 + 2 x 384 x 1536) + pooler 384^2, plus 30522 x 384 word embeddings for liu2022
    expected_total = 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384
    if protocol == "liu2022":
        expected_total += 30522 * 384
    assert total == expected_total
    if settings["scheme"] == "global":
        assert mask.num_pruned() == int(total * 0.7)
    else:
        assert mask.num_pruned() == sum(int(b.numel() * 0.7) for b in mask.tensors.values())
    path = save_mask(mask, tmp_path / "m.safetensors")
    assert path.stat().st_size < total / 8 + 64 * 1024


def test_minilm_mask_holds_on_a_classifier(minilm_path):
    from transformers import AutoModelForSequenceClassification

    mask = prune(load_encoder(str(minilm_path)), "omp", 0.5)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    enforcer = apply_mask(model, mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    enforcer.attach(optimizer)
    tokens = torch.randint(1000, 2000, (2, 16))
    model(input_ids=tokens, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    weight = model.bert.encoder.layer[3].output.dense.weight
    assert torch.all(weight[~mask.tensors["encoder.layer.3.output.dense.weight"]] == 0)
