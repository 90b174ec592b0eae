"""Where a grid's steps live: a store of steps named by the hash of what determines them.

A step of a grid (a ticket, an IMP run, a fine-tuning cell, a pre-training loss) is made once in
the store, ``<store>/<kind>/<readable name>-<digest>``, where the digest is the hash of everything
that determines its output (its method's settings, the fine-tuning spec, the digests of the steps
it needs), never of its place in a grid. The grid's folder keeps readable places
(``cells/<task>/<method>-<level>-seed<S>``, ``tickets/omp-0.50.safetensors``, ``imp/<task>/seed<S>``)
as symbolic links into the store, and the step protocol follows them (``StepStore``), so claims,
publication and verification happen in the store. Two grids (or a grid and its grown self) that
need the same step share it: ``--store DIR`` gives several grids one store.

The default store is ``<grid>/steps``. A grid folder made before stores existed keeps its steps in
place (no ``store.json``); it keeps working as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.io import read_json, write_json

STORE_FILE = "store.json"  # in the grid's folder: where its store is
DEFAULT_STORE = "steps"
DIGEST_LENGTH = 16
# Outputs that are one file rather than a folder keep their extension in the store.
FILE_EXTENSIONS = (".safetensors", ".json")
# Folders a grid made before stores existed holds its steps in.
LEGACY_FOLDERS = ("cells", "tickets", "imp")


def digest_of(what: Any) -> str:
    """The hash naming a step: SHA-256 of its canonical JSON, cut to ``DIGEST_LENGTH`` hex digits."""
    payload = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:DIGEST_LENGTH]


def uses_store(root: Path) -> bool:
    """Whether the grid folder ``root`` keeps its steps in a store (else in place, as before)."""
    return (Path(root) / STORE_FILE).is_file()


@dataclass(frozen=True)
class GridStore:
    """The store a grid's places link into."""

    root: Path  # the grid's folder
    path: Path  # the store

    @classmethod
    def open(cls, root: Path, store: str | os.PathLike | None = None) -> GridStore | None:
        """The store of the grid folder ``root`` (recorded in ``store.json`` when the grid is
        made); None for a grid made before stores, whose steps stay in place."""
        root = Path(root)
        record = root / STORE_FILE
        wanted = Path(store).expanduser().absolute() if store is not None else None
        if record.is_file():
            path = Path(read_json(record)["store"])
            path = path if path.is_absolute() else root / path
            if wanted is not None and wanted.resolve() != path.resolve():
                raise TicketlabError(
                    f"{root} keeps its steps in the store {path}, not {wanted}: rerun without --store "
                    f"(or with --store {path}), or write the grid to another --out"
                )
            return cls(root, path)
        if any((root / name).is_dir() for name in LEGACY_FOLDERS):
            if wanted is not None:
                raise TicketlabError(
                    f"{root} was made before step stores and keeps its steps in place: --store cannot "
                    "share them; rerun without --store, or write the grid to another --out"
                )
            return None
        path = wanted if wanted is not None else root / DEFAULT_STORE
        inside = path.is_relative_to(root.absolute()) or not path.is_absolute()
        write_json(record, {"store": os.path.relpath(path, root.absolute()) if inside else str(path)})
        path.mkdir(parents=True, exist_ok=True)
        return cls(root, path)

    def entry(self, kind: str, key: str, digest: str) -> Path:
        """The store's place of the step ``key`` (relative to a grid) of ``kind`` with ``digest``:
        readable, and unique by the digest."""
        key_path = Path(key)
        name = key_path.name
        extension = next((e for e in FILE_EXTENSIONS if name.endswith(e)), None)
        if extension is not None:
            return self.path / kind / f"{name.removesuffix(extension)}.{digest}{extension}"
        readable = "-".join(key_path.parts[1:]) or name
        return self.path / kind / f"{readable}-{digest}"

    def link(self, place: Path, entry: Path, *, folder: bool = False) -> None:
        """Make ``place`` (in the grid's folder) a link to ``entry`` (in the store), atomically and
        idempotently (several workers may link the same place at once). ``folder``: the step works
        inside its folder in place (IMP runs, TAMT): the folder is made now."""
        entry.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            entry.mkdir(exist_ok=True)
        target = os.path.relpath(entry, place.parent) if self._inside(entry) else str(entry)
        if place.is_symlink():
            if os.readlink(place) == target:
                return
        elif place.exists():
            return  # a step made in place before this grid had a store: it stands as it is
        place.parent.mkdir(parents=True, exist_ok=True)
        temporary = place.with_name(f".{place.name}.{uuid.uuid4().hex[:8]}.link")
        os.symlink(target, temporary)
        os.replace(temporary, place)  # a link re-pointed (the step's settings changed) in one move

    def _inside(self, entry: Path) -> bool:
        return entry.absolute().is_relative_to(self.root.absolute())
