"""Masks applied to live models stay applied under any optimizer."""

import copy

import pytest
import torch
from transformers import BertForSequenceClassification, RobertaForSequenceClassification

from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.masks import StructuredMask, apply_mask, load_mask, save_mask
from ticketlab.models import EncoderAdapter
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning import prune


def _train(model, optimizer, steps=5):
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        tokens = torch.randint(0, model.config.vocab_size, (4, 12), generator=generator)
        loss = model(input_ids=tokens, labels=torch.randint(0, 2, (4,), generator=generator)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd-momentum"])
def test_pruned_weights_stay_exactly_zero_while_training(bert_dir, optimizer_name):
    model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    mask = prune(model, "omp", 0.7, scope="encoder+embeddings")
    enforcer = apply_mask(model, mask)
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1)
    enforcer.attach(optimizer)
    adapter = EncoderAdapter(model)
    before = {n: adapter.parameter(n).detach().clone() for n in mask.tensors}
    _train(model, optimizer)
    for name, bits in mask.tensors.items():
        weight = adapter.parameter(name).detach()
        assert torch.all(weight[~bits] == 0), name
        assert not torch.equal(weight[bits], before[name][bits]), f"{name} did not train"


def test_gradients_of_pruned_weights_are_zero(bert_dir):
    model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    mask = prune(model, "random", 0.5, seed=1)
    apply_mask(model, mask)
    tokens = torch.randint(0, 100, (2, 8))
    model(input_ids=tokens, labels=torch.tensor([0, 1])).loss.backward()
    adapter = EncoderAdapter(model)
    for name, bits in mask.tensors.items():
        grad = adapter.parameter(name).grad
        assert torch.all(grad[~bits] == 0) and grad[bits].abs().sum() > 0


def test_a_model_converted_to_another_dtype_after_the_mask_keeps_it(bert_dir):
    # The keep masks are stored in the parameters' dtype; a later .double() (or .half() on a GPU)
    # must not break the hooks or let pruned weights move.
    model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    mask = prune(model, "omp", 0.5)
    enforcer = apply_mask(model, mask)
    model.double()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    enforcer.attach(optimizer)
    _train(model, optimizer, steps=2)
    adapter = EncoderAdapter(model)
    for name, bits in mask.tensors.items():
        weight = adapter.parameter(name).detach()
        assert weight.dtype == torch.float64
        assert torch.all(weight[~bits] == 0) and weight[bits].abs().sum() > 0, name


def test_checkpoint_keeps_plain_names_and_loads_into_a_plain_model(bert_dir, tmp_path):
    model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    mask = prune(model, "omp", 0.5)
    enforcer = apply_mask(model, mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    enforcer.attach(optimizer)
    _train(model, optimizer, steps=2)
    names_before = set(BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2).state_dict())
    assert set(model.state_dict()) == names_before
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    weight = reloaded.bert.encoder.layer[0].attention.self.query.weight
    assert torch.all(weight[~mask.tensors["encoder.layer.0.attention.self.query.weight"]] == 0)


def test_mask_from_the_base_model_applies_to_a_task_model_and_again(bert, bert_dir, tmp_path):
    mask = prune(bert, "omp", 0.5)
    path = save_mask(mask, tmp_path / "m.safetensors")
    model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=3)
    apply_mask(model, load_mask(path))
    apply_mask(model, load_mask(path))  # already masked: kept weights still match the fingerprint


def test_roberta_classifier_skips_the_pooler(roberta_dir):
    base = tiny_model("roberta")
    mask = prune(base, "omp", 0.5)
    assert any(info.role == "pooler" for info in mask.info.values())
    classifier = RobertaForSequenceClassification.from_pretrained(roberta_dir, num_labels=2)
    enforcer = apply_mask(classifier, mask)
    assert enforcer.report.skipped == {"pooler.dense.weight": "the model has no pooler"}


def test_mask_for_another_model_names_the_first_mismatch(bert):
    mask = prune(bert, "omp", 0.5)
    with pytest.raises(
        MaskMismatchError, match=r"embeddings|encoder\.layer\.0\.attention\.self\.query\.weight"
    ):
        apply_mask(tiny_model("bert", seed=1), mask)  # same shapes, other weights
    with pytest.raises(MaskMismatchError, match=r"shape"):
        apply_mask(tiny_model("bert", hidden_size=48, intermediate_size=64), mask)
    with pytest.raises(MaskMismatchError, match=r"does not exist"):
        apply_mask(tiny_model("distilbert"), mask)
    apply_mask(tiny_model("bert", seed=1), mask, allow_fingerprint_mismatch=True)


def test_fingerprint_names_the_changed_matrix(bert):
    mask = prune(bert, "omp", 0.5)
    other = tiny_model("bert", seed=0)
    with torch.no_grad():
        other.encoder.layer[1].intermediate.dense.weight.mul_(1.5)
    with pytest.raises(MaskMismatchError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight"):
        apply_mask(other, mask)


def test_structured_masks_are_pointed_to_gates(bert):
    adapter = EncoderAdapter(bert)
    with pytest.raises(TicketlabError, match="gates"):
        apply_mask(bert, StructuredMask.full(adapter))


def test_a_checkpoint_without_pooler_weights_keeps_its_random_pooler_out_of_scope(tmp_path):
    from transformers import BertForMaskedLM

    from ticketlab.models import load_encoder

    tiny_model("bert", model_class=BertForMaskedLM).save_pretrained(tmp_path / "mlm")
    encoder = load_encoder(str(tmp_path / "mlm"))  # its pooler is freshly initialised
    mask = prune(encoder, "omp", 0.5)
    assert not any(info.role == "pooler" for info in mask.info.values())
    torch.manual_seed(123)  # another random pooler: must not matter
    classifier = load_encoder(str(tmp_path / "mlm"), model_class=BertForSequenceClassification, num_labels=2)
    apply_mask(classifier, mask)

    with_pooler = prune(tiny_model("bert"), "omp", 0.5)  # a mask that does cover a trained pooler
    tiny_model("bert").save_pretrained(tmp_path / "base")
    headless = load_encoder(str(tmp_path / "base"), model_class=BertForSequenceClassification, num_labels=2)
    assert apply_mask(headless, with_pooler).report.skipped == {}
    enforcer = apply_mask(classifier, with_pooler, allow_fingerprint_mismatch=True)
    assert "was not pre-trained" in enforcer.report.skipped["pooler.dense.weight"]


def test_keep_masks_take_one_byte_per_masked_weight(bert_dir):
    model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    mask = prune(model, "omp", 0.5)
    enforcer = apply_mask(model, mask)
    assert enforcer.keep_mask_bytes() == mask.num_weights()
    model.double()  # a new dtype needs no new mask
    tokens = torch.randint(0, 100, (2, 8))
    model(input_ids=tokens, labels=torch.tensor([0, 1])).loss.backward()
    enforcer.enforce()
    assert enforcer.keep_mask_bytes() == mask.num_weights()


def test_enforced_training_equals_the_hand_masked_reference_bit_for_bit(bert_dir):
    # The enforcer against its definition: after backward, the pruned gradients are zeroed (before
    # clipping, so the norm is the sparse network's), and after every optimizer step the pruned
    # weights are set to zero. Any change to how or when it zeroes (skipping the gradient mask,
    # zeroing after clipping, another mask dtype that rounds) breaks the equality or the moments.
    model = BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    mask = prune(model, "omp", 0.6, scope="encoder+embeddings")
    models = {"a": model, "b": copy.deepcopy(model)}  # the same classifier head too
    enforcer = apply_mask(models["a"], mask)
    adapter = EncoderAdapter(models["b"])
    keeps = {adapter.parameter(n): bits.float() for n, bits in mask.tensors.items()}
    with torch.no_grad():
        for param, keep in keeps.items():
            param.mul_(keep)
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for n, m in models.items()}
    enforcer.attach(optimizers["a"])
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        tokens = torch.randint(0, 100, (4, 12), generator=generator)
        labels = torch.randint(0, 2, (4,), generator=generator)
        for name, model in models.items():
            torch.manual_seed(1)  # the same dropout in both
            model(input_ids=tokens, labels=labels).loss.backward()
            if name == "b":
                for param, keep in keeps.items():
                    param.grad.mul_(keep)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # the norm of the sparse network
            optimizers[name].step()
            if name == "b":
                with torch.no_grad():
                    for param, keep in keeps.items():
                        param.mul_(keep)
            optimizers[name].zero_grad(set_to_none=True)
    state_b = models["b"].state_dict()
    assert all(torch.equal(value, state_b[key]) for key, value in models["a"].state_dict().items())
    # Adam's moments of pruned weights never left zero (their gradients were zero from the start).
    for name, bits in mask.tensors.items():
        state = optimizers["a"].state[EncoderAdapter(models["a"]).parameter(name)]
        assert torch.all(state["exp_avg"][~bits] == 0) and torch.all(state["exp_avg_sq"][~bits] == 0), name
        assert torch.all(EncoderAdapter(models["a"]).parameter(name).detach()[~bits] == 0), name
