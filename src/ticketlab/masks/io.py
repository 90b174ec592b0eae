"""The mask file: safetensors, bits packed 8 to a byte, provenance in a JSON header.

Layout: one ``uint8`` tensor per masked matrix (``numpy.packbits`` of the row-major bits, most
significant bit first, padded with zeros to a whole byte), and the safetensors metadata key
``ticketlab`` holding JSON::

    {"format": "ticketlab-mask", "format_version": 1, "kind": "unstructured" | "structured",
     "tensors": {name: {"shape": [...], "role": ..., "layer": ...}}, "sparsity": ...,
     "provenance": {...}, "ticketlab_version": ...}

Files are written to a temporary name and renamed, so a killed write never leaves a file that
looks finished.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ticketlab import __version__
from ticketlab.errors import MaskFormatError
from ticketlab.io import atomic_write
from ticketlab.masks.header import FORMAT_NAME, FORMAT_VERSION, check_header
from ticketlab.masks.provenance import TensorInfo
from ticketlab.masks.structured import StructuredMask
from ticketlab.masks.unstructured import UnstructuredMask

Mask = UnstructuredMask | StructuredMask


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    packed = np.packbits(bits.detach().cpu().numpy().reshape(-1))  # bool input: no uint8 copy
    return torch.from_numpy(packed)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    count = math.prod(shape)
    flat = np.unpackbits(packed.numpy(), count=count)
    return torch.from_numpy(flat.astype(bool)).reshape(shape)


def header_of(mask: Mask) -> dict[str, Any]:
    if isinstance(mask, StructuredMask):
        tensors = {
            "heads": {"shape": list(mask.heads.shape), "role": "heads", "layer": None},
            "ffn": {"shape": list(mask.ffn.shape), "role": f"ffn_{mask.ffn_granularity}", "layer": None},
        }
        sparsity = {"heads": mask.head_sparsity(), "ffn": mask.ffn_sparsity()}
        kind = "structured"
    else:
        tensors = {
            n: {"shape": list(info.shape), "role": info.role, "layer": info.layer}
            for n, info in mask.info.items()
        }
        sparsity = mask.sparsity
        kind = "unstructured"
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "tensors": tensors,
        "sparsity": sparsity,
        "provenance": mask.provenance.to_dict(),
        "ticketlab_version": __version__,
    }


def save_mask(mask: Mask, path: str | os.PathLike) -> Path:
    """Write ``mask`` to ``path`` (atomically) and return the path."""
    header = header_of(mask)
    packed = {name: pack_bits(bits) for name, bits in mask.tensors.items()}
    atomic_write(path, lambda tmp: save_file(packed, tmp, metadata={"ticketlab": json.dumps(header)}))
    return Path(path)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a mask file, checked against the schema (masks/header.py), without
    reading the bits."""
    path = Path(path)
    if path.is_dir():
        raise MaskFormatError(f"{path} is a folder, not a mask file")
    if not path.exists():
        raise MaskFormatError(f"mask file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise MaskFormatError(f"{path} is not a readable safetensors file ({error})") from error
    if "ticketlab" not in metadata:
        raise MaskFormatError(
            f"{path} is a safetensors file but not a ticketlab mask (no 'ticketlab' header); "
            "masks from the original BERT-Tickets/TAMT code go through `ticketlab import-mask`"
        )
    try:
        header = json.loads(metadata["ticketlab"])
    except json.JSONDecodeError as error:
        raise MaskFormatError(f"{path}: the mask header is not valid JSON ({error})") from error
    check_header(header, path)
    return header


def is_mask_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ticketlab mask file (an output that may be replaced by another)."""
    try:
        read_header(path)
    except MaskFormatError:
        return False
    return True


def load_mask(path: str | os.PathLike) -> Mask:
    """Read a mask file written by :func:`save_mask`."""
    header = check_header(read_header(path), path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = set(handle.keys())
            for name, entry in header.tensors.items():
                if name not in stored:
                    raise MaskFormatError(f"{path}: tensor {name!r} named in the header is missing")
                shape = tuple(entry.shape)
                packed = handle.get_tensor(name)
                if packed.dtype != torch.uint8 or packed.numel() != math.ceil(math.prod(shape) / 8):
                    raise MaskFormatError(
                        f"{path}: tensor {name!r} has the wrong packed size for shape {shape}"
                    )
                tensors[name] = unpack_bits(packed, shape)
    except SafetensorError as error:
        raise MaskFormatError(f"{path}: corrupt mask file ({error})") from error
    if header.kind == "structured":
        return StructuredMask(tensors["heads"], tensors["ffn"], header.provenance)
    info = {
        n: TensorInfo(shape=tuple(entry.shape), role=entry.role, layer=entry.layer)
        for n, entry in header.tensors.items()
    }
    return UnstructuredMask(tensors, header.provenance, info)
