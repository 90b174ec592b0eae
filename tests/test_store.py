"""The run store: pinned run names, refusal to mix specs, steps that skip or redo themselves."""

from dataclasses import dataclass, field

import pytest

from ticketlab.errors import TicketlabError
from ticketlab.experiments.store import RunDirectory, non_default_fields, spec_hash
from ticketlab.io import read_json


@dataclass
class ToySpec:
    model: str = field(metadata={"help": "model id"})
    lr: float = 2e-5
    levels: list = field(default_factory=lambda: [0.1, 0.2])
    seed: int = 0


def test_hash_depends_only_on_non_default_fields():
    assert non_default_fields(ToySpec("bert")) == {"model": "bert"}
    assert spec_hash(ToySpec("bert")) == spec_hash(ToySpec("bert", lr=2e-5, seed=0))
    assert spec_hash(ToySpec("bert")) != spec_hash(ToySpec("bert", seed=1))
    assert spec_hash(ToySpec("bert", levels=[0.1, 0.2])) == spec_hash(ToySpec("bert"))


def test_run_names_are_pinned():
    # If this changes, every existing run directory would be orphaned: change it only on purpose.
    assert spec_hash(ToySpec("bert-base-uncased")) == "cbf830b735bb"


def test_a_different_spec_is_refused(tmp_path):
    RunDirectory.open(ToySpec("bert"), tmp_path / "run")
    RunDirectory.open(ToySpec("bert"), tmp_path / "run")  # same spec: fine
    with pytest.raises(TicketlabError, match="fields that differ: seed"):
        RunDirectory.open(ToySpec("bert", seed=3), tmp_path / "run")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TicketlabError, match="not a ticketlab run directory"):
        RunDirectory.open(ToySpec("bert"), tmp_path / "other")


def test_store_names_runs_by_hash(tmp_path):
    run = RunDirectory.in_store(ToySpec("bert"), tmp_path)
    assert run.path.name == f"toy_{spec_hash(ToySpec('bert'))}"
    assert read_json(run.path / "versions.json")["ticketlab"]


def test_finished_steps_are_skipped_and_half_finished_redone(tmp_path):
    run = RunDirectory.open(ToySpec("bert"), tmp_path / "run")
    calls = []

    def body(out):
        calls.append(1)
        (out / "mask.txt").write_text("bits")
        return "computed"

    assert run.run_step("level_1", body, load=lambda p: (p / "mask.txt").read_text()) == "computed"
    assert run.run_step("level_1", body, load=lambda p: (p / "mask.txt").read_text()) == "bits"
    assert len(calls) == 1

    def crash(out):
        (out / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.run_step("level_2", crash)
    assert not run.is_done("level_2") and not (run.path / "level_2").exists()
    run.run_step("level_2", body)
    assert run.is_done("level_2") and not list(run.path.glob(".level_2.*"))
    assert sorted(p.name for p in (run.path / "level_2").iterdir()) == ["DONE", "mask.txt"]


def test_the_replicate_key_is_pinned():
    # It names the rows of reports (run names are pinned in test_imp_mlm): change it on purpose only.
    from ticketlab.analysis.aggregate import replicate_key

    assert replicate_key(
        {"model": "bert-base-uncased", "task": "rte", "lr": 2e-5, "epochs": 3, "seed": 0}
    ) == ("ee0ff840")


def test_a_grown_spec_keeps_the_run_and_records_what_it_grew_from(tmp_path):
    from ticketlab.experiments.imp import ImpSpec

    RunDirectory.open(ImpSpec(model="m", task="rte", levels=[0.2, 0.4]), tmp_path / "run")
    RunDirectory.open(ImpSpec(model="m", task="rte", levels=[0.2, 0.4, 0.6]), tmp_path / "run")  # grows
    recorded = read_json(tmp_path / "run" / "spec.json")
    assert recorded["spec"]["levels"] == [0.2, 0.4, 0.6]
    assert recorded["grown_from"][0]["spec"]["levels"] == [0.2, 0.4]
    with pytest.raises(TicketlabError, match="fields that differ: levels"):  # not on top: another run
        RunDirectory.open(ImpSpec(model="m", task="rte", levels=[0.3, 0.6]), tmp_path / "run")
    with pytest.raises(TicketlabError, match="fields that differ: seed"):
        RunDirectory.open(ImpSpec(model="m", task="rte", levels=[0.2, 0.4, 0.6], seed=1), tmp_path / "run")
