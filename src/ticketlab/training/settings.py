"""The training settings: one declaration per setting, shared by every spec that trains.

Fine-tuning (``FinetuneSpec``), MLM training (``MlmRecipe``), TAMT (``TamtSettings``), multi-task
training (``MultitaskSpec``) and pre-training losses (``PretrainLossSettings``) each have some of
these settings. A spec declares the ones it has as plain fields made by :func:`setting`, with its
own default (TAMT's batch of 16 blocks, fine-tuning's task-dependent learning rate), so its fields,
its ``spec.json`` and every hash made from them stay flat and unchanged. What a setting means,
the values it may take and the one-line error for a value out of range live here, once:
:func:`check_settings` checks every such field of a spec, and the command line makes one flag
per field (``cli/common.py``: ``add_spec_arguments``) with the help text below.

Adding a setting: declare it in :data:`SETTINGS`, add a field ``name: T = setting("name", default)``
to each spec that has it, and read it where the spec trains. The flag, its help, the check and the
test that every verb's flags reach its spec follow from the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.specs import check_seed


def _at_least(bound: int) -> Callable[[Any, str], str | None]:
    def check(value: Any, label: str) -> str | None:
        return None if value >= bound else f"{label} must be at least {bound}, got {value}"

    return check


def _above_zero(value: Any, label: str) -> str | None:
    return None if value > 0 else f"{label} must be above 0, got {value}"


def _ratio(value: Any, label: str) -> str | None:
    return None if 0.0 <= value < 1.0 else f"{label} must be in [0, 1), got {value}"


def _seed(value: Any, label: str) -> str | None:
    check_seed(value, label)
    return None


@dataclass(frozen=True)
class Setting:
    """One training setting: what it means (the start of every flag's help), its valid values and
    (when not its name with spaces) its name in prose, for messages."""

    meaning: str
    check: Callable[[Any, str], str | None]
    words: str | None = None


SETTINGS: dict[str, Setting] = {
    "lr": Setting("peak learning rate", _above_zero),
    "batch_size": Setting("batch size", _at_least(1)),
    "eval_batch_size": Setting("evaluation batch size", _at_least(1)),
    "epochs": Setting("passes over the training data", _at_least(1)),
    "steps": Setting("optimizer steps", _at_least(1)),
    "max_length": Setting("tokens per input", _at_least(1)),
    "warmup_ratio": Setting("fraction of the steps with a linear warm-up", _ratio, "warm-up ratio"),
    "weight_decay": Setting("weight decay", _at_least(0)),
    "max_grad_norm": Setting("gradient clipping norm", _above_zero),
    "eval_every": Setting("also evaluate every N steps", _at_least(1)),
    "log_every": Setting("steps per line of the training log", _at_least(1)),
    "seed": Setting("random seed", _seed),
    "max_train_samples": Setting("train on the first N training examples only", _at_least(1)),
    "max_eval_samples": Setting("evaluate on the first N examples of each dev split only", _at_least(1)),
    "max_sequences": Setting("use only the first N text blocks", _at_least(1)),
    "max_eval_sequences": Setting("evaluate on at most N held-out text blocks", _at_least(1)),
    "head_steps": Setting("steps training a new MLM head for a model without one", _at_least(0)),
    "checkpoint_every": Setting("steps between resumable checkpoints", _at_least(1)),
}


def setting(name: str, default: Any = dataclasses.MISSING, *, note: str = "") -> Any:
    """A spec field for the training setting ``name``: its shared meaning, then ``note`` (what
    this spec adds: its recipe, how a None default is filled), as the field's help text."""
    meaning = SETTINGS[name].meaning
    help_text = f"{meaning} ({note})" if note else meaning
    return dataclasses.field(default=default, metadata={"help": help_text, "setting": name})


def setting_fields(spec_class: type) -> list[dataclasses.Field]:
    """The fields of ``spec_class`` declared with :func:`setting`."""
    return [f for f in dataclasses.fields(spec_class) if "setting" in f.metadata]


def check_settings(spec: Any, label: Callable[[str], str] | None = None) -> None:
    """Raise one :class:`TicketlabError` line for the first training setting of ``spec`` out of its
    range (a None value means "the default" and passes). ``label`` names a field in the message
    (default: the setting in words, "warm-up ratio"; TAMT names its flags, "warmup-ratio")."""
    for spec_field in setting_fields(type(spec)):
        value = getattr(spec, spec_field.name)
        if value is None:
            continue
        declared = SETTINGS[spec_field.metadata["setting"]]
        words = label(spec_field.name) if label else declared.words or spec_field.name.replace("_", " ")
        problem = declared.check(value, words)
        if problem:
            raise TicketlabError(problem)
