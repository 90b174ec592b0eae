import pytest
import torch
from transformers import BertForSequenceClassification

from ticketlab.errors import TicketlabError
from ticketlab.masks import StructuredMask
from ticketlab.masks.gates import StructuredGates
from ticketlab.models import EncoderAdapter
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning.importance import (
    ImportanceScores,
    compute_importance,
    normalize_per_layer,
    sequence_classification_losses,
)


@pytest.fixture(scope="module")
def classifier():
    return tiny_model("bert", seed=3, model_class=BertForSequenceClassification, num_labels=2)


def _batches(count=2, batch=3, length=7):
    generator = torch.Generator().manual_seed(5)
    out = []
    for _ in range(count):
        ids = torch.randint(3, 120, (batch, length), generator=generator)
        attention = torch.ones_like(ids)
        attention[0, 5:] = 0
        out.append(
            {
                "input_ids": ids,
                "attention_mask": attention,
                "labels": torch.randint(0, 2, (batch,), generator=generator),
            }
        )
    return out


def _reference_gate_grads(model, batch, reduce):
    """|dL/dgate| of shared gates [L, H] and [L] with one backward (the independent way)."""
    gates = StructuredGates(model, requires_grad=True)
    try:
        losses = sequence_classification_losses(model, batch)
        (losses.sum() if reduce == "sum" else losses.mean()).backward()
        return gates.heads.grad.abs().double(), gates.ffn.grad.abs().double()
    finally:
        gates.remove()


def test_michel_is_the_mean_over_single_examples(classifier):
    batches = _batches()
    scores = compute_importance(classifier, batches, variant="michel2019", normalization="none")
    heads = torch.zeros(2, 4, dtype=torch.float64)
    ffn = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        for i in range(batch["labels"].shape[0]):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            h, f = _reference_gate_grads(classifier, one, "sum")
            heads += h
            ffn += f
    torch.testing.assert_close(scores.heads.double(), heads / 6, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scores.ffn.double(), ffn / 6, rtol=1e-4, atol=1e-7)
    assert scores.num_examples == 6 and scores.num_batches == 2


def test_prasanna_is_the_mean_over_batches_of_batch_mean_loss_grads(classifier):
    batches = _batches()
    scores = compute_importance(classifier, batches, variant="prasanna2020", normalization="none")
    pairs = [_reference_gate_grads(classifier, b, "mean") for b in batches]
    heads = sum(p[0] for p in pairs) / 2
    torch.testing.assert_close(scores.heads.double(), heads, rtol=1e-4, atol=1e-7)
    # Gradients do not leak between batches: scoring the batches one at a time and averaging agrees.
    one_by_one = [
        compute_importance(classifier, [b], variant="prasanna2020", normalization="none") for b in batches
    ]
    torch.testing.assert_close(scores.ffn, (one_by_one[0].ffn + one_by_one[1].ffn) / 2, rtol=1e-5, atol=1e-8)


def test_liang_is_the_summed_per_token_context_gradient_product(classifier):
    batches = _batches()
    scores = compute_importance(classifier, batches, variant="liang2021", normalization="none")
    adapter = EncoderAdapter(classifier)
    expected = torch.zeros(2, 4, dtype=torch.float64)
    for batch in batches:
        contexts = {}

        def keep(layer, contexts=contexts):
            def hook(module, args):
                args[0].retain_grad()
                contexts[layer] = args[0]

            return hook

        handles = [
            adapter.layer_linear(i, "attention_output").register_forward_pre_hook(keep(i)) for i in range(2)
        ]
        sequence_classification_losses(classifier, batch).sum().backward()
        for handle in handles:
            handle.remove()
        classifier.zero_grad(set_to_none=True)
        for layer, ctx in contexts.items():
            split = (ctx * ctx.grad).reshape(*ctx.shape[:-1], 4, 8).sum(-1)  # <dL/dctx_h, ctx_h> per token
            expected[layer] += split.abs().sum(dim=(0, 1)).double()
    torch.testing.assert_close(scores.heads.double(), expected, rtol=1e-4, atol=1e-7)


def test_normalisation_masking_and_restored_state(classifier):
    flags = [p.requires_grad for p in classifier.parameters()]
    classifier.train()
    mask = StructuredMask.full(EncoderAdapter(classifier))
    mask.heads[0, 2] = False
    mask.ffn[1] = False
    scores = compute_importance(classifier, _batches(1), mask=mask)
    assert scores.heads[0, 2] == 0 and scores.ffn[1] == 0 and (scores.heads[1] > 0).all()
    torch.testing.assert_close(scores.heads.norm(dim=1), torch.ones(2))
    assert classifier.training and [p.requires_grad for p in classifier.parameters()] == flags
    assert all(p.grad is None for p in classifier.parameters())
    classifier.eval()

    minmax = normalize_per_layer(torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]]), "minmax")
    torch.testing.assert_close(minmax, torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))
    neurons = compute_importance(classifier, _batches(1), ffn_granularity="neuron", variant="liang2021")
    assert neurons.ffn.shape == (2, 64)


def test_scores_save_and_load(tmp_path, classifier):
    with torch.no_grad():  # scoring turns gradients on for itself
        scores = compute_importance(classifier, _batches(1), variant="michel2019")
    path = scores.save(tmp_path / "scores.safetensors")
    back = ImportanceScores.load(path)
    assert torch.equal(back.heads, scores.heads) and torch.equal(back.ffn, scores.ffn)
    assert back.variant == "michel2019" and back.normalization == "l2" and back.num_examples == 3
    assert scores.to_dict()["heads"] == scores.heads.tolist()
    with pytest.raises(TicketlabError, match="unknown importance variant"):
        compute_importance(classifier, _batches(1), variant="nope")
    with pytest.raises(TicketlabError, match="no batches"):
        compute_importance(classifier, [])
