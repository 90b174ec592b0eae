"""Attention maps on disk, and the labels file of the attention-pattern classes.

Two layouts are read:

- **ticketlab's** (written by ``ticketlab attention-maps``): a folder with ``maps.safetensors``
  (one float32 tensor ``example.<i>`` of shape ``[layers, heads, n_i, n_i]`` per input, ``n_i``
  its length in tokens, special tokens included), ``index.json`` (the model, mask, inputs, and
  per example its length, text and tokens) and ``index.csv`` (one row per map: ``id, layer, head,
  example, length``). A map's id is ``e<example>-l<layer>-h<head>``.
- **the original's** (all tickets winning's labelled data): a folder of ``.npy`` files, one 2-D
  map each, named by the file's stem.

The labels file is the original's: one line per class, ``label = name1, name2, ...``; the labels
``single_vertical``, ``double_vertical`` and ``multiple_vertical`` are merged into ``vertical``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write

FORMAT_NAME = "ticketlab-attention-maps"
FORMAT_VERSION = 1
MAPS_FILE = "maps.safetensors"
INDEX_JSON = "index.json"
INDEX_CSV = "index.csv"

# Kovaleva et al. 2019's five classes, in the order every table and plot uses.
PATTERN_CLASSES: tuple[str, ...] = ("vertical", "diagonal", "vertical+diagonal", "block", "heterogeneous")
# Spellings of the original labels file that name one of the classes.
LABEL_ALIASES: dict[str, str] = {
    "single_vertical": "vertical",
    "double_vertical": "vertical",
    "multiple_vertical": "vertical",
    "vertical_diagonal": "vertical+diagonal",
    "vertical-diagonal": "vertical+diagonal",
}
_ID = re.compile(r"^e(\d+)-l(\d+)-h(\d+)$")


def map_id(example: int, layer: int, head: int) -> str:
    return f"e{example}-l{layer}-h{head}"


def parse_map_id(name: str) -> tuple[int, int, int] | None:
    """``(example, layer, head)`` of a ticketlab map id, or None for another name."""
    match = _ID.match(name)
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


@dataclass
class AttentionMaps:
    """Every head's attention map on a few inputs: ``maps[i]`` is ``[layers, heads, n_i, n_i]``."""

    maps: list[np.ndarray]
    examples: list[dict[str, Any]] = field(default_factory=list)  # per input: text, tokens
    info: dict[str, Any] = field(default_factory=dict)  # model, mask, source, seed

    @property
    def num_layers(self) -> int:
        return int(self.maps[0].shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.maps[0].shape[1])

    def flat(self) -> MapCollection:
        """Every map as one 2-D array, named by its id, in the order example, layer, head."""
        names, arrays = [], []
        for example, array in enumerate(self.maps):
            for layer in range(array.shape[0]):
                for head in range(array.shape[1]):
                    names.append(map_id(example, layer, head))
                    arrays.append(array[layer, head])
        return MapCollection(names, arrays)

    def save(self, out: str | os.PathLike) -> Path:
        """Write the folder (each file atomically); returns it."""
        from safetensors.numpy import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"example.{i}": np.ascontiguousarray(m, dtype=np.float32) for i, m in enumerate(self.maps)}
        atomic_write(out / MAPS_FILE, lambda tmp: save_file(tensors, tmp))
        examples = [
            {"example": i, "length": int(m.shape[-1]), **extra}
            for i, (m, extra) in enumerate(zip(self.maps, self._examples()))
        ]
        index = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            **self.info,
            "examples": examples,
        }
        _write_text(out / INDEX_JSON, json.dumps(index, indent=2) + "\n")
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["id", "layer", "head", "example", "length"])
        for example, array in enumerate(self.maps):
            for layer in range(array.shape[0]):
                for head in range(array.shape[1]):
                    writer.writerow([map_id(example, layer, head), layer, head, example, array.shape[-1]])
        _write_text(out / INDEX_CSV, rows.getvalue())
        return out

    def _examples(self) -> list[dict[str, Any]]:
        extra = [{k: v for k, v in e.items() if k not in ("example", "length")} for e in self.examples]
        return extra + [{} for _ in range(len(self.maps) - len(extra))]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AttentionMaps:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        index = _read_index(folder)
        try:
            tensors = load_file(folder / MAPS_FILE)
        except (OSError, SafetensorError) as error:
            raise TicketlabError(
                f"{folder / MAPS_FILE}: not a readable safetensors file ({error})"
            ) from error
        examples = index.pop("examples", [])
        maps = []
        for i in range(len(examples)):
            name = f"example.{i}"
            if name not in tensors:
                raise TicketlabError(f"{folder / MAPS_FILE} lacks {name} listed in {INDEX_JSON}")
            maps.append(tensors[name])
        if not maps:
            raise TicketlabError(f"{folder}: no attention maps in {INDEX_JSON}")
        for key in ("format", "format_version", "num_layers", "num_heads"):
            index.pop(key, None)
        return cls(maps, examples, index)


def read_format_file(path: Path, format_name: str, what: str) -> dict[str, Any]:
    """A JSON file that names its format (an index or an info file), with one-line errors."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TicketlabError(f"{path.parent} holds no {path.name}: not {what}") from None
    except json.JSONDecodeError as error:
        raise TicketlabError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise TicketlabError(f"{path} is not a {format_name} file")
    return data


def _read_index(folder: Path) -> dict[str, Any]:
    index = read_format_file(folder / INDEX_JSON, FORMAT_NAME, "a ticketlab attention-maps folder")
    if index.get("format_version", 0) > FORMAT_VERSION:
        raise TicketlabError(
            f"{folder / INDEX_JSON} has format version {index['format_version']}; "
            f"this ticketlab reads up to {FORMAT_VERSION}"
        )
    return index


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)


@dataclass
class MapCollection:
    """Named 2-D attention maps of any sizes (what the classifier trains on and classifies)."""

    names: list[str]
    maps: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(zip(self.names, self.maps))

    def select(self, names: Sequence[str]) -> MapCollection:
        position = {name: i for i, name in enumerate(self.names)}
        return MapCollection(list(names), [self.maps[position[n]] for n in names])


def load_map_collection(folder: str | os.PathLike) -> MapCollection:
    """The maps of a folder in either layout: ticketlab's (``index.json``) or a folder of ``.npy``
    files (the original's labelled data; loaded with ``allow_pickle=False``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TicketlabError(f"maps folder {folder} does not exist")
    if (folder / INDEX_JSON).exists():
        return AttentionMaps.load(folder).flat()
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise TicketlabError(f"{folder} holds neither {INDEX_JSON} nor .npy attention maps")
    names, maps = [], []
    for path in files:
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:  # object arrays need pickle: refused
            raise TicketlabError(f"{path}: not a plain numeric .npy array ({error})") from error
        if array.ndim != 2 or array.shape[0] != array.shape[1]:
            raise TicketlabError(f"{path}: an attention map must be a square 2-D array, got {array.shape}")
        names.append(path.stem)
        maps.append(array.astype(np.float32))
    return MapCollection(names, maps)


# -- labels --------------------------------------------------------------------------------------
def canonical_label(label: str) -> str:
    label = label.strip().lower()
    return LABEL_ALIASES.get(label, label)


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """``{map name: class}`` from a labels file (``label = name1, name2, ...`` lines; blank lines
    and ``#`` comments ignored; the ``*_vertical`` labels become ``vertical``)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise TicketlabError(f"labels file {path} does not exist") from None
    except UnicodeDecodeError:
        raise TicketlabError(f"labels file {path} is not text") from None
    labels: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        label, sep, names = text.partition("=")
        where = f"{path}, line {number}"
        if not sep or not label.strip():
            raise TicketlabError(f"{where}: expected 'label = name1, name2, ...', got {line.strip()!r}")
        label = canonical_label(label)
        if label not in PATTERN_CLASSES:
            raise TicketlabError(
                f"{where}: unknown class {label!r} (classes: {', '.join(PATTERN_CLASSES)}, "
                "or single_/double_/multiple_vertical)"
            )
        for name in (n.strip() for n in names.split(",")):
            if not name:
                continue
            if name in labels and labels[name] != label:
                raise TicketlabError(f"{where}: {name} is already labelled {labels[name]!r}")
            labels[name] = label
    if not labels:
        raise TicketlabError(f"labels file {path} labels no maps")
    return labels


def format_labels(assignments: Mapping[str, str | None], classes: Sequence[str] = PATTERN_CLASSES) -> str:
    """A labels file's text: one ``label = names`` line per class (classes without maps get an
    empty line to fill in), in the order of ``classes``."""
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for name, label in assignments.items():
        if label is not None:
            by_class.setdefault(canonical_label(label), []).append(name)
    return "".join(f"{label} = {', '.join(names)}\n" for label, names in by_class.items())


def labelled_maps(
    collection: MapCollection, labels: Mapping[str, str], where: str
) -> tuple[MapCollection, list[str]]:
    """The maps that have a label, and their labels (names labelled but missing fail)."""
    present = set(collection.names)
    missing = [name for name in labels if name not in present]
    if missing:
        raise TicketlabError(
            f"{where}: {len(missing)} labelled map(s) are not in the maps folder, e.g. {missing[0]!r}"
        )
    names = [name for name in collection.names if name in labels]
    return collection.select(names), [labels[name] for name in names]
