"""Unstructured masks: one bit per weight of each prunable matrix (True = kept)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks.provenance import Provenance, TensorInfo

_LAYER_PATTERN = re.compile(r"\.layer\.(\d+)\.")
# A matrix at least this sparse is flagged when a mask is made, inspected or fine-tuned.
NEARLY_EMPTY = 0.99


def _count(bits: torch.Tensor) -> int:
    """Kept weights of one bool tensor. NumPy's count_nonzero on the CPU (7 ms for BERT-base's 85M
    bits, single-threaded): a torch sum widens every bool to int64 first (290 ms), and torch's
    threaded count_nonzero stalled at 0.8 s for the 73 matrices when the cores were busy."""
    if bits.device.type == "cpu":
        return int(np.count_nonzero(bits.numpy()))
    return int(torch.count_nonzero(bits))


def guess_layer(name: str) -> int | None:
    match = _LAYER_PATTERN.search(f".{name}")
    return int(match.group(1)) if match else None


@dataclass
class UnstructuredMask:
    """Bool tensors keyed by canonical parameter name; ``True`` keeps the weight.

    The set algebra (``&``, ``|``, ``-``, ``~``) works tensor by tensor over masks of the same
    matrices; sparsity is always counted over the masked matrices (the mask's scope).
    """

    tensors: dict[str, torch.Tensor]
    provenance: Provenance = field(default_factory=Provenance)
    info: dict[str, TensorInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, bits in self.tensors.items():
            if bits.dtype != torch.bool:
                raise TicketlabError(f"mask tensor {name!r} must be bool, got {bits.dtype}")
        for name, bits in self.tensors.items():
            if name not in self.info:
                self.info[name] = TensorInfo(shape=tuple(bits.shape), layer=guess_layer(name))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def ones_like(cls, weights: Mapping[str, torch.Tensor], **kwargs) -> UnstructuredMask:
        return cls({n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()}, **kwargs)

    # -- accounting ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def num_weights(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def num_kept(self) -> int:
        return sum(_count(t) for t in self.tensors.values())

    def num_pruned(self) -> int:
        return self.num_weights() - self.num_kept()

    @property
    def sparsity(self) -> float:
        """Fraction of the masked weights that are pruned."""
        total = self.num_weights()
        return self.num_pruned() / total if total else 0.0

    def tensor_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - _count(t) / t.numel() for n, t in self.tensors.items()}

    def fully_pruned(self) -> list[str]:
        """The matrices this mask prunes entirely (a global ranking can empty a matrix of small
        weights, such as an untrained pooler, and cut the model's path to its task head)."""
        return [name for name, bits in self.tensors.items() if bits.numel() and not bool(bits.any())]

    def nearly_pruned(self, threshold: float = NEARLY_EMPTY) -> dict[str, float]:
        """The matrices of which at least ``threshold`` of the weights are pruned, with their
        sparsity: a matrix with a handful of weights left (MiniLM-L6's pooler at 99.99% under a
        global 0.5) cuts the path to the task head almost as surely as an empty one."""
        found = {}
        for name, bits in self.tensors.items():
            if bits.numel():
                sparsity = 1.0 - int(bits.sum()) / bits.numel()
                if sparsity >= threshold:
                    found[name] = sparsity
        return found

    def layer_sparsity(self) -> dict[str, float]:
        """Sparsity per encoder layer (``"0"``, ``"1"``, ...) plus ``"other"`` (pooler, embeddings)."""
        kept: dict[str, int] = {}
        total: dict[str, int] = {}
        for name, bits in self.tensors.items():
            layer = self.info[name].layer
            key = str(layer) if layer is not None else "other"
            kept[key] = kept.get(key, 0) + _count(bits)
            total[key] = total.get(key, 0) + bits.numel()
        return {k: 1.0 - kept[k] / total[k] for k in total}

    # -- algebra ------------------------------------------------------------------------------
    def _check_same_matrices(self, other: UnstructuredMask) -> None:
        if list(self.tensors) != list(other.tensors):
            missing = sorted(set(self.tensors) ^ set(other.tensors))
            raise TicketlabError(f"masks cover different matrices (first difference: {missing[0]!r})")
        for name in self.tensors:
            if self.tensors[name].shape != other.tensors[name].shape:
                raise TicketlabError(
                    f"masks disagree on the shape of {name!r}: "
                    f"{tuple(self.tensors[name].shape)} vs {tuple(other.tensors[name].shape)}"
                )

    def _combine(self, other: UnstructuredMask, op) -> UnstructuredMask:
        self._check_same_matrices(other)
        bits = {n: op(self.tensors[n], other.tensors[n]) for n in self.tensors}
        return UnstructuredMask(
            bits, Provenance(method="algebra", scope=self.provenance.scope), dict(self.info)
        )

    def __and__(self, other: UnstructuredMask) -> UnstructuredMask:
        return self._combine(other, torch.logical_and)

    def __or__(self, other: UnstructuredMask) -> UnstructuredMask:
        return self._combine(other, torch.logical_or)

    def __sub__(self, other: UnstructuredMask) -> UnstructuredMask:
        """Kept here and pruned in ``other``."""
        return self._combine(other, lambda a, b: a & ~b)

    def __invert__(self) -> UnstructuredMask:
        bits = {n: ~t for n, t in self.tensors.items()}
        return UnstructuredMask(
            bits, Provenance(method="algebra", scope=self.provenance.scope), dict(self.info)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnstructuredMask) or list(self.tensors) != list(other.tensors):
            return False
        return all(torch.equal(self.tensors[n], other.tensors[n]) for n in self.tensors)

    __hash__ = None  # mutable container

    def intersection_size(self, other: UnstructuredMask) -> int:
        self._check_same_matrices(other)
        return sum(_count(self.tensors[n] & other.tensors[n]) for n in self.tensors)

    def jaccard(self, other: UnstructuredMask) -> float:
        """|kept here AND kept there| / |kept here OR kept there|."""
        inter = self.intersection_size(other)
        union = self.num_kept() + other.num_kept() - inter
        return inter / union if union else 1.0

    def subset(self, names: Iterable[str]) -> UnstructuredMask:
        names = list(names)
        return UnstructuredMask(
            {n: self.tensors[n] for n in names}, self.provenance, {n: self.info[n] for n in names}
        )
