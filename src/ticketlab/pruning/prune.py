"""From a model and a method to a finished, fingerprinted :class:`UnstructuredMask`."""

from __future__ import annotations

from typing import Any

from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.masks.fingerprint import fingerprint
from ticketlab.masks.provenance import Provenance, TensorInfo
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models.adapters import EncoderAdapter
from ticketlab.pruning.registry import get_method
from ticketlab.pruning.selection import validate_sparsity
from ticketlab.specs import check_seed

# Each paper's choice of scope and scheme (SPECS.md section 0).
PROTOCOLS: dict[str, dict[str, str]] = {
    "chen2020": {"scope": "encoder", "scheme": "global"},
    "liu2022": {"scope": "encoder+embeddings", "scheme": "per-matrix"},
}


def prune(
    model: nn.Module,
    method: str = "omp",
    sparsity: float = 0.5,
    *,
    scope: str = "encoder",
    scheme: str = "global",
    seed: int = 0,
    source_model: str | None = None,
    pretrained: nn.Module | None = None,
    **method_params: Any,
) -> UnstructuredMask:
    """Find a mask of ``model``'s weights in ``scope`` with the named method.

    ``pretrained`` is the model the mask will be applied to and fingerprinted against when it
    differs from the model whose weights were ranked (IMP ranks trained weights, then rewinds).
    """
    validate_sparsity(sparsity)
    check_seed(seed, "seed")
    adapter = EncoderAdapter(model)
    strategy = get_method(method, **method_params)
    matrices = adapter.prunable_matrices(scope)
    weights = {m.name: adapter.parameter(m.name) for m in matrices}
    bits = strategy.select(weights, sparsity, scheme, seed)
    if set(bits) != set(weights):
        raise TicketlabError(f"method {method!r} returned bits for other matrices than the scope's")
    info = {
        m.name: TensorInfo(shape=tuple(weights[m.name].shape), role=m.role, layer=m.layer) for m in matrices
    }
    provenance = Provenance(
        method=method,
        method_params=strategy.params(),
        scope=scope,
        scheme=scheme,
        target_sparsity=float(sparsity),
        seed=int(seed),
        source_model=source_model or getattr(model.config, "_name_or_path", None) or None,
    )
    mask = UnstructuredMask({m.name: bits[m.name].cpu() for m in matrices}, provenance, info)
    mask.provenance.fingerprint = fingerprint(mask, pretrained if pretrained is not None else model)
    return mask
