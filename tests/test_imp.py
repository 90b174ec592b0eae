"""IMP's bookkeeping with a stand-in trainer: nesting, exact counts, rewinding, head handling, resume."""

import pytest
import torch
from transformers import BertForSequenceClassification

from ticketlab.errors import TicketlabError
from ticketlab.experiments.imp import ImpSpec, level_name, run_imp
from ticketlab.masks import apply_mask, load_mask
from ticketlab.models.tiny import tiny_model


def build_model():
    return tiny_model("bert", model_class=BertForSequenceClassification, seed=0)


class FakeTrainer:
    """Moves every weight by seeded noise with the mask held, like a few optimizer steps would."""

    def __init__(self, crash_at_level=None):
        self.crash_at_level = crash_at_level
        self.calls = []

    def __call__(self, model, mask, seed, out):
        level = len(self.calls)
        self.calls.append(mask.sparsity if mask is not None else 0.0)
        if mask is not None:
            # rewinding: the encoder starts from the pre-trained weights, pruned entries at zero
            reference = build_model().bert.encoder.layer[0].attention.self.query.weight
            bits = mask.tensors["encoder.layer.0.attention.self.query.weight"]
            enforcer = apply_mask(model, mask)
            assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight[bits], reference[bits])
        generator = torch.Generator().manual_seed(seed * 100 + level)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        if mask is not None:
            enforcer.enforce()
        if self.crash_at_level == level:
            raise KeyboardInterrupt  # as if killed in the middle of the level
        return {"best": {"accuracy": 0.5 + 0.01 * level}}


def test_levels_are_nested_exact_and_rewound(tmp_path):
    spec = ImpSpec(model="tiny", task="rte", levels=[0.2, 0.5, 0.7])
    trainer = FakeTrainer()
    summary = run_imp(spec, tmp_path / "run", build_model, trainer, echo=lambda _: None)
    assert trainer.calls[0] == 0.0 and len(trainer.calls) == 4
    masks = [load_mask(tmp_path / "run" / level_name(i) / "mask.safetensors") for i in (1, 2, 3)]
    for mask, target in zip(masks, spec.levels):
        assert mask.num_pruned() == int(mask.num_weights() * target)
        assert mask.provenance.method == "imp"
    for outer, inner in zip(masks, masks[1:]):
        assert (inner - outer).num_kept() == 0  # each level prunes inside the previous one
    assert [lvl["sparsity"] for lvl in summary["levels"]] == pytest.approx([0.0, 0.2, 0.5, 0.7], abs=1e-3)
    assert not (tmp_path / "run" / level_name(3) / "next_mask.safetensors").exists()


def test_resume_after_a_kill_gives_bit_identical_masks(tmp_path):
    spec = ImpSpec(model="tiny", task="rte", levels=[0.3, 0.6])
    run_imp(spec, tmp_path / "clean", build_model, FakeTrainer(), echo=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        run_imp(spec, tmp_path / "killed", build_model, FakeTrainer(crash_at_level=2), echo=lambda _: None)
    assert not (tmp_path / "killed" / level_name(2)).exists()
    resumed = FakeTrainer()
    resumed.calls = [None, None]  # levels 0 and 1 are done: the trainer sees level 2 first
    run_imp(spec, tmp_path / "killed", build_model, resumed, echo=lambda _: None)
    assert len(resumed.calls) == 3
    for i in (1, 2):
        a = load_mask(tmp_path / "clean" / level_name(i) / "mask.safetensors")
        b = load_mask(tmp_path / "killed" / level_name(i) / "mask.safetensors")
        assert a == b


def test_kept_head_comes_from_the_previous_level(tmp_path):
    heads = []

    def trainer(model, mask, seed, out):
        heads.append(model.classifier.weight.detach().clone())
        with torch.no_grad():
            model.classifier.weight.add_(1.0)
        return {}

    run_imp(
        ImpSpec(model="tiny", task="rte", levels=[0.5]),
        tmp_path / "keep",
        build_model,
        trainer,
        echo=lambda _: None,
    )
    assert torch.allclose(heads[1], heads[0] + 1.0)
    heads.clear()
    run_imp(
        ImpSpec(model="tiny", task="rte", levels=[0.5], head="reinit"),
        tmp_path / "reinit",
        build_model,
        trainer,
        echo=lambda _: None,
    )
    assert torch.equal(heads[1], heads[0])


@pytest.mark.parametrize("levels", [[], [0.5, 0.3], [0.0, 0.5], [0.5, 1.0]])
def test_bad_levels_are_refused(tmp_path, levels):
    with pytest.raises(TicketlabError):
        run_imp(ImpSpec(model="tiny", task="rte", levels=levels), tmp_path, build_model, FakeTrainer())


def test_a_damaged_level_is_named_and_redo_recomputes_it_identically(tmp_path):
    from ticketlab.experiments.store import redo_steps

    spec = ImpSpec(model="tiny", task="rte", levels=[0.3, 0.6])
    out = tmp_path / "run"
    run_imp(spec, out, build_model, FakeTrainer(), echo=lambda _: None)
    clean = load_mask(out / level_name(1) / "mask.safetensors")
    mask_file = out / level_name(1) / "mask.safetensors"
    mask_file.write_bytes(mask_file.read_bytes()[:100])  # truncated after the run
    with pytest.raises(
        TicketlabError, match=r"step level_01 .* damaged: mask.safetensors has 100 bytes.*--redo"
    ):
        run_imp(spec, out, build_model, FakeTrainer(), echo=lambda _: None)
    with pytest.raises(TicketlabError, match="has no step level_09"):
        redo_steps(out, ["level_09"])
    with pytest.raises(TicketlabError, match="name a step inside"):
        redo_steps(out, ["../elsewhere"])
    assert redo_steps(out, ["level_01"]) == ["level_01"]
    trainer = FakeTrainer()
    trainer.calls = [0.0]  # the stand-in trainer seeds its noise by the level it counts
    run_imp(spec, out, build_model, trainer, echo=lambda _: None)
    assert len(trainer.calls) == 2 and load_mask(mask_file) == clean  # only level 1 ran again


def test_the_lr_horizon_option_leaves_existing_run_hashes_unchanged():
    from ticketlab.experiments.store import spec_hash

    # Pinned before the option existed: runs of the default (per-level) schedule keep their names.
    assert spec_hash(ImpSpec(model="bert-base-uncased", task="rte")) == "f3bd6a8c0f82"
    assert spec_hash(ImpSpec(model="m", task="mlm", levels=[0.5], text="t.txt")) == "938425828ee5"
    assert spec_hash(ImpSpec(model="bert-base-uncased", task="rte", lr_horizon="run")) != "f3bd6a8c0f82"
    with pytest.raises(TicketlabError, match="unknown lr horizon 'epoch'"):
        ImpSpec(model="m", task="rte", lr_horizon="epoch").validate()
