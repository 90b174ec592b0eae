"""Fingerprints of a model's weights in scope, so a mask refuses to land on the wrong model.

Each masked tensor gets a BLAKE2b digest of its *kept* weights (pruned entries read as +0.0) in
float32 little-endian. Kept weights identify the source model, and the digest is the same whether
the model is still dense or already has this mask applied, so re-applying a mask is fine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

ALGORITHM = "blake2b-128/float32-le/kept"


def tensor_digest(weight: torch.Tensor, keep: torch.Tensor | None = None) -> str:
    values = weight.detach().to("cpu", torch.float32)
    if keep is not None:
        values = torch.where(keep, values, torch.zeros((), dtype=torch.float32))
    # +0.0 turns every -0.0 into +0.0: a weight zeroed by multiplication hashes like one zeroed by fill.
    values = (values + 0.0).contiguous()
    data = values.numpy().astype("<f4", copy=False)
    return hashlib.blake2b(np.ascontiguousarray(data).data, digest_size=16).hexdigest()


def _digest_all(jobs: Iterable[tuple[str, Callable[[], str]]]) -> dict[str, str]:
    """Run digest jobs on a few threads: BLAKE2b and torch's copies release the GIL, so the
    hashing of a BERT-base scope (two passes over 340 MB) takes a fraction of the serial time."""
    jobs = list(jobs)
    workers = min(len(jobs), os.cpu_count() or 1, 8)
    if workers <= 1:
        return {name: job() for name, job in jobs}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(name, pool.submit(job)) for name, job in jobs]
        return {name: future.result() for name, future in futures}


def kept_digests(weights: Mapping[str, torch.Tensor], keep: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return _digest_all((name, lambda name=name: tensor_digest(weights[name], keep[name])) for name in keep)


def combined(digests: Mapping[str, str]) -> str:
    """One digest over a set of per-tensor digests (order-independent: sorted by name)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(digests):
        h.update(name.encode())
        h.update(digests[name].encode())
    return h.hexdigest()


def fingerprint(mask, source) -> dict:
    """Digests of ``source``'s weights under ``mask``: the header's ``fingerprint`` field.

    ``kept`` (per tensor) is checked when the mask is applied; ``model`` identifies the dense
    source weights in scope, for provenance.
    """
    from ticketlab.models.adapters import EncoderAdapter

    adapter = EncoderAdapter(source)
    weights = {n: adapter.parameter(n) for n in mask.tensors}
    dense = _digest_all((n, lambda w=w: tensor_digest(w)) for n, w in weights.items())
    return {"algorithm": ALGORITHM, "kept": kept_digests(weights, mask.tensors), "model": combined(dense)}
