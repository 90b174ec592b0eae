"""A content-addressed cache of tokenised data sets, so a second run does not tokenise again.

An entry is a ``datasets`` Arrow folder (``save_to_disk``; no pickles) named by the sha256 of a
key: what the data is (a digest of its files or content), the tokenizer (a digest of its full
definition, vocabulary included) and the settings (max length, sample count). It is written to a
temporary folder and renamed when complete, so a killed run never leaves an entry that looks
finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError

CACHE_ENV = "TICKETLAB_CACHE"
CACHE_FORMAT_VERSION = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$TICKETLAB_CACHE``, else ``~/.cache/ticketlab``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "ticketlab"


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of everything that decides how a tokenizer splits text (vocabulary, normaliser, ...)."""
    hasher = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # Truncation and padding are per-call state that the last call left behind, not the tokenizer.
        definition.pop("truncation", None)
        definition.pop("padding", None)
        hasher.update(json.dumps(definition, sort_keys=True).encode())
    else:  # a pure-Python tokenizer: its vocabulary and special tokens
        hasher.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    hasher.update(
        json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode()
    )
    hasher.update(json.dumps(list(getattr(tokenizer, "model_input_names", []))).encode())
    hasher.update(str(getattr(tokenizer, "truncation_side", "right")).encode())
    return hasher.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def key_digest(key: dict[str, Any]) -> str:
    text = json.dumps({"cache_format": CACHE_FORMAT_VERSION, **key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cached_dataset(
    key: dict[str, Any],
    build: Callable[[], dict[str, list]],
    cache_dir: str | os.PathLike | None = None,
):
    """The ``datasets.Dataset`` stored under ``key``, building (``build()`` -> columns) and storing it on a miss."""
    import datasets

    folder = cache_root(cache_dir) / "datasets" / key_digest(key)
    if folder.is_dir():
        return datasets.load_from_disk(str(folder))
    columns = build()
    dataset = datasets.Dataset.from_dict(columns)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as error:
        raise TicketlabError(
            f"cannot write the tokenisation cache in {folder.parent} ({error.strerror or error}); "
            f"choose another with --cache-dir or ${CACHE_ENV}"
        ) from error
    try:
        _save_quietly(dataset, tmp)
        (tmp / "ticketlab_key.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():  # another process finished the same entry first: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(folder))


def _save_quietly(dataset, folder: Path) -> None:
    """``save_to_disk`` without its own progress bar (ticketlab shows the tokenising one)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        dataset.save_to_disk(str(folder))
    finally:
        if not was_disabled:
            enable_progress_bars()


def tokenize_texts(
    tokenizer: Any,
    text_a: list[str],
    text_b: list[str] | None,
    *,
    max_length: int,
    description: str = "tokenising",
    quiet: bool = False,
    chunk: int = 1000,
) -> dict[str, list]:
    """Token ids of single texts or text pairs, truncated to ``max_length``, not padded.

    Padding happens per batch (dynamic padding), which is faster and gives the same results.
    """
    from tqdm.auto import tqdm

    columns: dict[str, list] = {}
    with tqdm(total=len(text_a), desc=description, unit="ex", disable=quiet, leave=False) as bar:
        for start in range(0, len(text_a), chunk):
            stop = start + chunk
            encoded = tokenizer(
                text_a[start:stop],
                text_b[start:stop] if text_b is not None else None,
                truncation=True,
                max_length=max_length,
            )
            for name, values in encoded.items():
                columns.setdefault(name, []).extend(values)
            bar.update(len(text_a[start:stop]))
    return columns
