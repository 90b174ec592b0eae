import json

import pytest
import torch
from transformers import BertForSequenceClassification

from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.masks import StructuredMask, apply_structured_mask, load_mask, save_mask
from ticketlab.models import EncoderAdapter
from ticketlab.models.shrink import EmptyAttention, encoder_flops, load_shrunk, save_shrunk, shrink
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning.importance import ImportanceScores


def _inputs(seed=0, batch=3, length=11):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (batch, length), generator=generator)
    attention = torch.ones_like(ids)
    attention[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": attention}


def _mask(granularity, fully_pruned, layers=3, heads=4, d_ff=64):
    generator = torch.Generator().manual_seed(7)
    head_bits = torch.rand(layers, heads, generator=generator) > 0.4
    head_bits[:, 0] = True
    if granularity == "layer":
        ffn = torch.tensor([True, False, True])
    else:
        ffn = torch.rand(layers, d_ff, generator=generator) > 0.5
    if fully_pruned:
        head_bits[1] = False  # a layer without attention
        head_bits[2] = False
        if granularity == "layer":
            ffn[2] = False
        else:
            ffn[0] = False  # an FFN with no neurons left
    return StructuredMask(head_bits, ffn)


def _outputs(model, inputs, mask=None):
    with torch.no_grad():
        if mask is None:
            return model(**inputs).last_hidden_state
        with apply_structured_mask(model, mask):
            return model(**inputs).last_hidden_state


@pytest.mark.parametrize(
    "family, granularity, fully_pruned",
    [
        ("bert", "layer", False),
        ("bert", "neuron", True),
        ("roberta", "layer", True),
        ("roberta", "neuron", False),
    ],
)
def test_shrunk_model_equals_gated_model_and_reloads(tmp_path, family, granularity, fully_pruned):
    model = tiny_model(family, seed=0, num_hidden_layers=3)
    mask = _mask(granularity, fully_pruned)
    inputs = _inputs()
    gated = _outputs(model, inputs, mask)
    small = shrink(model, mask)
    torch.testing.assert_close(_outputs(small, inputs), gated, atol=1e-5, rtol=0)
    assert torch.equal(
        _outputs(model, inputs), _outputs(tiny_model(family, seed=0, num_hidden_layers=3), inputs)
    )

    plan = small.ticketlab_shrink_plan
    assert plan.head_counts == mask.heads.sum(dim=1).tolist()
    adapter = EncoderAdapter(small)
    for layer, count in enumerate(plan.head_counts):
        assert adapter.layer_linear(layer, "attention_output").in_features == count * 8
        if count == 0:
            assert isinstance(adapter.layer(layer).attention.self, EmptyAttention)
        else:
            assert adapter.layer_linear(layer, "query").out_features == count * 8
            assert adapter.layer(layer).attention.self.num_attention_heads == count
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in small.parameters())
    pruned_heads = int((~mask.heads).sum())
    neurons = (~mask.ffn).sum() * (64 if granularity == "layer" else 1)
    # Each pruned head: 3 x (32 x 8 weights + 8 biases) + 32 x 8 output columns; each neuron: 32 + 1 + 32.
    assert removed == pruned_heads * (3 * (32 * 8 + 8) + 32 * 8) + int(neurons) * (32 + 1 + 32)

    directory = save_shrunk(small, tmp_path / "small")
    back = load_shrunk(directory)
    torch.testing.assert_close(_outputs(back, inputs), gated, atol=1e-5, rtol=0)
    sdpa = load_shrunk(directory, attn_implementation="sdpa")
    torch.testing.assert_close(_outputs(sdpa, inputs), gated, atol=1e-5, rtol=0)


def test_distilbert_task_model_shrinks_with_an_empty_layer_and_trains(tmp_path):
    model = tiny_model("distilbert", seed=0, n_layers=2)
    mask = StructuredMask(
        torch.tensor([[True, False, True, False], [False] * 4]), torch.tensor([False, True])
    )
    inputs = _inputs()
    small = shrink(model, mask)
    torch.testing.assert_close(_outputs(small, inputs), _outputs(model, inputs, mask), atol=1e-5, rtol=0)
    assert isinstance(small.transformer.layer[1].attention, EmptyAttention)
    assert small.transformer.layer[1].attention.out_lin.in_features == 0

    classifier = tiny_model("bert", seed=1, model_class=BertForSequenceClassification, num_labels=2)
    cut = shrink(
        classifier,
        StructuredMask(
            torch.tensor([[True, True, False, False], [False] * 4]), torch.ones(2, dtype=torch.bool)
        ),
    )
    cut.train()
    loss = cut(**inputs, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()  # zero-width linears train without trouble
    assert cut.classifier.weight.grad is not None
    back = load_shrunk(save_shrunk(cut.eval(), tmp_path / "cls"))
    assert type(back).__name__ == "BertForSequenceClassification"
    with torch.no_grad():
        torch.testing.assert_close(back(**inputs).logits, cut(**inputs).logits, atol=1e-6, rtol=0)


def test_bad_inputs_give_clear_errors(tmp_path):
    model = tiny_model("bert", seed=0)
    with pytest.raises(TicketlabError, match="does not fit"):
        shrink(model, StructuredMask(torch.ones(3, 4, dtype=torch.bool), torch.ones(3, dtype=torch.bool)))
    with pytest.raises(TicketlabError, match="not made by shrink"):
        save_shrunk(model, tmp_path / "x")
    with pytest.raises(TicketlabError, match="not a shrunk ticketlab model"):
        load_shrunk(tmp_path)
    small = shrink(model, StructuredMask.full(EncoderAdapter(model)))
    with pytest.raises(TicketlabError, match="this model was shrunk"):
        apply_structured_mask(small, StructuredMask.full(EncoderAdapter(model)))
    with pytest.raises(TicketlabError, match="already shrunk"):
        shrink(small, StructuredMask.full(EncoderAdapter(model)))


def test_flop_count_of_full_bert_base_layer():
    # Per token of a BERT-base layer at length 128: 4 x 768^2 + 2 x 128 x 768 + 2 x 768 x 3072 multiply-adds.
    per_token = 4 * 768 * 768 + 2 * 128 * 768 + 2 * 768 * 3072
    assert encoder_flops([12], [3072], 768, 64, 128) == 2 * per_token * 128
    assert encoder_flops([0], [0], 768, 64, 128) == 0


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_shrink_structured_masks_and_stability(capsys, tmp_path, bert_dir):
    scores = ImportanceScores(
        torch.rand(2, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.1])
    )
    scores.save(tmp_path / "scores.safetensors")
    code, out, err = _run(
        capsys,
        "structured-masks",
        "--scores",
        tmp_path / "scores.safetensors",
        "--levels",
        "0.25,0.5",
        "--out",
        tmp_path / "masks",
        "--json",
    )
    assert code == 0, err
    written = json.loads(out)["masks"]
    assert len(written) == 6 and {w["heads_pruned"] for w in written} == {2, 4}
    winning = load_mask(tmp_path / "masks" / "winning-0.5.safetensors")
    assert int((~winning.heads).sum()) == 4 and (winning.heads.sum(dim=1) >= 1).all()

    code, out, err = _run(
        capsys,
        "shrink",
        "--model",
        bert_dir,
        "--mask",
        tmp_path / "masks" / "winning-0.5.safetensors",
        "--out",
        tmp_path / "small",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["heads_per_layer"] == winning.heads.sum(dim=1).tolist()
    assert summary["parameters_shrunk"] < summary["parameters_full"]
    small = load_shrunk(tmp_path / "small")
    model = tiny_model("bert", seed=0)
    torch.testing.assert_close(
        _outputs(small, _inputs()), _outputs(model, _inputs(), winning), atol=1e-5, rtol=0
    )

    code, out, _ = _run(
        capsys,
        "shrink",
        "--model",
        bert_dir,
        "--mask",
        tmp_path / "masks" / "random-0.25.safetensors",
        "--out",
        tmp_path / "small2",
    )
    assert code == 0 and "| layer" in out

    for seed in range(3):
        mask = StructuredMask(
            torch.rand(2, 4, generator=torch.Generator().manual_seed(seed)) > 0.5,
            torch.ones(2, dtype=torch.bool),
        )
        save_mask(mask, tmp_path / f"seed{seed}.safetensors")
    paths = [tmp_path / f"seed{s}.safetensors" for s in range(3)]
    code, out, err = _run(capsys, "stability", *paths, "--plot", tmp_path / "survival.png", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {"heads", "ffn"} and data["ffn"]["kept_by_all"] == 2
    assert (tmp_path / "survival.png").stat().st_size > 1000
    code, out, _ = _run(capsys, "stability", *paths)
    assert code == 0 and "Fleiss" in out

    unstructured = tmp_path / "omp.safetensors"
    assert (
        _run(
            capsys, "prune", "--model", bert_dir, "--method", "omp", "--sparsity", 0.5, "--out", unstructured
        )[0]
        == 0
    )
    code, _, err = _run(
        capsys, "shrink", "--model", bert_dir, "--mask", unstructured, "--out", tmp_path / "s3"
    )
    assert code == 2 and "unstructured" in err and len(err.strip().splitlines()) == 1


def test_real_minilm_shrinks_to_the_gated_outputs(tmp_path):
    from tests.conftest import shared_path
    from ticketlab.models import load_encoder, load_tokenizer
    from ticketlab.pruning.structured import nested_structured_masks

    path = str(shared_path("models", "all-MiniLM-L6-v2"))
    model = load_encoder(path)
    tokenizer = load_tokenizer(path)
    inputs = dict(
        tokenizer(
            ["a cat sat on the mat", "structured tickets cut heads and feed-forward layers"],
            padding=True,
            return_tensors="pt",
        )
    )
    generator = torch.Generator().manual_seed(0)
    mask = nested_structured_masks(
        torch.rand(6, 12, generator=generator),
        torch.rand(6, generator=generator),
        kind="random",
        head_fractions=[0.5],
    )[0.5]
    mask.heads[2] = False  # and one layer without attention
    small = load_shrunk(save_shrunk(shrink(model, mask), tmp_path / "minilm"))
    torch.testing.assert_close(_outputs(small, inputs), _outputs(model, inputs, mask), atol=1e-5, rtol=0)
