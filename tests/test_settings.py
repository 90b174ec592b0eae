"""The one declaration of the training settings, and the flags made from the specs.

Every spec that trains declares its settings with ``training.settings.setting``; every verb's
flags are made from its spec (``cli.common.add_spec_arguments``). These tests pin what must not
move (the serialised form and the hashes of existing specs, so run directories keep their names)
and check, for each verb, that every field of its spec has a flag whose value reaches the spec:
a field added later without a flag fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import typing
from dataclasses import MISSING, asdict, fields

import pytest

from ticketlab.cli import build_parser, main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.finetune import RECIPE_FIELDS, FinetuneSpec
from ticketlab.experiments.grid.spec import GridSpec
from ticketlab.experiments.imp import ImpSpec
from ticketlab.experiments.imp_mlm import MlmRecipe
from ticketlab.experiments.multitask import MultitaskSpec
from ticketlab.experiments.pretrain_loss import PretrainLossSettings, PretrainLossSpec
from ticketlab.experiments.store import spec_hash
from ticketlab.experiments.tamt import TamtSettings, TamtSpec
from ticketlab.experiments.winning_tickets import WinningSpec
from ticketlab.pruning import PROTOCOLS
from ticketlab.training.attention_classifier import ClassifierSettings
from ticketlab.training.settings import SETTINGS, check_settings

TRAINING_SPECS = (
    FinetuneSpec,
    MlmRecipe,
    TamtSettings,
    TamtSpec,
    MultitaskSpec,
    PretrainLossSettings,
    PretrainLossSpec,
    ClassifierSettings,
)


def _form(spec, drop: tuple[str, ...] = ()) -> str:
    data = {k: v for k, v in asdict(spec).items() if k not in drop}
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


# (spec, sha256 of json.dumps(asdict(spec)) [keys, order and values], spec_hash, digest): the
# values of the code before the settings were declared in one place.
PINNED = [
    (lambda: FinetuneSpec(model="m", task="rte"), "f929641a9a37d252", "1126dbd94088", "c2b3a0f47322b37a"),
    (
        lambda: FinetuneSpec(model="m", task="squad", lr=1e-4, batch_size=8, doc_stride=64, seed=3),
        "b003e137ca6fe7e0",
        "efd64fd23d40",
        "d76e34fe9223d3b0",
    ),
    (
        lambda: TamtSpec(model="m", objective="kd", sparsity=0.5),
        "1ba37993b98cb1b4",
        "98b3fe639116",
        "7c5ba532078852f2310bff50",
    ),
    (
        lambda: TamtSpec(
            model="m", objective="mlm", sparsity=0.7, lr=1e-3, steps=50, save_at=(10, 20), optimizer="adamw"
        ),
        "f4995a2df82dddc0",
        "2579324225e9",
        "2efbdef950d649e7534ee85f",
    ),
    (lambda: TamtSettings(text="t", steps=5), "901fb26ceefc645d", "20d4dff1abfa", None),
    (lambda: MultitaskSpec(model="m", tasks=["rte", "sst2"]), "42f4482044bf115b", "3819e8eb4463", None),
    (lambda: MlmRecipe(), "4af81cfd61f20403", "8fe857e8c83d", None),
    (lambda: PretrainLossSpec(model="m"), "c5e5e18d3185662a", "e60739924dbf", None),
    (lambda: PretrainLossSettings(text="t"), "befdb3e1c1d52913", "9e652c8097fe", None),
    (
        lambda: ImpSpec(model="m", task="mlm", recipe={"steps": 10, "lr": 1e-3}),
        "22fc794ac56574d9",  # lr_horizon added (its default keeps the run hash)
        "17e283a3baec",
        None,
    ),
    (
        lambda: GridSpec(
            model="m",
            tasks=["rte"],
            methods=["tamt"],
            tamt={"text": "t", "steps": 5},
            pretrain_loss={"text": "t"},
        ),
        "33867c44dd808cc1",
        "00543e1c4bd6",
        None,
    ),
]


@pytest.mark.parametrize("make, form, run_hash, digest", PINNED)
def test_serialised_specs_and_their_hashes_are_unchanged(make, form, run_hash, digest):
    spec = make()
    assert _form(spec) == form
    assert spec_hash(spec) == run_hash
    if digest is not None:
        assert spec.digest() == digest


def test_all_winning_scheme_leaves_existing_runs_as_they_were():
    """``scheme`` (for --protocol) is new: at its default the run's hash is the old one, and the
    rest of spec.json is what it was (old spec.json files still load)."""
    plain = WinningSpec(model="m", task="rte")
    magnitude = WinningSpec(model="m", task="rte", method="magnitude", scope="encoder+embeddings")
    assert (spec_hash(plain), spec_hash(magnitude)) == ("cc95a725f017", "f09e3feb2af0")
    assert _form(plain, drop=("scheme",)) == "1c47a37d0d9b5b1d"
    assert _form(magnitude, drop=("scheme",)) == "c4f66c1f0d9d390f"
    old = {k: v for k, v in asdict(plain).items() if k != "scheme"}
    assert WinningSpec(**old) == plain
    assert spec_hash(WinningSpec(model="m", task="rte", scheme="per-matrix")) != spec_hash(plain)


def _settings_types() -> list[type]:
    """Every dataclass of the layers that hold settings whose name says it holds settings."""
    import importlib
    import inspect
    import pkgutil

    import ticketlab.experiments
    import ticketlab.training

    found = []
    for package in (ticketlab.training, ticketlab.experiments):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if (
                    inspect.isclass(value)
                    and dataclasses.is_dataclass(value)
                    and value.__module__ == module.__name__
                    and value.__name__.endswith(("Spec", "Settings", "Options", "Recipe", "Config"))
                ):
                    found.append(value)
    return found


def test_no_settings_type_declares_a_training_setting_of_its_own():
    """Beyond the specs listed above: a settings type added later (a spec, options, a recipe) that
    has a field named like a training setting must declare it with ``setting()``."""
    types = _settings_types()
    assert set(TRAINING_SPECS) <= set(types) and len(types) > len(TRAINING_SPECS)
    for spec_class in types:
        for spec_field in fields(spec_class):
            if spec_field.name in SETTINGS:
                assert spec_field.metadata.get("setting") == spec_field.name, (
                    f"{spec_class.__module__}.{spec_class.__name__}.{spec_field.name}: declare it with "
                    "ticketlab.training.settings.setting()"
                )


@pytest.mark.parametrize("spec_class", TRAINING_SPECS, ids=lambda c: c.__name__)
def test_every_training_setting_of_a_spec_is_the_shared_declaration(spec_class):
    """A field named like a training setting is made by ``setting()`` (its help starts with the
    shared meaning, ``check_settings`` checks it): no spec re-declares one on its own."""
    by_name = {f.name: f for f in fields(spec_class)}
    found = [name for name in SETTINGS if name in by_name]
    assert found, f"{spec_class.__name__} declares no training setting"
    for name in found:
        assert by_name[name].metadata.get("setting") == name, f"{spec_class.__name__}.{name}"
        assert by_name[name].metadata["help"].startswith(SETTINGS[name].meaning)


@pytest.mark.parametrize("spec_class", TRAINING_SPECS, ids=lambda c: c.__name__)
def test_every_default_is_a_valid_value(spec_class):
    for spec_field in fields(spec_class):
        name = spec_field.metadata.get("setting")
        if name and spec_field.default not in (None, MISSING):
            assert SETTINGS[name].check(spec_field.default, name) is None, f"{spec_class.__name__}.{name}"
    check_settings(FinetuneSpec(model="m", task="rte", eval_every=None))  # None: the default, accepted


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FinetuneSpec(model="m", task="rte", lr=0.0), "lr must be above 0, got 0.0"),
        (lambda: FinetuneSpec(model="m", task="rte", batch_size=0), "batch size must be at least 1"),
        (lambda: FinetuneSpec(model="m", task="rte", max_grad_norm=0.0), "max grad norm must be above 0"),
        (
            lambda: MultitaskSpec(model="m", tasks=["rte"], warmup_ratio=1.0),
            r"warm-up ratio must be in \[0, 1\)",
        ),
        (
            lambda: MultitaskSpec(model="m", tasks=["rte"], weight_decay=-0.1),
            "weight decay must be at least 0",
        ),
        (lambda: MlmRecipe(eval_every=0), "eval every must be at least 1"),
        (lambda: PretrainLossSpec(model="m", head_steps=-1), "head steps must be at least 0"),
        (lambda: TamtSpec(model="m", objective="kd", sparsity=0.5, checkpoint_every=0), "checkpoint-every"),
        (lambda: TamtSpec(model="m", objective="kd", sparsity=0.5, seed=-1), "a seed is an integer"),
        (lambda: ClassifierSettings(epochs=0), "epochs must be at least 1"),
    ],
)
def test_a_setting_out_of_range_is_one_line_naming_it(make, message):
    """Each spec's validate() checks its settings through check_settings, naming the setting
    (TAMT as its flags spell it)."""
    with pytest.raises(TicketlabError, match=message):
        make().validate()


# -- flags made from the specs ------------------------------------------------------------------
class Captured(Exception):
    """Raised instead of running a pipeline: carries the spec the verb built."""

    def __init__(self, spec):
        super().__init__("captured")
        self.spec = spec


def _capture(monkeypatch, target: str, argv: list[str]):
    """The spec (a dataclass instance among the arguments) the verb hands to ``target``."""
    module, name = target.rsplit(".", 1)

    def fake(*args, **kwargs):
        raise Captured(next(a for a in (*args, *kwargs.values()) if dataclasses.is_dataclass(a)))

    monkeypatch.setattr(f"{module}.{name}", fake)
    with pytest.raises(Captured) as caught:
        main([str(a) for a in argv])
    return caught.value.spec


def _subparser(verb: str) -> argparse.ArgumentParser:
    """The parser of ``verb`` ("tamt", or with its action: "attention-patterns train")."""
    parser = build_parser()
    for word in verb.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _flag_for(parser: argparse.ArgumentParser, dest: str) -> argparse.Action | None:
    return next((a for a in parser._actions if a.dest == dest and a.option_strings), None)


def _other_value(spec_class: type, name: str, action: argparse.Action) -> tuple[list[str], object]:
    """Command-line words that set field ``name`` to a value other than its default, and that value."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # a switch: --name (to True) or --no-name (to False)
        return [flag], action.const
    if action.choices:
        value = next(c for c in action.choices if c != action.default)
        return [flag, value], value
    spec_field = next(f for f in fields(spec_class) if f.name == name)
    hint = typing.get_type_hints(spec_class)[name]
    kinds = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
    default = spec_field.default if spec_field.default is not MISSING else None
    if typing.get_origin(hint) in (list, tuple):
        item = typing.get_args(hint)[0]
        value = [3, 5] if item is int else [0.25, 0.5] if item is float else ["a", "b"]
        return [flag, ",".join(map(str, value))], tuple(value) if typing.get_origin(hint) is tuple else value
    if int in kinds or any(typing.get_origin(k) is None and k is int for k in kinds):
        value = (default or 0) + 3
        return [flag, str(value)], value
    if float in kinds:
        value = 0.25 if default != 0.25 else 0.5
        return [flag, str(value)], value
    return [flag, "some-value"], "some-value"


def _check_flags_reach(monkeypatch, verb, base, target, spec_class, set_by_verb, read=getattr, names=None):
    parser = _subparser(verb)
    names = names or [f.name for f in fields(spec_class) if f.init and f.name not in set_by_verb]
    for name in names:
        action = _flag_for(parser, name)
        assert action is not None, f"ticketlab {verb}: no flag for {spec_class.__name__}.{name}"
        words, value = _other_value(spec_class, name, action)
        spec = _capture(monkeypatch, target, [*verb.split(), *base, *words])
        assert read(spec, name) == value, f"ticketlab {verb} {' '.join(words)}: {name}"
    return names


def test_finetune_flags_reach_the_spec(monkeypatch, tmp_path):
    # squad: the one task with a doc stride (a GLUE task refuses one when the spec is made)
    base = ["--model", "m", "--task", "squad", "--out", tmp_path / "run"]
    required = ("model", "task")
    _check_flags_reach(
        monkeypatch,
        "finetune",
        base,
        "ticketlab.experiments.finetune.run_finetune_step",
        FinetuneSpec,
        required,
    )


def test_tamt_flags_reach_the_spec(monkeypatch, tmp_path):
    base = ["--model", "m", "--objective", "kd", "--sparsity", "0.5", "--out", tmp_path / "m.safetensors"]
    target = "ticketlab.experiments.tamt.run_tamt"
    names = _check_flags_reach(
        monkeypatch, "tamt", base, target, TamtSpec, ("model", "objective", "sparsity", "scope", "scheme")
    )
    assert "score_scale" in names and "warmup_ratio" in names
    # The required fields and the protocol's scope and scheme; budgets in step order, once each.
    spec = _capture(monkeypatch, target, ["tamt", *base, "--protocol", "chen2020", "--save-at", "9,3,9"])
    assert (spec.model, spec.objective, spec.sparsity) == ("m", "kd", 0.5)
    assert (spec.scope, spec.scheme) == ("encoder", "global") and spec.save_at == (3, 9)
    default = _capture(monkeypatch, target, ["tamt", *base])
    assert (default.scope, default.scheme) == (PROTOCOLS["liu2022"]["scope"], PROTOCOLS["liu2022"]["scheme"])
    assert default == TamtSpec(model="m", objective="kd", sparsity=0.5)  # the flags' defaults are the spec's


def test_pretrain_loss_flags_reach_the_spec(monkeypatch, tmp_path):
    target = "ticketlab.experiments.pretrain_loss.run_pretrain_loss"
    _check_flags_reach(monkeypatch, "pretrain-loss", ["--model", "m"], target, PretrainLossSpec, ("model",))
    assert _capture(monkeypatch, target, ["pretrain-loss", "--model", "m"]) == PretrainLossSpec(model="m")


def test_multitask_flags_reach_the_spec(monkeypatch, tmp_path):
    base = ["--model", "m", "--tasks", "rte,sst2", "--out", tmp_path / "run"]
    target = "ticketlab.experiments.multitask.run_multitask"
    _check_flags_reach(
        monkeypatch, "multitask", base, target, MultitaskSpec, ("model", "tasks", "data_dir", "masks")
    )
    spec = _capture(monkeypatch, target, ["multitask", *base, "--data-dir", "d"])
    assert (spec.model, spec.tasks, spec.data_dir) == ("m", ["rte", "sst2"], "d")


def test_attention_classifier_flags_reach_its_settings(monkeypatch, tmp_path):
    import ticketlab.data.attention_maps as maps

    monkeypatch.setattr(maps, "load_map_collection", lambda path: None)
    monkeypatch.setattr(maps, "read_labels", lambda path: None)
    monkeypatch.setattr(maps, "labelled_maps", lambda *args: (None, None))
    base = ["--maps", "m", "--labels", "l", "--out", tmp_path / "cnn"]
    target = "ticketlab.training.attention_classifier.train_pattern_classifier"
    _check_flags_reach(monkeypatch, "attention-patterns train", base, target, ClassifierSettings, ())
    assert _capture(monkeypatch, target, ["attention-patterns", "train", *base]) == ClassifierSettings()


def _recipe(spec, name):
    return spec.recipe[name]


@pytest.mark.parametrize(
    "verb, base, target",
    [
        ("imp", ["--model", "m", "--task", "rte"], "ticketlab.experiments.imp_dispatch.run_imp_on_task"),
        (
            "all-winning",
            ["--model", "m", "--task", "rte"],
            "ticketlab.experiments.winning_tickets.run_all_winning",
        ),
        (
            "super-tickets",
            ["--model", "m", "--task", "rte"],
            "ticketlab.experiments.super_tickets.run_super_tickets",
        ),
    ],
)
def test_recipe_flags_reach_the_recipe(monkeypatch, tmp_path, verb, base, target):
    """Every field a recipe may override is a flag of each verb with a recipe, stored as set."""
    base = [*base, "--out", tmp_path / "run"]
    _check_flags_reach(
        monkeypatch, verb, base, target, FinetuneSpec, (), read=_recipe, names=list(RECIPE_FIELDS)
    )
    assert _capture(monkeypatch, target, [verb, *base]).recipe == {}  # only what the user set


def test_imp_flags_reach_the_spec(monkeypatch, tmp_path):
    base = ["--model", "m", "--task", "mlm", "--out", tmp_path / "run"]
    target = "ticketlab.experiments.imp_dispatch.run_imp_on_task"
    mlm_only = [f.name for f in fields(MlmRecipe) if f.name not in RECIPE_FIELDS]
    _check_flags_reach(monkeypatch, "imp", base, target, MlmRecipe, (), read=_recipe, names=mlm_only)
    own = ("levels", "head", "seed", "text", "eval_text", "lr_horizon")
    _check_flags_reach(monkeypatch, "imp", base, target, ImpSpec, (), names=list(own))
    spec = _capture(monkeypatch, target, ["imp", *base[:2], "--task", "rte", "--data-dir", "d", *base[4:]])
    assert (spec.model, spec.task, spec.data_dir) == ("m", "rte", "d")
    covered = {"model", "task", "data_dir", "scope", "scheme", "recipe", *own}
    assert covered == {f.name for f in fields(ImpSpec)}


def test_all_winning_flags_reach_the_spec(monkeypatch, tmp_path):
    base = ["--model", "m", "--task", "rte", "--out", tmp_path / "run"]
    target = "ticketlab.experiments.winning_tickets.run_all_winning"
    set_by_verb = ("model", "task", "recipe", "scope", "scheme")
    _check_flags_reach(monkeypatch, "all-winning", base, target, WinningSpec, set_by_verb)
    spec = _capture(monkeypatch, target, ["all-winning", *base, "--no-retrain", "--protocol", "liu2022"])
    assert spec.retrain is False
    assert (spec.scope, spec.scheme) == ("encoder+embeddings", "per-matrix")
    spec = _capture(monkeypatch, target, ["all-winning", *base, "--scope", "encoder+embeddings"])
    assert (spec.scope, spec.scheme) == ("encoder+embeddings", "global")  # as before --protocol


def test_importance_flags_reach_its_options(monkeypatch, tmp_path):
    from ticketlab.experiments.importance import ImportanceOptions

    base = ["--model", "m", "--out", tmp_path / "scores.safetensors"]
    target = "ticketlab.experiments.importance.ImportanceOptions.validate"  # the first use of them
    _check_flags_reach(monkeypatch, "importance", base, target, ImportanceOptions, ())
    assert _capture(monkeypatch, target, ["importance", *base]) == ImportanceOptions()


def test_super_tickets_flags_reach_the_spec(monkeypatch, tmp_path):
    from ticketlab.experiments.super_tickets import SuperTicketSpec

    base = ["--model", "m", "--task", "rte", "--out", tmp_path / "run"]
    target = "ticketlab.experiments.super_tickets.run_super_tickets"
    _check_flags_reach(
        monkeypatch, "super-tickets", base, target, SuperTicketSpec, ("model", "task", "recipe")
    )
    spec = _capture(monkeypatch, target, ["super-tickets", *base, "--normalize", "minmax"])
    assert spec.normalization == "minmax"  # the flag keeps its name
    default = _capture(monkeypatch, target, ["super-tickets", *base])
    assert default == SuperTicketSpec(model="m", task="rte")  # the flags' defaults are the spec's


def test_every_verb_with_scope_or_scheme_takes_protocol():
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    with_scope = []
    for verb, sub in verbs.items():
        options = {o for a in sub._actions for o in a.option_strings}
        if {"--scope", "--scheme"} & options:
            with_scope.append(verb)
            assert {"--protocol", "--scope", "--scheme"} <= options, verb
    assert {"prune", "imp", "tamt", "all-winning"} <= set(with_scope)


def test_help_shows_each_verbs_own_defaults(capsys):
    """The same setting, each verb's default: TAMT's batch of 16 blocks, multi-task's 32."""

    def help_of(verb: str) -> str:
        return " ".join(_subparser(verb).format_help().split())

    assert "(default: 16)" in help_of("tamt").split("--batch-size BATCH_SIZE", 2)[2][:200]
    assert "(default: 32)" in help_of("multitask").split("--batch-size BATCH_SIZE", 2)[2][:200]
    assert "default: 2e-5, SQuAD 3e-5" in help_of("finetune")
    assert "default: mlm 5e-5, kd and mlm+kd 2e-5" in help_of("tamt")
