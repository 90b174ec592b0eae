"""Where a mask came from: the JSON header that travels with every mask file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TensorInfo:
    """Shape and place of one masked tensor (so `inspect` needs no model)."""

    shape: tuple[int, ...]
    role: str = "unknown"
    layer: int | None = None


@dataclass
class Provenance:
    """How a mask was made. Every field is written to the mask file's header."""

    method: str = "unknown"
    method_params: dict[str, Any] = field(default_factory=dict)
    scope: str = "encoder"
    scheme: str = "global"
    target_sparsity: float | None = None
    seed: int | None = None
    source_model: str | None = None
    # Per-tensor digests of the source model's kept weights (pruned entries read as zero), and of
    # the dense weights; see ticketlab.masks.fingerprint.
    fingerprint: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
