"""Why AdamW fails TAMT: the score gradients' sizes, and how many kept weights each optimizer swaps.

On MiniLM-L6 (``$TICKETLAB_SHARED``), TAMT-KD at ``--sparsity`` (``encoder+embeddings``,
``per-matrix``, OMP init): first one gradient of the KD loss with respect to the scores (per
matrix: median |g| and the fraction below 1e-6), then two short runs on the same data and steps,
``adamw`` (constant lr) and ``bertadam`` (the paper's, lr decaying to 0 over the run), at the same
``--lr``, with masks saved every ``--every`` steps; for each, the fraction of OMP's kept weights
swapped out at each saved step, the median |w| of the weights swapped in and out (against that of
the matrix's kept and pruned ones), and the training loss. Writes
``benchmarks/results/tamt_sign_descent.json``.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_tamt_sign_descent.py \\
        [--sparsity 0.7] [--lr 5e-4] [--steps 30] [--every 5] [--batch-size 8] [--max-length 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import markdown_table, require_shared, shared_dir, write_results

MODEL = "models/all-MiniLM-L6-v2"
TEXT = "data/wikitext-2/test.txt"


def gradient_sizes(
    model: str, text: str, sparsity: float, batch_size: int, max_length: int
) -> dict[str, Any]:
    """One KD gradient of the scores at the OMP initialisation: per matrix, median |g| and share < 1e-6."""
    from ticketlab.data.text import load_text_blocks
    from ticketlab.models import load_encoder, load_tokenizer
    from ticketlab.pruning import prune
    from ticketlab.pruning.tamt import LearnedMask
    from ticketlab.training.tamt import TamtObjective, tamt_loss

    encoder = load_encoder(model)
    blocks = load_text_blocks(load_tokenizer(model), text, max_length=max_length, progress=False)
    init = prune(encoder, "omp", sparsity, scope="encoder+embeddings", scheme="per-matrix")
    learned = LearnedMask(encoder, init, sparsity, "per-matrix")
    objective = TamtObjective(encoder, learned, "kd", kd_kind="cosine")
    with learned.attached():
        loss, _ = tamt_loss(
            objective,
            blocks.input_ids[:batch_size],
            blocks.attention_mask[:batch_size],
            list(range(batch_size)),
            seed=0,
            step=0,
        )
        loss.backward()
    rows = {}
    for name in learned.names:
        grad = learned.score(name).grad
        if grad is None:  # the pooler: no part in KD
            continue
        g = grad.abs().reshape(-1).float()
        rows[name] = {
            "median_abs_grad": float(g.median()),
            "share_below_1e-6": float((g < 1e-6).float().mean()),
            "l2_norm": float(g.norm()),
        }
    return rows


def swap_stats(omp, mask, weights) -> dict[str, float]:
    """Fraction of OMP's kept weights swapped out, and the median |w| of those swapped in and out."""
    import torch

    kept = swapped = 0
    out_w, in_w = [], []
    for name, bits in omp.tensors.items():
        w = weights[name].abs()
        kept += int(bits.sum())
        gone = bits & ~mask.tensors[name]
        came = ~bits & mask.tensors[name]
        swapped += int(gone.sum())
        if gone.any():
            out_w.append(w[gone])
            in_w.append(w[came])
    result = {"swapped_of_kept": swapped / kept}
    if out_w:
        result["median_abs_w_swapped_out"] = float(torch.cat(out_w).median())
        result["median_abs_w_swapped_in"] = float(torch.cat(in_w).median())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    require_shared("bench_tamt_sign_descent.py", MODEL, TEXT)
    shared = shared_dir()
    import torch
    import transformers

    from ticketlab.experiments.tamt import TamtSpec, run_tamt
    from ticketlab.masks import load_mask
    from ticketlab.models import EncoderAdapter, load_encoder
    from ticketlab.pruning import prune

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    model, text = str(shared / MODEL), str(shared / TEXT)
    started = time.perf_counter()
    grads = gradient_sizes(model, text, args.sparsity, args.batch_size, args.max_length)
    medians = [r["median_abs_grad"] for r in grads.values()]
    shares = [r["share_below_1e-6"] for r in grads.values()]
    print(
        f"score gradients over {len(grads)} matrices: median |g| {min(medians):.2g} to {max(medians):.2g}, "
        f"{100 * min(shares):.0f}-{100 * max(shares):.0f}% of entries below 1e-6"
    )
    encoder = load_encoder(model)
    adapter = EncoderAdapter(encoder)
    omp = prune(encoder, "omp", args.sparsity, scope="encoder+embeddings", scheme="per-matrix")
    weights = {n: adapter.parameter(n).detach() for n in omp.tensors}
    budgets = tuple(range(args.every, args.steps, args.every))
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for optimizer in ("adamw", "bertadam"):
            spec = TamtSpec(
                model=model,
                objective="kd",
                sparsity=args.sparsity,
                text=text,
                steps=args.steps,
                save_at=budgets,
                batch_size=args.batch_size,
                max_length=args.max_length,
                lr=args.lr,
                optimizer=optimizer,
            )
            results = run_tamt(spec, Path(tmp) / optimizer, progress=False)
            paths = {**{int(k): v for k, v in results["budget_masks"].items()}, args.steps: results["mask"]}
            runs[optimizer] = {
                "swaps": {step: swap_stats(omp, load_mask(paths[step]), weights) for step in sorted(paths)},
                "losses": results["losses"],
                "wall_s": results["search_cost"]["wall_time_s"],
            }
    rows = []
    for step in sorted(runs["adamw"]["swaps"]):
        row: list[Any] = [step]
        for optimizer in ("adamw", "bertadam"):
            s = runs[optimizer]["swaps"][step]
            row.append(f"{100 * s['swapped_of_kept']:.2f}%")
            row.append(
                f"{s['median_abs_w_swapped_out']:.4f} / {s['median_abs_w_swapped_in']:.4f}"
                if "median_abs_w_swapped_out" in s
                else ""
            )
        rows.append(row)
    header = [
        "step",
        "adamw: swapped",
        "adamw: median |w| out / in",
        "bertadam: swapped",
        "bertadam: |w| out / in",
    ]
    print(markdown_table(rows, header))
    kept_w = torch.cat([weights[n].abs()[omp.tensors[n]] for n in omp.tensors])
    pruned_w = torch.cat([weights[n].abs()[~omp.tensors[n]] for n in omp.tensors])
    reference = {"median_abs_w_kept": float(kept_w.median()), "median_abs_w_pruned": float(pruned_w.median())}
    print(
        f"for reference: median |w| of OMP's kept {reference['median_abs_w_kept']:.4f}, pruned {reference['median_abs_w_pruned']:.4f}"
    )
    path = write_results(
        "tamt_sign_descent",
        {
            "settings": vars(args),
            "model": MODEL,
            "text": TEXT,
            "gradients": {
                "median_abs_grad_range": [min(medians), max(medians)],
                "share_below_1e-6_range": [min(shares), max(shares)],
                "median_of_medians": statistics.median(medians),
                "per_matrix": grads,
            },
            "reference": reference,
            "runs": runs,
            "table": {"header": header, "rows": rows},
            "wall_seconds": time.perf_counter() - started,
            "command": " ".join(["python", "benchmarks/bench_tamt_sign_descent.py", *(argv or sys.argv[1:])]),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
