"""Helpers shared by the command modules: common flags and output."""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any


def add_output_flags(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", help="print machine-readable JSON instead of tables"
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or chatter")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def format_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain aligned text table (Markdown-compatible)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells[1:]]
    return "\n".join(lines)


def human_size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{num_bytes} B"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GB"


def _flag_type(annotation: Any) -> Any:
    """The argparse type of a spec field: ``int | None`` -> int, ``bool`` -> bool, ..."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _field_default(spec_field: Any) -> Any:
    if spec_field.default_factory is not MISSING:
        return spec_field.default_factory()
    return spec_field.default


def _converter(kind: Any, name: str) -> Any:
    """The argparse ``type`` of one value: seeds and numbers checked as every flag checks them."""
    if kind is int and name.endswith(("seed", "seeds")):
        return seed
    return {float: finite}.get(kind, kind)


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def add_spec_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    spec_class: type,
    *,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    overrides_only: bool = False,
    prefix: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """One flag per field of a spec dataclass: ``--field-name`` (or ``metadata["flag"]``), with the
    field's help text, default, type and choices (``metadata["choices"]`` or a ``Literal`` hint).

    A bool field is a switch: ``--name`` when it defaults to False, ``--no-name`` when it defaults
    to True. A list or tuple field takes comma-separated values. Floats are finite and seeds in
    range (:func:`finite`, :func:`seed`). ``skip`` (or ``only``) leaves the fields the verb sets
    itself; :func:`spec_from_args` builds the spec back. ``overrides_only``: every flag defaults to
    None (the help still shows the spec's default), so a caller can tell which fields the user
    set; for recipes stored as overrides (:func:`spec_overrides`). ``prefix``: the flags of a spec
    nested in a verb's own (``prefix="super"``: ``--super-levels``, stored as ``super_levels``).
    ``defaults``: this verb's defaults of some fields, in place of the spec's (and in the help).
    """
    hints = typing.get_type_hints(spec_class)
    defaults = defaults or {}
    lead = f"{prefix}-" if prefix else ""
    # Required fields first (a subclass's come after its base's), then the rest as declared.
    ordered = sorted(fields(spec_class), key=lambda f: _field_default(f) is not MISSING)
    for spec_field in ordered:
        if (
            not spec_field.init
            or spec_field.name in skip
            or (only is not None and spec_field.name not in only)
        ):
            continue
        field_name = spec_field.name
        name = f"{prefix}_{field_name}" if prefix else field_name
        # (a flag named otherwise in its metadata keeps that name, prefixed)
        flag = "--" + lead + spec_field.metadata.get("flag", "--" + field_name.replace("_", "-"))[2:]
        hint = _flag_type(hints[field_name])
        default = defaults.get(field_name, _field_default(spec_field))
        required = default is MISSING and not overrides_only
        # argparse formats help with %: a literal percent sign is written %% there.
        help_text = spec_field.metadata.get("help", "").replace("%", "%%")
        if hint is bool:
            if default is True:
                parser.add_argument(
                    "--no-" + lead + field_name.replace("_", "-"),
                    dest=name,
                    action="store_const",
                    const=False,
                    default=None if overrides_only else True,
                    help=f"turn off: {help_text}",
                )
            else:
                parser.add_argument(
                    flag,
                    dest=name,
                    action="store_true",
                    default=None if overrides_only else False,
                    help=help_text,
                )
            continue
        options: dict[str, Any] = {"metavar": field_name.upper()}
        origin = typing.get_origin(hint)
        choices = spec_field.metadata.get("choices")
        if origin is typing.Literal:
            choices = typing.get_args(hint)
        if origin in (list, tuple):
            item = next(a for a in typing.get_args(hint) if a is not Ellipsis)
            if item is int and name.endswith("seeds"):
                options["type"] = seeds  # each in range, none twice
            else:
                what = {int: "integers", float: "numbers"}.get(item, "values")
                options["type"] = comma_separated(_converter(item, name), what)
        elif hint in (int, float, str):
            options["type"] = _converter(hint, name)
        elif choices is None:
            raise TypeError(
                f"{spec_class.__name__}.{field_name}: no flag for a field of type {hint}; skip it"
            )
        if choices is not None and origin not in (list, tuple):
            options = {"choices": tuple(choices)}  # argparse checks each value against them
        if not required and default not in (None, MISSING, (), []):
            help_text += f" (default: {_shown(default)})"
        parser.add_argument(
            flag,
            dest=name,
            required=required,
            default=None if required or overrides_only else default,
            help=help_text,
            **options,
        )


def spec_from_args(args: argparse.Namespace, spec_class: type, **given: Any) -> Any:
    """The spec whose flags :func:`add_spec_arguments` added, from the parsed ``args``: each field
    from the attribute of its name (when the verb has one), ``given`` the fields the verb sets
    itself. Built by :func:`ticketlab.specs.from_mapping`, the one parser of spec sections."""
    from ticketlab.specs import from_mapping

    values = {
        f.name: getattr(args, f.name)
        for f in fields(spec_class)
        if f.init and f.name not in given and hasattr(args, f.name)
    }
    return from_mapping(spec_class, {**values, **given}, "")


def comma_separated(convert: Any = str, what: str = "values") -> Any:
    """An argparse ``type``: ``"a, b,c"`` -> ``[convert("a"), convert("b"), convert("c")]``."""

    def parse(text: str) -> list[Any]:
        try:
            return [convert(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    return parse


def finite(text: str) -> float:
    """An argparse ``type`` for every number flag: a float that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seed(text: str) -> int:
    """An argparse ``type`` for every seed flag: an integer from 0 to 2**32 - 1 (numpy's range)."""
    from ticketlab.errors import TicketlabError
    from ticketlab.specs import check_seed

    try:
        return check_seed(int(text), "seed")
    except (ValueError, TicketlabError):
        raise argparse.ArgumentTypeError(f"a seed is an integer from 0 to 4294967295, got {text!r}") from None


def seeds(text: str) -> list[int]:
    """An argparse ``type``: comma-separated seeds, each checked as :func:`seed`, none twice."""
    values = [seed(part.strip()) for part in text.split(",") if part.strip()]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a seed is given twice in {text!r}")
    return values


def spec_overrides(
    args: argparse.Namespace,
    spec_class: type,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """The fields of ``spec_class`` given on the command line (flags added by
    :func:`add_spec_arguments` with ``overrides_only``, which default to None), by field name;
    ``prefix`` as given to it."""
    lead = f"{prefix}_" if prefix else ""
    return {
        f.name: getattr(args, lead + f.name)
        for f in fields(spec_class)
        if f.name not in skip
        and (only is None or f.name in only)
        and getattr(args, lead + f.name, None) is not None
    }


def add_redo_flag(parser: argparse.ArgumentParser) -> None:
    """``--redo STEP`` (repeatable) on the verbs that write a run directory of steps."""
    parser.add_argument(
        "--redo",
        action="append",
        default=[],
        metavar="STEP",
        help="compute this finished step again: its folder inside the run directory, e.g. level_02 "
        "or cells/rte/omp-0.50-seed0 (repeatable); the error that names a damaged step names it too",
    )


def apply_redo(out: str, steps: list[str], echo: Callable[[str], None]) -> None:
    """Remove the steps of ``--redo`` (after the run directory was checked, before the run)."""
    from ticketlab.experiments.store import redo_steps

    for step in redo_steps(out, steps):
        echo(f"redo: {step} removed, computed again now")


def add_protocol_flags(parser: argparse.ArgumentParser, default: str = "chen2020") -> None:
    """``--protocol`` (a paper's scope and scheme) with ``--scope`` and ``--scheme`` overriding it."""
    from ticketlab.models.adapters import SCOPES
    from ticketlab.pruning import PROTOCOLS, SCHEMES

    described = ", ".join(f"{name} = {p['scope']}/{p['scheme']}" for name, p in sorted(PROTOCOLS.items()))
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default=None,
        help=f"a paper's scope and scheme ({described}; default {default})",
    )
    parser.add_argument("--scope", choices=SCOPES, help="which weights can be pruned (overrides --protocol)")
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        help="one ranking over the scope, or each matrix alike (overrides --protocol)",
    )
    parser.set_defaults(default_protocol=default)


def protocol_of(args: argparse.Namespace) -> tuple[str, str]:
    """(scope, scheme) from ``--protocol`` (or the verb's default protocol), ``--scope``, ``--scheme``."""
    from ticketlab.pruning import PROTOCOLS

    protocol = PROTOCOLS[args.protocol or args.default_protocol]
    return args.scope or protocol["scope"], args.scheme or protocol["scheme"]


# -- outputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """What a verb writes at ``args.<dest>``, checked by ``main()`` before the verb runs.

    ``directory``: True for a folder, False for a file, None when the name decides (a
    ``.safetensors`` name is a file, anything else a folder). ``ours``: whether something already
    there is this tool's output of the same kind (``what``), which may be replaced; None when the
    verb checks that itself (a run directory). ``inputs``: the ``args`` fields naming the
    command's inputs, which are never overwritten.
    """

    dest: str
    what: str
    directory: bool | None = False
    ours: Callable[[Path], bool] | None = None
    inputs: tuple[str, ...] = ()


def declare_output(parser: argparse.ArgumentParser, output: Output, force: bool = True) -> None:
    """Register ``output`` for the shared check in ``main()`` (and add ``--force`` once)."""
    outputs = [*(parser.get_default("outputs") or ()), output]
    parser.set_defaults(outputs=outputs)
    if force and not any("--force" in action.option_strings for action in parser._actions):
        parser.add_argument(
            "--force", action="store_true", help="replace an existing file that is not this tool's output"
        )


def check_outputs(args: argparse.Namespace) -> None:
    """The one output check of every verb (``ticketlab.io.check_output`` on each declared output)."""
    from ticketlab.io import check_output

    for output in getattr(args, "outputs", None) or ():
        path = getattr(args, output.dest, None)
        if path is None:
            continue
        directory = output.directory
        if directory is None:
            directory = not str(path).endswith(".safetensors")
        inputs: list[Any] = []
        for name in output.inputs:
            value = getattr(args, name, None)
            inputs += value if isinstance(value, list | tuple) else [value]
        check_output(
            path,
            flag="--" + output.dest.replace("_", "-"),
            directory=directory,
            what=output.what,
            ours=output.ours,
            inputs=tuple(inputs),
            force=getattr(args, "force", False),
        )


def is_mask_file(path: Path) -> bool:
    from ticketlab.masks.io import is_mask_file as check

    return check(path)


def is_scores_file(path: Path) -> bool:
    from ticketlab.errors import TicketlabError
    from ticketlab.pruning.importance import ImportanceScores

    try:
        ImportanceScores.load(path)
    except TicketlabError:
        return False
    return True


def holds(marker: str) -> Callable[[Path], bool]:
    """``ours`` for a folder: empty, or holding ``marker`` (a file only this tool writes there)."""

    def check(path: Path) -> bool:
        return not any(path.iterdir()) or (path / marker).exists()

    return check


def is_png(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"
