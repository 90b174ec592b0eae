"""CPU inference latency of unstructured tickets as CSR layers, against dense and structured shrink.

For MiniLM-L6 (``$TICKETLAB_SHARED/models/all-MiniLM-L6-v2``; skipped when absent) and a
BERT-base-sized encoder (``BertModel(BertConfig())``, random weights: latency does not depend on
the values), at each sparsity (default 50, 70, 90, 95%):

- ``dense``: the model as is (a masked dense model runs exactly as fast: the zeros are multiplied);
- ``csr``: a global OMP mask over the ``encoder`` scope (chen2020), every masked linear layer as
  :class:`ticketlab.models.sparse.CsrLinear` (what ``ticketlab export --format csr`` writes and
  ``load_sparse`` loads); its output is checked against the masked dense model;
- ``shrink``: a structured ticket with about the same number of weights in scope, the same fraction
  of heads and of FFN neurons kept in every layer (at least one head), physically removed by
  :func:`ticketlab.models.shrink.shrink`.

Batches of 1 and 8 sequences of 128 tokens; one torch thread (run it pinned, ``taskset -c 0``).
Every round times each variant once in a rotating order, so load from other processes hits all
alike; medians are reported. Writes benchmarks/results/sparse_inference.json.

    OMP_NUM_THREADS=1 TICKETLAB_SHARED=../shared PYTHONPATH=$PWD/src taskset -c 0 \\
        python benchmarks/bench_sparse_inference.py [--repeats 5] [--sparsities 0.5,0.7,0.9,0.95]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics

import torch
from torch import nn

from bench_common import markdown_table, shared_dir, summary, timed, write_results
from ticketlab.masks import StructuredMask, apply_mask
from ticketlab.models import EncoderAdapter
from ticketlab.models.shrink import shrink
from ticketlab.models.sparse import sparsify
from ticketlab.pruning import prune

MINILM = "models/all-MiniLM-L6-v2"


def models() -> dict[str, nn.Module]:
    from transformers import AutoModel, BertConfig, BertModel

    found: dict[str, nn.Module] = {}
    shared = shared_dir()
    if shared is not None and (shared / MINILM).is_dir():
        found["MiniLM-L6"] = AutoModel.from_pretrained(shared / MINILM, attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    found["BERT-base-sized"] = BertModel(BertConfig(attn_implementation="sdpa")).eval()
    return found


def csr_model(model: nn.Module, sparsity: float) -> tuple[nn.Module, nn.Module, float]:
    """(the CSR model, the masked dense model, the fraction of the scope's weights kept)."""
    mask = prune(model, "omp", sparsity, scope="encoder", scheme="global")
    masked = copy.deepcopy(model)
    apply_mask(masked, mask).remove()
    adapter = EncoderAdapter(masked)
    keep = {adapter.full_name(n).removesuffix(".weight"): bits for n, bits in mask.tensors.items()}
    sparse = copy.deepcopy(masked)
    sparsify(sparse, keep, "csr")
    return sparse.eval(), masked.eval(), 1.0 - mask.sparsity


def shrunk_model(model: nn.Module, kept_fraction: float) -> tuple[nn.Module, float]:
    """The model with the same fraction of heads and FFN neurons kept per layer (first ones; which
    does not matter for speed), and the fraction of the scope's weights it keeps."""
    adapter = EncoderAdapter(model)
    heads = max(1, round(kept_fraction * adapter.num_heads))
    neurons = max(1, round(kept_fraction * adapter.ffn_size))
    head_bits = torch.zeros(adapter.num_layers, adapter.num_heads, dtype=torch.bool)
    head_bits[:, :heads] = True
    ffn_bits = torch.zeros(adapter.num_layers, adapter.ffn_size, dtype=torch.bool)
    ffn_bits[:, :neurons] = True
    small = shrink(model, StructuredMask(head_bits, ffn_bits)).eval()
    in_scope = lambda m: sum(w.numel() for w in EncoderAdapter(m).prunable_weights("encoder").values())  # noqa: E731
    return small, in_scope(small) / in_scope(model)


def forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).last_hidden_state


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sparsities", default="0.5,0.7,0.9,0.95")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="what else ran on the machine (recorded)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    results: dict = {
        "torch_threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "note": args.note,
        "length": args.length,
        "mask": "global OMP over the encoder scope (chen2020)",
        "models": {},
    }
    rows = []
    for model_name, model in models().items():
        variants: dict[str, nn.Module] = {"dense": model}
        kept: dict[str, float] = {"dense": 1.0}
        max_error = {}
        generator = torch.Generator().manual_seed(0)
        check_ids = torch.randint(1000, model.config.vocab_size, (2, args.length), generator=generator)
        for sparsity in sparsities:
            sparse, masked, fraction = csr_model(model, sparsity)
            variants[f"csr {sparsity:.0%}"], kept[f"csr {sparsity:.0%}"] = sparse, fraction
            max_error[f"csr {sparsity:.0%}"] = float(
                (forward(sparse, check_ids) - forward(masked, check_ids)).abs().max()
            )
            small, small_fraction = shrunk_model(model, fraction)
            variants[f"shrink {sparsity:.0%}"], kept[f"shrink {sparsity:.0%}"] = small, small_fraction
            del masked
        entry: dict = {
            "kept_fraction_of_scope": kept,
            "csr_max_abs_error_vs_masked_dense": max_error,
            "latency": {},
        }
        for batch in batches:
            ids = torch.randint(1000, model.config.vocab_size, (batch, args.length), generator=generator)
            names = list(variants)
            times: dict[str, list[float]] = {n: [] for n in names}
            for name in names:  # warm-up
                forward(variants[name], ids)
            for repeat in range(args.repeats):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                    times[name].append(timed(lambda m=variants[name], x=ids: forward(m, x))[0])
            dense = statistics.median(times["dense"])
            entry["latency"][f"batch {batch}"] = {
                name: {**summary(t), "speedup_vs_dense": dense / statistics.median(t)}
                for name, t in times.items()
            }
            print(
                f"{model_name}, batch {batch}: "
                + ", ".join(f"{n} {1e3 * statistics.median(t):.0f} ms" for n, t in times.items()),
                flush=True,
            )
            for sparsity in sparsities:
                csr = entry["latency"][f"batch {batch}"][f"csr {sparsity:.0%}"]
                small = entry["latency"][f"batch {batch}"][f"shrink {sparsity:.0%}"]
                rows.append(
                    [
                        model_name,
                        batch,
                        f"{sparsity:.0%}",
                        f"{1e3 * dense:.0f}",
                        f"{1e3 * csr['median_s']:.0f}",
                        f"{csr['speedup_vs_dense']:.2f}x",
                        f"{1e3 * small['median_s']:.0f} ({kept[f'shrink {sparsity:.0%}']:.1%} kept)",
                        f"{small['speedup_vs_dense']:.2f}x",
                    ]
                )
        results["models"][model_name] = entry
    path = write_results("sparse_inference", results)
    print()
    print(
        markdown_table(
            rows,
            [
                "model",
                "batch",
                "sparsity",
                "dense ms",
                "CSR ms",
                "CSR speed-up",
                "shrink ms",
                "shrink speed-up",
            ],
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
