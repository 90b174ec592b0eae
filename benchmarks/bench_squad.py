"""SQuAD v1.1 with MiniLM-L6 through ``ticketlab finetune --task squad``: EM/F1 and throughput.

This machine has only the official dev set (``../shared/data/squad/dev-v1.1.json``), so the run
trains on 38 of its 48 articles and evaluates on the other 10 (``SquadTask``'s default article
split, seed 0, whatever the run's seed); no article is in both. On two CPU cores a whole epoch over
the 38 articles (8,309 questions, length 384) takes hours, so the defaults train on the first
``--max-train-samples`` questions and evaluate on the first ``--max-eval-samples`` held-out ones;
the output and the JSON say so. The dense model and, with ``--sparsity``, an OMP ticket of the same
model run side by side (same seed, same data), to show what a ticket costs on an extractive task.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_squad.py \\
        [--max-train-samples 1500] [--max-eval-samples 500] [--epochs 2] [--lr 1e-4] [--sparsity 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_common import RESULTS_DIR, machine, markdown_table, shared_dir

MODEL = "models/all-MiniLM-L6-v2"
SQUAD = "data/squad"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train-samples", type=int, default=1500, help="training questions (0: all)")
    parser.add_argument("--max-eval-samples", type=int, default=500, help="held-out questions (0: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4, help="suits MiniLM-L6 (BERT-base's is 3e-5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sparsity", type=float, default=0.5, help="OMP ticket beside the dense model (0: none)"
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "squad.json"), help="results JSON")
    return parser.parse_args(argv)


def run(spec_fields: dict, out: Path, cache: Path) -> dict:
    from ticketlab.experiments.finetune import FinetuneSpec, run_finetune

    results = run_finetune(FinetuneSpec(**spec_fields), out, cache_dir=cache, quiet=True)
    return {
        "best": results["best"],
        "best_step": results["best_step"],
        "final": results["final"],
        "train_examples": results["train_examples"],
        "train_examples_per_second": results["train_examples_per_second"],
        "train_seconds": results["train_seconds"],
        "eval_seconds": results["eval_seconds"],
        "wall_seconds": results["wall_seconds"],
        "protocol": results.get("protocol"),
        "sparsity": results.get("sparsity"),
    }


def main(argv: list[str] | None = None) -> int:
    import transformers

    from ticketlab.masks import save_mask
    from ticketlab.models import load_encoder
    from ticketlab.pruning import prune

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    args = parse_args(argv)
    shared = shared_dir()
    if shared is None:
        print("TICKETLAB_SHARED is not set (or missing): nothing to benchmark", file=sys.stderr)
        return 1
    model = str(shared / MODEL)
    scale = (
        f"trained on the first {args.max_train_samples or 'all'} questions of 38 dev articles, "
        f"evaluated on the first {args.max_eval_samples or 'all'} questions of the other 10 "
        "(the official dev set split by article: no train set on this machine)"
    )
    print(
        f"MiniLM-L6 on SQuAD v1.1, lr {args.lr}, {args.epochs} epochs, seed {args.seed}: {scale}", flush=True
    )
    common = {
        "model": model,
        "task": "squad",
        "data_dir": str(shared / SQUAD),
        "lr": args.lr,
        "epochs": args.epochs,
        "seed": args.seed,
        "max_train_samples": args.max_train_samples or None,
        "max_eval_samples": args.max_eval_samples or None,
    }
    rows = []
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = {"dense": None}
        if args.sparsity:
            mask_path = work / "omp.safetensors"
            save_mask(prune(load_encoder(model), "omp", args.sparsity, source_model=model), mask_path)
            variants[f"OMP {args.sparsity:.0%}"] = str(mask_path)
        for name, mask in variants.items():
            result = run(dict(common, mask=mask), work / name.replace(" ", "_"), work / "cache")
            runs[name] = result
            rows.append(
                [
                    name,
                    f"{result['best']['exact_match']:.2f}",
                    f"{result['best']['f1']:.2f}",
                    f"{result['final']['f1']:.2f}",
                    f"{result['train_examples_per_second']:.1f}",
                    f"{result['wall_seconds'] / 60:.1f}",
                ]
            )
            print(f"{name}: EM {rows[-1][1]} F1 {rows[-1][2]} ({rows[-1][5]} min)", flush=True)
    table = markdown_table(rows, ["model", "best EM", "best F1", "final F1", "train windows/s", "wall min"])
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "benchmark": "squad",
                "machine": machine(),
                "scale": scale,
                "args": {**vars(args), "out": Path(args.out).name},
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
