"""File helpers every layer uses: atomic writes of files, JSON and whole folders.

This is the bottom layer (beside ``errors``): it imports nothing else of ticketlab's, so models,
masks, training, experiments and reports can all write their files the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ticketlab.errors import TicketlabError

T = TypeVar("T")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only when it finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode any other new file would get.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically: a temporary file renamed into place."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")

    atomic_write(path, write)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; invalid JSON is a one-line ``TicketlabError`` naming the file."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise TicketlabError(f"{path} is not valid JSON ({error})") from error


def write_directory(path: str | os.PathLike, body: Callable[[Path], T]) -> T:
    """Fill the folder ``path`` atomically: ``body(tmp)`` writes into a temporary folder beside it,
    which then replaces ``path`` (a folder left half-written by a killed run included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        result = body(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
