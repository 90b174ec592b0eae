"""Fingerprints of a model's weights in scope, so a mask refuses to land on the wrong model.

Each masked tensor gets a digest of its *kept* weights (pruned entries read as +0.0, every -0.0 as
+0.0) as float32 little-endian in row-major order. Kept weights identify the source model, and the
digest is the same whether the model is still dense or already has this mask applied, so
re-applying a mask is fine.

The bytes hashed have never changed; the hash has. Masks written before 2026-12 used BLAKE2b-128
(:data:`BLAKE2B`); new ones use XXH3-128 (:data:`ALGORITHM`, the ``xxhash`` package), about 15x
faster, which took ``prune()`` of a BERT-base scope from 1.5 s to well under half a second. The
mask header names the algorithm (``provenance.fingerprint.algorithm``) and checks use the one
named, so old masks still verify.

Both digests of a tensor (dense and kept) come from one pass over it, in cache-sized chunks: the
float32 weights are read in place (no full-size copy), and only a chunk's worth of normalised
values is ever written.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import xxhash

from ticketlab.errors import TicketlabError

ALGORITHM = "xxh3-128/float32-le/kept"
BLAKE2B = "blake2b-128/float32-le/kept"  # masks written before XXH3; still verified

# A fresh hasher per algorithm; every one takes bytes through update() and ends in hexdigest().
_HASHERS: dict[str, Callable[[], Any]] = {
    ALGORITHM: xxhash.xxh3_128,
    BLAKE2B: lambda: hashlib.blake2b(digest_size=16),
}
ALGORITHMS: tuple[str, ...] = tuple(_HASHERS)

# Floats per chunk: 512 KB of values and as much of output (fastest of 2^14..2^17 on BERT-base).
_CHUNK_SIZE = 1 << 17
_BIG_ENDIAN = sys.byteorder == "big"


def new_hasher(algorithm: str = ALGORITHM):
    """A fresh hasher for a fingerprint algorithm named in a mask header."""
    try:
        return _HASHERS[algorithm]()
    except KeyError:
        raise TicketlabError(
            f"unknown fingerprint algorithm {algorithm!r} (this ticketlab knows {', '.join(ALGORITHMS)}); "
            "upgrade ticketlab, or pass allow_fingerprint_mismatch=True to skip the weight check"
        ) from None


def _update(hasher, values: np.ndarray) -> None:
    hasher.update(values.byteswap() if _BIG_ENDIAN else values)


def digest_pair(
    weight: torch.Tensor, keep: torch.Tensor | None, algorithm: str = ALGORITHM, *, dense: bool = True
) -> tuple[str | None, str | None]:
    """(digest of the dense weights, digest of the kept weights), from one chunked pass.

    Either is skipped (``None``): the dense one with ``dense=False``, the kept one without ``keep``.
    """
    dense_hasher = new_hasher(algorithm) if dense else None
    kept_hasher = new_hasher(algorithm) if keep is not None else None
    flat = weight.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    native = flat.numpy() if flat.dtype == torch.float32 else None
    keep_bits = keep.detach().reshape(-1).cpu().numpy() if keep is not None else None
    size = min(_CHUNK_SIZE, max(1, flat.numel()))
    values_buffer = np.empty(size, dtype=np.float32)
    kept_buffer = np.empty(size, dtype=np.float32)
    for start in range(0, flat.numel(), size):
        if native is not None:
            part = native[start : start + size]
        else:  # float16/bfloat16/float64: convert the chunk through torch (NumPy has no bfloat16)
            part = values_buffer[: min(size, flat.numel() - start)]
            torch.from_numpy(part).copy_(flat[start : start + size])
        values = np.add(part, 0.0, out=values_buffer[: part.size])  # -0.0 + 0.0 is +0.0
        if dense_hasher is not None:
            _update(dense_hasher, values)
        if kept_hasher is not None:
            bits = keep_bits[start : start + values.size]
            # A pruned inf or NaN times 0 is NaN, not the +0.0 a pruned entry reads as: redo the
            # chunk the exact (slower) way. A sum is NaN only when such a value is there.
            with np.errstate(invalid="ignore"):
                kept = np.multiply(values, bits, out=kept_buffer[: values.size])
                if np.isnan(kept.sum()):
                    np.copyto(kept, np.where(bits, values, np.float32(0.0)))
            np.add(kept, 0.0, out=kept)  # a negative weight times 0 is -0.0
            _update(kept_hasher, kept)
    return (
        dense_hasher.hexdigest() if dense_hasher is not None else None,
        kept_hasher.hexdigest() if kept_hasher is not None else None,
    )


def tensor_digest(weight: torch.Tensor, keep: torch.Tensor | None = None, algorithm: str = ALGORITHM) -> str:
    """The digest of ``weight`` (of its kept entries, pruned ones as +0.0, with ``keep``)."""
    if keep is None:
        return digest_pair(weight, None, algorithm)[0]
    return digest_pair(weight, keep, algorithm, dense=False)[1]


def run_jobs(jobs: Iterable[tuple[str, Callable[[], Any]]], workers: int = 2) -> dict[str, Any]:
    """Run named per-tensor jobs on up to ``workers`` threads (no more than the CPUs), results by
    name. NumPy's loops release the GIL; the hashers mostly do not, so for fingerprints more
    threads than two buy nothing. One job, or one worker, runs in the calling thread."""
    jobs = list(jobs)
    workers = min(len(jobs), os.cpu_count() or 1, workers)
    if workers <= 1:
        return {name: job() for name, job in jobs}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(name, pool.submit(job)) for name, job in jobs]
        return {name: future.result() for name, future in futures}


def kept_digests(
    weights: Mapping[str, torch.Tensor], keep: Mapping[str, torch.Tensor], algorithm: str = ALGORITHM
) -> dict[str, str]:
    return run_jobs(
        (name, lambda name=name: tensor_digest(weights[name], keep[name], algorithm)) for name in keep
    )


def combined(digests: Mapping[str, str], algorithm: str = ALGORITHM) -> str:
    """One digest over a set of per-tensor digests (order-independent: sorted by name)."""
    h = new_hasher(algorithm)
    for name in sorted(digests):
        h.update(name.encode())
        h.update(digests[name].encode())
    return h.hexdigest()


def fingerprint(mask, source, algorithm: str = ALGORITHM) -> dict:
    """Digests of ``source``'s weights under ``mask``: the header's ``fingerprint`` field.

    ``kept`` (per tensor) is checked when the mask is applied; ``model`` identifies the dense
    source weights in scope, for provenance. One pass over each weight gives both.
    """
    from ticketlab.models.adapters import EncoderAdapter

    adapter = EncoderAdapter(source)
    pairs = run_jobs(
        (n, lambda n=n, bits=bits: digest_pair(adapter.parameter(n), bits, algorithm))
        for n, bits in mask.tensors.items()
    )
    return {
        "algorithm": algorithm,
        "kept": {n: kept for n, (_, kept) in pairs.items()},
        "model": combined({n: dense for n, (dense, _) in pairs.items()}, algorithm),
    }
