import pytest
import torch
from transformers import BertForSequenceClassification

from ticketlab.errors import MaskMismatchError
from ticketlab.masks import StructuredMask
from ticketlab.masks.gates import StructuredGates, apply_structured_mask
from ticketlab.models import EncoderAdapter
from ticketlab.models.tiny import tiny_model

FAMILIES = ["bert", "roberta", "electra", "distilbert"]


def _inputs(seed=0, batch=3, length=10):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (batch, length), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 7:] = 0  # some padding, so masks matter
    return {"input_ids": ids, "attention_mask": attention}


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _model(family, **overrides):
    if family == "distilbert":
        overrides = {("n_layers" if k == "num_hidden_layers" else k): v for k, v in overrides.items()}
    return tiny_model(family, seed=1, **overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_gates_at_one_leave_outputs_unchanged_and_removal_restores(family):
    model = _model(family)
    inputs = _inputs()
    plain = _out(model, inputs)
    with StructuredGates(model, "neuron") as gates:
        assert torch.equal(_out(model, inputs), plain)
        gates.heads[0, 1] = 0.0
        assert not torch.allclose(_out(model, inputs), plain)
    assert torch.equal(_out(model, inputs), plain)


def _zero_head_by_weights(model, layer, head):
    """Reference: a head whose V rows, V bias and output-projection columns are zero contributes nothing."""
    adapter = EncoderAdapter(model)
    d = adapter.head_dim
    span = slice(head * d, (head + 1) * d)
    with torch.no_grad():
        value = adapter.layer_linear(layer, "value")
        value.weight[span] = 0
        value.bias[span] = 0
        adapter.layer_linear(layer, "attention_output").weight[:, span] = 0


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_gate_zero_on_a_head_equals_zeroing_its_weights(family):
    model = _model(family)
    inputs = _inputs()
    mask = StructuredMask.full(EncoderAdapter(model))
    mask.heads[1, 2] = False
    mask.heads[0, 0] = False
    gates = apply_structured_mask(model, mask)
    gated = _out(model, inputs)
    gates.remove()
    _zero_head_by_weights(model, 1, 2)
    _zero_head_by_weights(model, 0, 0)
    torch.testing.assert_close(gated, _out(model, inputs), atol=1e-6, rtol=0)


def test_ffn_gates_layer_and_neuron_match_weight_references():
    model = _model("bert")
    adapter = EncoderAdapter(model)
    inputs = _inputs()
    neurons = StructuredMask.full(adapter, "neuron")
    neurons.ffn[0, [1, 5, 9]] = False
    with apply_structured_mask(model, neurons):
        gated = _out(model, inputs)
    reference = _model("bert")
    with torch.no_grad():
        reference_in = EncoderAdapter(reference).layer_linear(0, "ffn_out")
        reference_in.weight[:, [1, 5, 9]] = 0  # a neuron with no outgoing weights is gone
    torch.testing.assert_close(gated, _out(reference, inputs), atol=1e-6, rtol=0)

    whole = StructuredMask.full(adapter, "layer")
    whole.ffn[1] = False
    with apply_structured_mask(model, whole):
        gated = _out(model, inputs)
    reference = _model("bert")
    with torch.no_grad():
        out = EncoderAdapter(reference).layer_linear(1, "ffn_out")
        out.weight.zero_()
        out.bias.zero_()  # the layer gate covers the bias too: the sub-layer output is 0
    torch.testing.assert_close(gated, _out(reference, inputs), atol=1e-6, rtol=0)


def test_everything_pruned_is_a_residual_pass_through():
    model = _model("bert", num_hidden_layers=1)
    adapter = EncoderAdapter(model)
    inputs = _inputs()
    mask = StructuredMask(torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, dtype=torch.bool))
    with apply_structured_mask(model, mask):
        out = _out(model, inputs)
    # By hand: embeddings -> LayerNorm(x + attention-output bias) -> LayerNorm(. + 0).
    layer = adapter.layer(0)
    with torch.no_grad():
        x = model.embeddings(input_ids=inputs["input_ids"])
        x = layer.attention.output.LayerNorm(x + layer.attention.output.dense.bias)
        expected = layer.output.LayerNorm(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_eager_and_sdpa_give_the_same_gated_outputs(family):
    inputs = _inputs()
    outputs = []
    for implementation in ("eager", "sdpa"):
        model = _model(family, attn_implementation=implementation)
        assert model.config._attn_implementation == implementation
        mask = StructuredMask.full(EncoderAdapter(model), "neuron")
        mask.heads[0, :3] = False
        mask.heads[1, :] = False
        mask.ffn[1, :40] = False
        with apply_structured_mask(model, mask):
            outputs.append(_out(model, inputs))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)


def test_pruned_units_get_exactly_zero_gradient():
    model = tiny_model("bert", seed=2, model_class=BertForSequenceClassification, num_labels=3)
    model.train()
    adapter = EncoderAdapter(model)
    mask = StructuredMask.full(adapter, "layer")
    mask.heads[0, 1] = False
    mask.heads[1, :] = False  # a whole layer of heads
    mask.ffn[0] = False
    inputs = _inputs()
    with apply_structured_mask(model, mask):
        loss = model(**inputs, labels=torch.tensor([0, 1, 2])).loss
        loss.backward()
    d = adapter.head_dim
    for layer, head in [(0, 1), (1, 0), (1, 3)]:
        span = slice(head * d, (head + 1) * d)
        for role in ("query", "key", "value"):
            linear = adapter.layer_linear(layer, role)
            assert torch.count_nonzero(linear.weight.grad[span]) == 0, (layer, head, role)
            assert torch.count_nonzero(linear.bias.grad[span]) == 0
        assert torch.count_nonzero(adapter.layer_linear(layer, "attention_output").weight.grad[:, span]) == 0
    for role in ("ffn_in", "ffn_out"):
        linear = adapter.layer_linear(0, role)
        assert torch.count_nonzero(linear.weight.grad) == 0 and torch.count_nonzero(linear.bias.grad) == 0
    # Kept units do learn, and the shared output bias of the emptied layer still trains.
    assert adapter.layer_linear(0, "query").weight.grad[:d].abs().sum() > 0
    assert adapter.layer_linear(1, "ffn_in").weight.grad.abs().sum() > 0
    assert adapter.layer_linear(1, "attention_output").bias.grad.abs().sum() > 0


def test_gates_can_require_grad_and_shapes_are_checked():
    model = _model("bert")
    gates = StructuredGates(model, requires_grad=True)
    model(**_inputs()).last_hidden_state.sum().backward()
    assert gates.heads.grad.shape == (2, 4) and gates.heads.grad.abs().sum() > 0
    assert gates.ffn.grad.shape == (2,)
    assert gates.to_mask().heads.all()
    gates.remove()
    with pytest.raises(MaskMismatchError, match="heads mask shape"):
        apply_structured_mask(
            model, StructuredMask(torch.ones(3, 4, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
        )


def test_switching_masks_in_place_matches_fresh_gates():
    model = _model("bert")
    inputs = _inputs()
    adapter = EncoderAdapter(model)
    first, second = StructuredMask.full(adapter), StructuredMask.full(adapter)
    first.heads[0, :2] = False
    second.heads[1, 3] = False
    second.ffn[0] = False
    expected = []
    for mask in (first, second):
        with apply_structured_mask(model, mask):
            expected.append(_out(model, inputs))
    with apply_structured_mask(model, first) as gates:
        for mask, reference in zip((first, second, first), expected + expected[:1]):
            gates.set_mask(mask)
            assert torch.equal(_out(model, inputs), reference)
        with pytest.raises(MaskMismatchError, match="do not match"):
            gates.set_mask(StructuredMask.full(adapter, "neuron"))
