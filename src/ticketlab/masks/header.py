"""The schema of a mask file's JSON header, checked field by field when a file is read.

A header is whatever JSON the ``ticketlab`` metadata key holds: a file written by hand, by another
tool or by a newer ticketlab may hold valid JSON of the wrong shape. :func:`check_header` refuses
anything but the layout ``masks/io.py`` describes, naming the field (``mask header:
tensors.x.shape[0]: -32 is negative``); keys it does not know are let through, so that a newer
minor version's additions do not break older readers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ticketlab.errors import MaskFormatError, TicketlabError
from ticketlab.masks.provenance import Provenance
from ticketlab.specs import from_mapping

FORMAT_NAME = "ticketlab-mask"
FORMAT_VERSION = 1
KINDS = ("unstructured", "structured")
# A mask of more bits than this is not a real file (BERT-large's scope is 3e8 weights).
MAX_ELEMENTS = 2**40


@dataclass
class TensorEntry:
    shape: list[int]
    role: str = "unknown"
    layer: int | None = None


@dataclass
class FingerprintEntry:
    """``provenance.fingerprint``: see ticketlab.masks.fingerprint."""

    algorithm: str | None = None
    kept: dict[str, str] = field(default_factory=dict)
    model: str | None = None


@dataclass
class MaskHeader:
    format: str
    format_version: int
    kind: str
    tensors: dict[str, TensorEntry]
    sparsity: float | dict[str, float] | None = None
    provenance: Provenance = field(default_factory=Provenance)
    ticketlab_version: str | None = None


def check_header(data: Any, path: Any) -> MaskHeader:
    """The header of the mask file ``path``, checked; a :class:`MaskFormatError` line otherwise."""
    where = f"{path}: mask header"
    if not isinstance(data, dict):
        raise MaskFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT_NAME:
        raise MaskFormatError(f"{path}: unknown format {data.get('format')!r}")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise MaskFormatError(
            f"{path}: mask format version {version} is newer than this ticketlab understands "
            f"({FORMAT_VERSION}); upgrade ticketlab"
        )
    try:
        header = from_mapping(MaskHeader, data, "", ignore_unknown=True)
        if header.provenance.fingerprint:
            from_mapping(
                FingerprintEntry, header.provenance.fingerprint, "provenance.fingerprint", ignore_unknown=True
            )
    except TicketlabError as error:
        raise MaskFormatError(f"{where}: {error}") from None
    if header.format_version < 1:
        raise MaskFormatError(f"{where}: format_version {header.format_version} is not a version (1 or more)")
    if header.kind not in KINDS:
        raise MaskFormatError(f"{path}: unknown mask kind {header.kind!r} (known: {', '.join(KINDS)})")
    for name, entry in header.tensors.items():
        bad = next((s for s in entry.shape if s < 0), None)
        if bad is not None:
            raise MaskFormatError(f"{where}: tensors.{name}.shape has a negative size ({bad})")
        if math.prod(entry.shape) > MAX_ELEMENTS:
            raise MaskFormatError(f"{where}: tensors.{name}.shape {entry.shape} is implausibly large")
    if header.kind == "structured":
        missing = [t for t in ("heads", "ffn") if t not in header.tensors]
        if missing:
            raise MaskFormatError(
                f"{where}: a structured mask needs tensors 'heads' and 'ffn' ({missing[0]!r} missing)"
            )
    return header
