"""The shared training loop as TAMT uses it: a given optimizer, a constant or resumed rate, no stale gradients,
batches from any re-iterable; and the TAMT driver's refusal of a checkpoint past --steps."""

import pytest
import torch
from torch import nn

from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from ticketlab.errors import TicketlabError
from ticketlab.training.loop import Callback, TrainConfig, train


class Steps:
    """A re-iterable with a length (not a DataLoader): one batch per step."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class Rates(Callback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, state):
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def test_given_optimizer_constant_rate_and_no_stale_gradients_match_a_plain_loop():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3)
    reference, trained = nn.Linear(3, 1), nn.Linear(3, 1)
    trained.load_state_dict(reference.state_dict())
    for model in (reference, trained):  # gradients left over from earlier work
        model(torch.ones(2, 3)).sum().backward()

    def loss_fn(model, batch):
        return model(batch["x"]).pow(2).mean()

    plain = torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.3, foreach=False)
    for batch in x:
        plain.zero_grad(set_to_none=True)
        loss_fn(reference, {"x": batch}).backward()
        plain.step()

    optimizer = torch.optim.AdamW(trained.parameters(), lr=0.1, weight_decay=0.3, foreach=False)
    rates = Rates()
    config = TrainConfig(lr=0.1, max_steps=6, max_grad_norm=None, lr_schedule="constant", quiet=True)
    result = train(
        trained,
        Steps([{"x": b} for b in x]),
        None,
        config,
        callbacks=[rates],
        loss_fn=loss_fn,
        optimizer=optimizer,
    )
    assert result.steps == 6 and result.train_examples == 6 * 4
    assert rates.lrs == [0.1] * 6
    for a, b in zip(reference.parameters(), trained.parameters()):
        assert torch.equal(a, b)  # bit for bit: the same updates, no stale gradient added


def test_unknown_schedule_is_refused():
    with pytest.raises(TicketlabError, match="unknown learning-rate schedule 'cosine'"):
        TrainConfig(lr_schedule="cosine").validate()


def test_a_resume_with_fewer_steps_stops_at_the_checkpoint_or_refuses(tmp_path, monkeypatch):
    from tests.pretrain_fixtures import tiny_pretraining_setup
    from ticketlab.experiments.tamt import TamtSpec, run_tamt
    from ticketlab.masks import load_mask

    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    model_dir, text = tiny_pretraining_setup(tmp_path, paragraphs=10)
    base = dict(
        model=str(model_dir), objective="kd", sparsity=0.5, text=str(text), batch_size=4, max_length=16
    )
    # At a constant rate (adamw) --steps may change between a crash and the resume.
    settings = dict(base, lr=5e-3, checkpoint_every=2, optimizer="adamw")

    def crash(step, _):
        if step == 5:
            raise KeyboardInterrupt

    out = tmp_path / "crashed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        run_tamt(TamtSpec(**settings, steps=6), out, progress=False, on_step=crash)  # checkpoint at 4
    with pytest.raises(TicketlabError, match="at step 4, past --steps 3"):
        run_tamt(TamtSpec(**settings, steps=3), out, progress=False)
    resumed = run_tamt(TamtSpec(**settings, steps=4), out, progress=False)
    whole = run_tamt(TamtSpec(**settings, steps=4), tmp_path / "whole.safetensors", progress=False)
    assert load_mask(resumed["mask"]) == load_mask(whole["mask"])
    assert resumed["search_cost"]["steps"] == 4

    # bertadam's rate decays to zero over --steps: a resume with other steps is another run.
    decaying = dict(settings, optimizer="bertadam")
    out = tmp_path / "decaying.safetensors"
    with pytest.raises(KeyboardInterrupt):
        run_tamt(TamtSpec(**decaying, steps=6), out, progress=False, on_step=crash)
    with pytest.raises(TicketlabError, match="belongs to a different TAMT run"):
        run_tamt(TamtSpec(**decaying, steps=8), out, progress=False)
