"""Typed records from parsed JSON or YAML: every field checked against its type hint, by name.

Spec files, recipes, mask headers and score headers arrive as whatever ``json.loads`` or
``yaml.safe_load`` made of the bytes: a list where a mapping was meant, ``"0"`` for ``0``, ``3``
for ``[3]``. :func:`from_mapping` builds a dataclass from such data or raises one
:class:`TicketlabError` line naming the field (``seeds[1]: expected an integer, got '0'``),
never another exception. Checks of meaning (ranges, known names) stay with the dataclass; this
module only makes sure each value has the shape its field declares.

The conversions are the ones that keep a value's meaning and make equal settings serialise (and
hash) alike: a list becomes a tuple for a tuple field, an integer a float for a float field. No
string is ever read as a number, and NaN or infinity is never a valid float.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from ticketlab.errors import TicketlabError

T = TypeVar("T")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _arms(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def describe(hint: Any) -> str:
    """A type hint in words, for messages: ``list[int] | None`` -> "a list of integers or null"."""
    arms = _arms(hint)
    if len(arms) > 1:
        return " or ".join(describe(arm) for arm in arms)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(_short(a) for a in args)
    if origin in (list, tuple, Sequence):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {_plural(inner[0])}" if inner else "a list"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return f"a mapping of {_plural(args[1])}" if len(args) == 2 and args[1] is not Any else "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping of fields"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _plural(hint: Any) -> str:
    words = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    if dataclasses.is_dataclass(hint):
        return "mappings of fields"
    return words.get(hint, describe(hint))


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _fail(where: str, hint: Any, value: Any) -> TicketlabError:
    return TicketlabError(f"{where}: expected {describe(hint)}, got {_short(value)}")


def check_value(value: Any, hint: Any, where: str, ignore_unknown: bool = False) -> Any:
    """``value`` checked against ``hint`` (and converted as the module says), or a one-line error.

    ``ignore_unknown`` is passed on to the dataclasses inside (see :func:`from_mapping`)."""
    arms = _arms(hint)
    if len(arms) > 1:
        if value is None and type(None) in arms:
            return None
        # Prefer an arm of the value's own kind, so 3 stays an int under ``int | float``.
        real = [arm for arm in arms if arm is not type(None)]
        if len(real) == 1:  # an optional value: what the one type says is the message
            return check_value(value, real[0], where, ignore_unknown)
        deeper = None
        for arm in sorted(arms, key=lambda a: a is float):
            try:
                return check_value(value, arm, where, ignore_unknown)
            except TicketlabError as error:
                # An arm whose shape fitted but a value inside did not: that value is the problem.
                if not str(error).startswith(f"{where}: ") and deeper is None:
                    deeper = error
        raise deeper or _fail(where, hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is not None:
            raise _fail(where, hint, value)
        return None
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise _fail(where, hint, value)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(where, hint, value)
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(where, hint, value)
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _fail(where, hint, value)
        if not math.isfinite(value):
            raise TicketlabError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(where, hint, value)
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise _fail(where, hint, value)
        inner = [a for a in args if a is not Ellipsis]
        if len(inner) > 1:  # a fixed-length tuple
            if len(value) != len(inner):
                raise TicketlabError(f"{where}: expected {len(inner)} values, got {len(value)}")
            items = [
                check_value(v, a, f"{where}[{i}]", ignore_unknown)
                for i, (v, a) in enumerate(zip(value, inner))
            ]
        else:
            item = inner[0] if inner else Any
            items = [check_value(v, item, f"{where}[{i}]", ignore_unknown) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _fail(where, hint, value)
        key_hint, value_hint = args if len(args) == 2 else (Any, Any)
        checked = {}
        for key, item in value.items():
            check_value(key, key_hint, f"{where} key {_short(key)}")
            checked[key] = check_value(item, value_hint, f"{where}.{_shown(key)}", ignore_unknown)
        return checked
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_mapping(hint, value, where, ignore_unknown=ignore_unknown)
    return value


def from_mapping(cls: type[T], data: Any, where: str, *, ignore_unknown: bool = False) -> T:
    """An instance of the dataclass ``cls`` from a mapping, every field checked against its hint.

    ``where`` names the section in messages (a file name, ``tamt``, ``mask header``). Unknown keys
    are refused with the list of known ones, unless ``ignore_unknown`` (headers written by a newer
    version may carry more); a missing required field is named. An instance passes through.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise TicketlabError(_at(where, f"expected a mapping of fields, got {_short(data)}"))
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        if key not in known:
            if ignore_unknown:
                continue
            raise TicketlabError(_at(where, f"unknown field {_short(key)} (known: {', '.join(known)})"))
        values[key] = check_value(value, hints[key], f"{where}.{key}" if where else key, ignore_unknown)
    missing = [
        name
        for name, f in known.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise TicketlabError(_at(where, f"missing required field {missing[0]!r}"))
    return cls(**values)


def refuse_duplicates(values: Sequence[Any], where: str, key: Any = None) -> None:
    """One line naming the first value given twice (``key`` maps values to what makes them equal)."""
    seen: dict[Any, Any] = {}
    for value in values:
        marker = key(value) if key else value
        if marker in seen:
            same = "" if seen[marker] == value else f" (the same as {_short(seen[marker])})"
            raise TicketlabError(f"{where}: {_short(value)} is given twice{same}")
        seen[marker] = value


# numpy's legacy seeding (``np.random.seed``, used by ``accelerate.utils.set_seed``) takes [0, 2**32).
MAX_SEED = 2**32 - 1


def check_seed(seed: Any, where: str = "seed") -> int:
    """A seed is an integer in [0, 2**32): the same range everywhere (torch, numpy, Python)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise TicketlabError(f"{where}: a seed is an integer from 0 to {MAX_SEED}, got {_short(seed)}")
    return seed


def _shown(key: Any) -> str:
    """A mapping key as a message names it: as written, unless it would break the one line (a
    newline, a control character), then quoted."""
    text = str(key)
    return text if text.isprintable() else repr(text)
