"""Ways to zero the pruned entries of the masked matrices in place, timed alone, with their memory.

What ``MaskEnforcer`` does twice per training step (the gradients after backward, the weights after
``optimizer.step()``), on a MiniLM-L6-shaped encoder (6 layers, hidden 384, FFN 1536; random
weights, no download; 10.6M weights in the ``encoder`` scope) with a global OMP mask at 70%:

- multiply by a keep mask in the parameter's dtype (float32: 4 bytes per weight; the enforcer's
  form until 2026-12);
- multiply by a ``uint8`` keep mask (1 byte; the enforcer's form now);
- multiply by a ``bool`` keep mask (1 byte);
- ``masked_fill_`` with the pruned bits (1 byte);
- ``torch.where(keep, p, 0, out=p)`` (1 byte);
- the float32 bits AND an int8 mask of 0 / -1 (1 byte; exact +0.0 even for NaN);
- NumPy's multiply by the bool mask (1 byte);
- a bool mask widened to float chunk by chunk, then multiplied (1 byte + one chunk).

Every round times each form once in a rotating order; medians are reported.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src taskset -c 0 python benchmarks/bench_mask_zeroing.py [--repeats 25]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np
import torch

from bench_common import markdown_table, summary, timed, write_results
from ticketlab.models import EncoderAdapter
from ticketlab.pruning import prune


def minilm_shaped() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    return BertModel(config).eval()


def forms(
    weights: list[torch.Tensor], keeps: list[torch.Tensor]
) -> dict[str, tuple[Callable[[], None], int]]:
    """Each form: (the in-place zeroing of every matrix, bytes of mask it holds)."""
    as_float = [k.float() for k in keeps]
    as_uint8 = [k.to(torch.uint8) for k in keeps]
    pruned = [~k for k in keeps]
    as_and = [k.to(torch.int8) * -1 for k in keeps]  # 0 -> 0x00000000, -1 -> 0xFFFFFFFF once widened
    zero = torch.zeros(())
    chunk = torch.empty(1 << 14)
    numel = sum(k.numel() for k in keeps)

    def chunked(weight: torch.Tensor, keep: torch.Tensor) -> None:
        flat, bits = weight.view(-1), keep.view(-1)
        for start in range(0, flat.numel(), chunk.numel()):
            end = min(flat.numel(), start + chunk.numel())
            part = chunk[: end - start]
            part.copy_(bits[start:end])
            flat[start:end].mul_(part)

    def each(op) -> Callable[[], None]:
        return lambda: [op(w, i) for i, w in enumerate(weights)] and None

    return {
        "mul by float32 keep mask": (each(lambda w, i: w.mul_(as_float[i])), 4 * numel),
        "mul by uint8 keep mask (enforcer)": (each(lambda w, i: w.mul_(as_uint8[i])), numel),
        "mul by bool keep mask": (each(lambda w, i: w.mul_(keeps[i])), numel),
        "masked_fill_ (pruned bits)": (each(lambda w, i: w.masked_fill_(pruned[i], 0.0)), numel),
        "torch.where(keep, w, 0, out=w)": (each(lambda w, i: torch.where(keeps[i], w, zero, out=w)), numel),
        "int32 view AND int8 0/-1 mask": (
            each(lambda w, i: w.view(torch.int32).bitwise_and_(as_and[i])),
            numel,
        ),
        "numpy multiply by bool": (
            each(lambda w, i: np.multiply(w.numpy(), keeps[i].numpy(), out=w.numpy())),
            numel,
        ),
        "bool widened per 16K chunk, then mul": (each(lambda w, i: chunked(w, keeps[i])), numel),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = minilm_shaped()
    mask = prune(model, "omp", 0.7)
    adapter = EncoderAdapter(model)
    weights = [adapter.parameter(n).detach() for n in mask.tensors]
    keeps = list(mask.tensors.values())
    numel = sum(k.numel() for k in keeps)
    variants = forms(weights, keeps)
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats + 1):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            seconds, _ = timed(variants[name][0])
            if repeat:  # the first round warms up
                times[name].append(seconds)
    results = {
        "model": "BertModel, MiniLM-L6 shapes (6 x 384, FFN 1536), random weights; encoder scope, OMP 70% global",
        "masked_weights": numel,
        "torch_threads": args.threads,
        "note": args.note,
        "forms": {
            name: {**summary(times[name]), "mask_bytes_per_weight": variants[name][1] / numel}
            for name in names
        },
    }
    path = write_results("mask_zeroing", results)
    rows = [
        [name, f"{1e3 * statistics.median(times[name]):.1f}", f"{variants[name][1] / numel:g}"]
        for name in names
    ]
    print(markdown_table(rows, ["form", "median ms (one pass)", "mask bytes / weight"]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
