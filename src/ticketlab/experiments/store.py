"""The run store: content-addressed run directories whose steps skip themselves when done.

A run directory is named from a hash of its spec's non-default fields (OpenLTH's idea), so the
same experiment always lands in the same place and a changed one never overwrites it. Its steps
follow the step protocol of ``experiments/steps.py``: claimed, written into the claimer's temporary
folder, published by one rename; any number of processes may share the directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ticketlab import __version__
from ticketlab.errors import TicketlabError
from ticketlab.experiments.steps import StepStore
from ticketlab.io import read_json, write_json

T = TypeVar("T")


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """A dataclass spec as plain JSON-able data (nested specs included)."""
    return json.loads(json.dumps(dataclasses.asdict(spec), default=str))


def non_default_fields(spec: Any) -> dict[str, Any]:
    """The fields of ``spec`` that differ from their defaults (required fields always count).

    A field whose value is itself a dataclass (a settings section such as a grid's ``tamt``)
    counts with its own non-default fields only, so a new setting with a default added to the
    section later leaves existing run names unchanged.
    """
    values = spec_to_dict(spec)
    changed = {}
    for f in dataclasses.fields(spec):
        if f.metadata.get("hashed", True) is False:
            continue
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changed[f.name] = non_default_fields(value)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            changed[f.name] = values[f.name]
            continue
        default = json.loads(json.dumps(default, default=str))
        if values[f.name] != default:
            changed[f.name] = values[f.name]
    return changed


def spec_hash(spec: Any) -> str:
    """A short stable hash of the spec's kind and non-default fields."""
    payload = json.dumps({"kind": type(spec).__name__, "fields": non_default_fields(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def versions() -> dict[str, str]:
    """Versions recorded with every run (never hashed)."""
    import torch
    import transformers

    return {
        "ticketlab": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _record_versions(path: Path) -> None:
    """Record the versions that started the run; a resume under other versions is added to
    ``resumed_with`` (never overwriting the first record)."""
    current = versions()
    if not path.exists():
        write_json(path, current)
        return
    recorded = read_json(path)
    history = [{k: recorded.get(k) for k in current}, *recorded.get("resumed_with", [])]
    if current not in history:
        write_json(path, {**recorded, "resumed_with": [*recorded.get("resumed_with", []), current]})


def _growth_of(spec: Any, found: dict[str, Any]) -> str | None:
    """Whether ``spec`` is the recorded run ``found`` grown (more seeds, tasks, levels, ...): the
    same in every field but the spec class's ``growable_fields``, and accepted by its
    ``grows_from(recorded)`` check when it has one. Returns the recorded hash, or None."""
    growable = getattr(type(spec), "growable_fields", ())
    if not growable or found.get("kind") != type(spec).__name__:
        return None
    try:
        recorded = type(spec)(**found.get("spec", {}))
    except (TypeError, TicketlabError):
        return None
    fixed = {k: v for k, v in non_default_fields(spec).items() if k not in growable}
    fixed_before = {k: v for k, v in non_default_fields(recorded).items() if k not in growable}
    if fixed != fixed_before:
        return None
    check = getattr(spec, "grows_from", None)
    if check is not None and not check(recorded):
        return None
    return found.get("hash")


class RunDirectory:
    """One run: ``spec.json``, ``versions.json``, and step folders that appear only when finished.

    ``RunDirectory.open(spec, out)`` uses ``out`` as the run directory. If it already holds a
    different spec, it refuses rather than mixing two experiments, unless the spec class declares
    the difference a growth (``growable_fields``: a grid with more seeds, IMP with more levels),
    in which case every finished step stands and ``spec.json`` records what it grew from.
    """

    def __init__(self, path: Path, spec: Any):
        self.path = path
        self.spec = spec

    @classmethod
    def open(cls, spec: Any, path: str | os.PathLike) -> RunDirectory:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise TicketlabError(f"{path} exists and is not a directory")
        spec_file = path / "spec.json"
        wanted = {"kind": type(spec).__name__, "hash": spec_hash(spec), "spec": spec_to_dict(spec)}
        grown = None
        if spec_file.exists():
            found = read_json(spec_file)
            if found.get("hash") != wanted["hash"] or found.get("kind") != wanted["kind"]:
                grown = _growth_of(spec, found)
                if grown is None:
                    differing = sorted(
                        k
                        for k in set(found.get("spec", {})) | set(wanted["spec"])
                        if found.get("spec", {}).get(k) != wanted["spec"].get(k)
                    )
                    raise TicketlabError(
                        f"{path} holds a different {found.get('kind', 'run')} (fields that differ: "
                        f"{', '.join(differing) or 'kind'}); choose another --out or remove it"
                    )
        elif path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise TicketlabError(f"{path} is not empty and holds no spec.json: not a ticketlab run directory")
        path.mkdir(parents=True, exist_ok=True)
        if grown is not None:  # the same run, grown: its finished steps all stand
            history = [*found.get("grown_from", []), {"hash": found["hash"], "spec": found["spec"]}]
            write_json(spec_file, {**wanted, "grown_from": history})
        elif not spec_file.exists():
            write_json(spec_file, wanted)
        _record_versions(path / "versions.json")
        return cls(path, spec)

    @classmethod
    def in_store(cls, spec: Any, root: str | os.PathLike) -> RunDirectory:
        """A run directory named from the spec's hash under ``root``."""
        prefix = getattr(spec, "run_prefix", type(spec).__name__.lower().removesuffix("spec"))
        return cls.open(spec, Path(root) / f"{prefix}_{spec_hash(spec)}")

    # -- steps ----------------------------------------------------------------------------------
    @property
    def steps(self) -> StepStore:
        """The step protocol of this run (claims, temporary folders, publication by rename)."""
        return StepStore(self.path)

    def step_path(self, name: str) -> Path:
        return self.path / name

    def is_done(self, name: str) -> bool:
        return self.steps.is_done(name)

    def run_step(
        self,
        name: str,
        body: Callable[[Path], T],
        load: Callable[[Path], T] | None = None,
        *,
        required: Iterable[str] = (),
    ) -> T | None:
        """Run ``body(tmp_dir)`` as step ``name`` through the step protocol (``experiments/steps.py``).

        A finished step is verified and skipped (``load(step_dir)`` gives its result back when
        given); one that another live process computes is waited for; one left by a dead process
        is taken over. ``required`` are the files the step must hold.
        """
        return self.steps.run(name, body, load=load, required=required)

    def redo(self, names: Iterable[str]) -> list[str]:
        """Remove the finished steps ``names`` (``--redo``) so this run computes them again."""
        return redo_steps(self.path, names)


def redo_steps(root: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """``--redo``: remove the finished steps ``names`` (paths relative to the run directory
    ``root``, e.g. ``level_02`` or ``cells/rte/omp-0.50-seed0``) so the next run computes them
    again. A name that is not a step of ``root`` is a one-line error; nothing is removed then."""
    root = Path(root)
    targets = []
    for name in names:
        relative = Path(name.strip("/"))
        if not name.strip("/") or relative.is_absolute() or ".." in relative.parts:
            raise TicketlabError(f"--redo {name!r}: name a step inside {root}, e.g. level_02")
        partial = StepStore(root / relative.parent).partial_path(relative.name)
        if not (root / relative).exists() and not partial.exists():
            raise TicketlabError(f"--redo {name}: {root} has no step {name}")
        targets.append(relative)
    return [str(t) for t in targets if StepStore(root / t.parent).redo(t.name)]
