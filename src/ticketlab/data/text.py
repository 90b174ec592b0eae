"""Raw text -> fixed-length token blocks for MLM and distillation (pre-training losses, TAMT).

Sources: a WikiText-style file (the tokenised release with ``<unk>`` and `` = Title = `` headings,
or the raw variant, any line endings) or, by default, a text data set from the Hugging Face hub
(WikiText-103 raw). Lines are cleaned, tokenised without special tokens, concatenated in order and
cut into blocks of ``max_length - 2`` tokens, each wrapped as ``[CLS] ... [SEP]``; the last, shorter
block is padded (its padding is excluded from every loss), so all of the text is used. The result
is deterministic and cached by content (text digest, tokenizer digest, length, limit).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ticketlab.errors import TicketlabError
from ticketlab.io import require_path

DEFAULT_DATASET = "Salesforce/wikitext"
DEFAULT_DATASET_CONFIG = "wikitext-103-raw-v1"
CACHE_FORMAT_VERSION = 1
_TOKENIZE_CHUNK = 1000  # lines per tokenizer call

# WikiText's tokenised release splits numbers and hyphenated words with "@x@" joiners
# ("0 @.@ 7", "guest @-@ starring"); glue them back so the model's tokenizer sees normal text.
_WIKITEXT_JOINER = re.compile(r" @(.)@ ")


@dataclass
class TextBlocks:
    """Token blocks of one text: ``input_ids`` and ``attention_mask``, both ``[N, L]`` int64."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    source: str
    digest: str  # the cache key: identifies text, tokenizer and packing

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.input_ids.shape[1])

    def num_tokens(self) -> int:
        """Real (non-padding) tokens, special tokens included."""
        return int(self.attention_mask.sum())

    def head(self, count: int | None) -> TextBlocks:
        """The first ``count`` blocks (all when ``None``)."""
        if count is None or count >= len(self):
            return self
        return TextBlocks(
            self.input_ids[:count], self.attention_mask[:count], self.source, f"{self.digest}:{count}"
        )

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(first block index, input_ids, attention_mask)`` in order, the last batch possibly smaller."""
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield start, self.input_ids[start:stop], self.attention_mask[start:stop]


def clean_wikitext_line(line: str, unk_token: str | None) -> str:
    """One line as the model's tokenizer should see it: joiners glued, ``<unk>`` as its unk token."""
    line = _WIKITEXT_JOINER.sub(r"\1", line.strip())
    if unk_token:
        line = line.replace("<unk>", unk_token)
    return line


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a text file (any line endings), stripped."""
    path = require_path(path, "text file")
    try:
        with open(path, encoding="utf-8") as handle:  # universal newlines: CRLF reads as LF
            lines = [line.strip() for line in handle]
    except UnicodeDecodeError as error:
        raise TicketlabError(f"text file {str(path)!r} is not UTF-8 text ({error})") from error
    lines = [line for line in lines if line]
    if not lines:
        raise TicketlabError(f"text file {str(path)!r} has no text")
    return lines


def load_hub_text(
    dataset: str = DEFAULT_DATASET, config: str | None = DEFAULT_DATASET_CONFIG, split: str = "train"
) -> list[str]:
    """The non-blank lines of a hub text data set's ``text`` column."""
    import datasets

    try:
        data = datasets.load_dataset(dataset, config, split=split)
    except Exception as error:  # datasets raises many types for a missing set, split or network
        raise TicketlabError(
            f"could not load text data set {dataset!r} ({config}, split {split!r}): {error}"
        ) from error
    if "text" not in data.column_names:
        raise TicketlabError(f"data set {dataset!r} has no 'text' column (columns: {data.column_names})")
    lines = [line.strip() for line in data["text"]]
    lines = [line for line in lines if line]
    if not lines:
        raise TicketlabError(f"data set {dataset!r} ({config}, split {split!r}) has no text")
    return lines


def tokenizer_digest(tokenizer) -> str:
    """A digest of what the tokenizer does (its full serialised form, or its vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    description = (
        backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    return hashlib.blake2b(f"{type(tokenizer).__name__}\n{description}".encode(), digest_size=16).hexdigest()


def _special_ids(tokenizer) -> tuple[int, int, int]:
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise TicketlabError(
            f"tokenizer {type(tokenizer).__name__} lacks a CLS, SEP or PAD token; blocks need all three"
        )
    return int(cls_id), int(sep_id), int(pad_id)


def pack_blocks(
    token_ids: Sequence[int], max_length: int, cls_id: int, sep_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into ``[CLS] chunk [SEP]`` blocks of ``max_length``; pad the last."""
    if max_length < 3:
        raise TicketlabError(f"max length must be at least 3 (CLS, one token, SEP), got {max_length}")
    body = max_length - 2
    stream = torch.as_tensor(list(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids)
    stream = stream.to(torch.long)
    count = -(-stream.numel() // body)  # ceil
    ids = torch.full((count, max_length), pad_id, dtype=torch.long)
    attention = torch.zeros((count, max_length), dtype=torch.long)
    full = stream.numel() // body
    ids[:full, 1 : body + 1] = stream[: full * body].reshape(full, body)
    attention[:full] = 1
    if full < count:
        rest = stream[full * body :]
        ids[full, 1 : rest.numel() + 1] = rest
        attention[full, : rest.numel() + 2] = 1
        ids[full, rest.numel() + 1] = sep_id
    ids[:, 0] = cls_id
    ids[:full, body + 1] = sep_id
    return ids, attention


def tokenize_lines(
    tokenizer, lines: Sequence[str], *, limit: int | None = None, progress: bool = True
) -> list[int]:
    """The token ids of all lines in order (no special tokens); stop once ``limit`` ids are in."""
    from tqdm.auto import tqdm

    unk = getattr(tokenizer, "unk_token", None)
    stream: list[int] = []
    bar = tqdm(total=len(lines), desc="tokenising", unit="line", disable=not progress, leave=False)
    for start in range(0, len(lines), _TOKENIZE_CHUNK):
        chunk = [clean_wikitext_line(line, unk) for line in lines[start : start + _TOKENIZE_CHUNK]]
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
        bar.update(len(chunk))
        if limit is not None and len(stream) >= limit:
            break
    bar.close()
    return stream


def default_cache_dir() -> Path:
    """``$TICKETLAB_CACHE/text-blocks``, by default under ``~/.cache/ticketlab``."""
    root = os.environ.get("TICKETLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ticketlab")
    return Path(root) / "text-blocks"


def _lines_digest(lines: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def blocks_from_lines(
    tokenizer,
    lines: Sequence[str],
    *,
    source: str,
    max_length: int = 128,
    max_sequences: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> TextBlocks:
    """Tokenise and pack ``lines``; reuse a cached result for the same text, tokenizer and packing."""
    from safetensors.torch import load_file, save_file

    from ticketlab.io import atomic_write

    if max_sequences is not None and max_sequences < 1:
        raise TicketlabError(f"max sequences must be at least 1, got {max_sequences}")
    cls_id, sep_id, pad_id = _special_ids(tokenizer)
    key = hashlib.blake2b(
        json.dumps(
            [
                CACHE_FORMAT_VERSION,
                _lines_digest(lines),
                tokenizer_digest(tokenizer),
                max_length,
                max_sequences,
            ]
        ).encode(),
        digest_size=16,
    ).hexdigest()
    cache_path = Path(cache_dir) / f"{key}.safetensors" if cache_dir is not None else None
    if cache_path is not None and cache_path.is_file():
        try:
            stored = load_file(str(cache_path))
            return TextBlocks(stored["input_ids"], stored["attention_mask"], source, key)
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            pass
    limit = max_sequences * (max_length - 2) if max_sequences is not None else None
    stream = tokenize_lines(tokenizer, lines, limit=limit, progress=progress)
    if limit is not None:
        stream = stream[:limit]
    if not stream:
        raise TicketlabError(f"{source}: the text has no tokens")
    ids, attention = pack_blocks(stream, max_length, cls_id, sep_id, pad_id)
    if cache_path is not None:
        try:
            tensors = {"input_ids": ids.contiguous(), "attention_mask": attention.contiguous()}
            atomic_write(cache_path, lambda tmp: save_file(tensors, tmp, metadata={"source": source}))
        except OSError:  # an unwritable cache only costs the next run a re-tokenisation
            pass
    return TextBlocks(ids, attention, source, key)


def load_text_blocks(
    tokenizer,
    text: str | os.PathLike | None = None,
    *,
    dataset: str = DEFAULT_DATASET,
    dataset_config: str | None = DEFAULT_DATASET_CONFIG,
    split: str = "validation",
    max_length: int = 128,
    max_sequences: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> TextBlocks:
    """Blocks of a text file, or of a hub text data set's split when ``text`` is ``None``."""
    if text is not None:
        lines = read_text_lines(text)
        source = str(text)
    else:
        lines = load_hub_text(dataset, dataset_config, split)
        source = f"{dataset}/{dataset_config}:{split}"
    return blocks_from_lines(
        tokenizer,
        lines,
        source=source,
        max_length=max_length,
        max_sequences=max_sequences,
        cache_dir=default_cache_dir() if cache else None,
        progress=progress,
    )
