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


def _cannot_write(path: Path, error: OSError) -> TicketlabError:
    reason = error.strerror or type(error).__name__
    where = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
    return TicketlabError(f"cannot write {path}: {reason}{where}")


def ensure_directory(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a file in the way or a folder that cannot be written is one-line error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot_write(path, error) from error
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only when it finished."""
    path = Path(path)
    ensure_directory(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _cannot_write(path, error) from error
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


def link_file(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Put ``source`` at ``path`` too, atomically: a hard link (no second copy of the bytes), or a
    copy where the file system has no links. Returns ``path``."""
    if os.path.exists(path) and os.path.samefile(source, path):
        return Path(path)  # (renaming a link onto another link of the same file does nothing)

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(path, write)
    return Path(path)


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
    if path.exists() and not path.is_dir():
        raise TicketlabError(f"cannot write the folder {path}: a file of that name is in the way")
    ensure_directory(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise _cannot_write(path, error) from error
    try:
        result = body(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the folder a new output would be made in)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output(
    path: str | os.PathLike,
    *,
    flag: str = "--out",
    directory: bool = False,
    what: str = "file",
    ours: Callable[[Path], bool] | None = None,
    inputs: tuple[str | os.PathLike | None, ...] = (),
    force: bool = False,
) -> Path:
    """Refuse, before any work, an output path that cannot or should not be written.

    The one check every verb runs on what it will write (a file, or a ``directory``): no file in
    the way of the folders to create, a writable place, the right kind of thing at ``path``, never
    one of the command's ``inputs`` (not even with ``force``), and an existing ``path`` replaced
    only when ``ours(path)`` says it is this tool's output of the same kind (``what``, for the
    message), or ``force`` is set. ``ours=None``: the verb checks what is there itself (a run
    directory refuses a different run). Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    shown = f"{flag} {str(path)!r}"
    base = _first_existing(path)
    if base != path and not base.is_dir():
        raise TicketlabError(f"{shown}: {str(base)!r} is a file, not a folder")
    if path.exists():
        if directory and not path.is_dir():
            raise TicketlabError(f"{shown} is a file; a folder is wanted here")
        if not directory and path.is_dir():
            raise TicketlabError(f"{shown} is a folder; give a file name ({what})")
        for source in inputs:
            if source is None or not Path(source).exists():
                continue
            if os.path.samefile(path, source):
                raise TicketlabError(f"{shown} is also an input of this command; write the output elsewhere")
        if ours is not None and not force and not ours(path):
            raise TicketlabError(f"{shown} exists and is not a {what}; pass --force to replace it")
    writable_in = base if base != path else (path if path.is_dir() else path.parent)
    if not os.access(writable_in, os.W_OK | os.X_OK):
        raise TicketlabError(f"{shown}: cannot write in {str(writable_in)!r} (permission denied)")
    return path


def require_path(path: str | os.PathLike, what: str, *, directory: bool = False) -> Path:
    """``path`` if it is an existing file (or folder, with ``directory``); else one line that says
    what is there instead: nothing, or a folder where a file is wanted, or the reverse."""
    path = Path(path)
    if directory and path.is_dir() or not directory and path.is_file():
        return path
    if path.is_dir():
        raise TicketlabError(f"{what} {str(path)!r} is a folder; a file is wanted here")
    if path.exists():
        raise TicketlabError(f"{what} {str(path)!r} is a file; a folder is wanted here")
    raise TicketlabError(f"{what} {str(path)!r} does not exist")
