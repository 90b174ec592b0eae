"""Import of the original research code's mask files, without executing pickles.

- BERT-Tickets (Chen et al. 2020): a dict of float 0/1 tensors keyed ``bert.<module>.weight_mask``.
- TAMT (Liu et al. 2022): a dict of bool tensors keyed ``bert.<module>.weight`` (word embeddings too).

Keys carry a task model's prefix (``bert.``, ``roberta.``, sometimes ``module.`` from DataParallel);
the importer maps them onto the given model's canonical names and reports what it could not place.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field

import torch
from torch import nn

from ticketlab.errors import MaskFormatError, MaskMismatchError, first_line
from ticketlab.masks.provenance import Provenance, TensorInfo
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models.adapters import ARCHITECTURES, EncoderAdapter

_KNOWN_PREFIXES = (
    ("module.",)
    + tuple(f"{t}." for table in ARCHITECTURES for t in table.model_types)
    + (
        "bert.",
        "roberta.",
        "electra.",
        "distilbert.",
    )
)


@dataclass
class ImportReport:
    """What the importer did: the original format, unplaced keys, matrices the file did not cover."""

    source_format: str
    placed: dict[str, str] = field(default_factory=dict)  # original key -> canonical name
    unplaced: list[str] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)  # matrices of the scope left dense


def _read_tensor_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise MaskFormatError(f"mask file {str(path)!r} does not exist")
    try:
        # weights_only: the file is data, never code; a pickle that wants to run code is refused.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise MaskFormatError(f"{path}: not a loadable torch tensor file ({first_line(error)})") from error
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MaskFormatError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    if not data:
        raise MaskFormatError(f"{path}: the file holds no tensors")
    return data


def _strip_prefix(key: str, base_prefix: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in (f"{base_prefix}.", *_KNOWN_PREFIXES):
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def import_original_mask(path: str | os.PathLike, model: nn.Module) -> tuple[UnstructuredMask, ImportReport]:
    """Read a BERT-Tickets or TAMT mask file and express it over ``model``'s canonical names."""
    data = _read_tensor_dict(path)
    source_format = "bert-tickets" if any(k.endswith("_mask") for k in data) else "tamt"
    adapter = EncoderAdapter(model)
    matrices = {m.name: m for m in adapter.prunable_matrices("encoder+embeddings")}
    report = ImportReport(source_format=source_format)
    bits: dict[str, torch.Tensor] = {}
    for key, value in data.items():
        name = _strip_prefix(key, model.base_model_prefix)
        if name.endswith("_mask"):
            name = name[: -len("_mask")]
        if name not in matrices:
            report.unplaced.append(key)
            continue
        expected = tuple(adapter.parameter(name).shape)
        if tuple(value.shape) != expected:
            raise MaskMismatchError(
                f"{path}: {key!r} has shape {tuple(value.shape)}, the model's {name!r} has {expected}"
            )
        if value.dtype != torch.bool:
            values = value.float()
            if not bool(((values == 0) | (values == 1)).all()):
                raise MaskFormatError(f"{path}: {key!r} holds values other than 0 and 1")
            value = values != 0
        bits[name] = value.clone()
        report.placed[key] = name
    if not bits:
        raise MaskMismatchError(
            f"{path}: none of its {len(data)} keys names a prunable matrix of this model "
            f"(first key: {next(iter(data))!r})"
        )
    scope = "encoder+embeddings" if any(matrices[n].role == "word_embeddings" for n in bits) else "encoder"
    ordered = [m.name for m in adapter.prunable_matrices(scope)]
    for name in ordered:
        if name not in bits:
            report.not_in_file.append(name)
            bits[name] = torch.ones(adapter.parameter(name).shape, dtype=torch.bool)
    info = {
        n: TensorInfo(shape=tuple(bits[n].shape), role=matrices[n].role, layer=matrices[n].layer)
        for n in ordered
    }
    provenance = Provenance(
        method=f"imported:{source_format}",
        method_params={"file": os.path.basename(str(path)), "unplaced_keys": len(report.unplaced)},
        scope=scope,
        scheme="unknown",
        source_model=getattr(model.config, "_name_or_path", None) or None,
        notes=[f"matrix absent from the original file, kept dense: {n}" for n in report.not_in_file],
    )
    mask = UnstructuredMask({n: bits[n] for n in ordered}, provenance, info)
    mask.provenance.target_sparsity = mask.sparsity
    return mask, report
