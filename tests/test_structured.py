import torch

from ticketlab.masks import StructuredMask
from ticketlab.models import EncoderAdapter


def test_pruned_head_expands_to_its_rows_and_output_columns(bert):
    adapter = EncoderAdapter(bert)  # 2 layers, 4 heads of 8 dims, FFN 64
    mask = StructuredMask.full(adapter)
    mask.heads[1, 2] = False
    bits = mask.to_unstructured(adapter).tensors
    query = bits["encoder.layer.1.attention.self.query.weight"]
    out = bits["encoder.layer.1.attention.output.dense.weight"]
    assert not query[16:24].any() and query[:16].all() and query[24:].all()
    assert not out[:, 16:24].any() and out[:, :16].all()
    assert bits["encoder.layer.0.attention.self.value.weight"].all()
    assert int((~bits["encoder.layer.1.attention.self.key.weight"]).sum()) == 8 * 32


def test_ffn_layers_and_neurons_expand(bert):
    adapter = EncoderAdapter(bert)
    whole = StructuredMask.full(adapter, "layer")
    whole.ffn[0] = False
    bits = whole.to_unstructured(adapter).tensors
    assert not bits["encoder.layer.0.intermediate.dense.weight"].any()
    assert not bits["encoder.layer.0.output.dense.weight"].any()
    assert bits["encoder.layer.1.output.dense.weight"].all()

    neurons = StructuredMask.full(adapter, "neuron")
    neurons.ffn[1, [3, 10]] = False
    bits = neurons.to_unstructured(adapter).tensors
    ffn_in = bits["encoder.layer.1.intermediate.dense.weight"]
    ffn_out = bits["encoder.layer.1.output.dense.weight"]
    assert not ffn_in[[3, 10]].any() and int((~ffn_in).sum()) == 2 * 32
    assert not ffn_out[:, [3, 10]].any() and int((~ffn_out).sum()) == 2 * 32


def test_expanded_head_mask_matches_the_sparsity_it_implies(bert):
    adapter = EncoderAdapter(bert)
    mask = StructuredMask(
        torch.tensor([[True, False, False, True], [True, True, True, True]]), torch.tensor([True, True])
    )
    assert mask.head_sparsity() == 0.25
    expanded = mask.to_unstructured(adapter)
    attention = [n for n in expanded.tensors if ".attention." in n and ".layer.0." in n]
    kept = sum(int(expanded.tensors[n].sum()) for n in attention)
    assert kept == 4 * 32 * 32 // 2
