"""IMP on MLM against one-shot magnitude pruning (OMP): the tickets' pre-training losses.

Runs ``ticketlab imp --task mlm`` (resumable) and, at every level's sparsity, puts the IMP mask and
the OMP mask of the same scope and scheme on the *pre-trained* weights (no training) and scores
both on the held-out text, as TAMT evaluates tickets: MLM loss (fixed corruption; the run's
initial MLM head, the same for every mask) and KD loss (MSE of the layers' hidden states against
the dense model). Also reported: the IMP level's own held-out loss after its training, and the
search cost of the IMP mask (all training before it). Results go to ``OUT/imp_mlm_tickets.json``.

Real data (hand this to a machine with time; on two busy CPU cores MiniLM trains ~1 step/s)::

    python benchmarks/imp_mlm_tickets.py --model ../shared/models/all-MiniLM-L6-v2 \\
        --text ../shared/data/wikitext-2/test.txt --eval-text ../shared/data/wikitext-2/valid.txt \\
        --levels 0.1,0.2,0.3,0.4,0.5,0.6,0.7 --steps 500 --out runs/imp-mlm-minilm

Offline, in a few minutes on the CPU (``--tiny``): the demo's tiny BERT, pre-trained by MLM on the
generated language, and fresh text of that language.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


def tiny_world(out: Path) -> tuple[str, str]:
    """The demo's pre-trained tiny BERT and a text of its language (not its pre-training text)."""
    from ticketlab.data.synthetic import pretraining_corpus
    from ticketlab.experiments.demo import DemoSettings, pretrain_tiny_bert

    model_dir = pretrain_tiny_bert(out / "model", DemoSettings(), seed=0, echo=print)
    text = out / "text.txt"
    if not text.exists():
        text.write_text("\n".join(pretraining_corpus(600, seed=7)) + "\n")
    return str(model_dir), str(text)


def main() -> None:
    import torch

    from ticketlab.experiments.imp import ImpSpec, level_name
    from ticketlab.experiments.imp_dispatch import run_imp_on_task
    from ticketlab.experiments.imp_mlm import MlmRecipe, load_mlm_text
    from ticketlab.experiments.pretrain_loss import pretraining_losses
    from ticketlab.io import read_json, write_json
    from ticketlab.masks import apply_mask, load_mask
    from ticketlab.models import load_encoder, load_tokenizer
    from ticketlab.models.mlm_head import load_mlm_head, word_embeddings
    from ticketlab.pruning import prune
    from ticketlab.training.objectives import MlmMasking

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--text")
    parser.add_argument("--eval-text")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny BERT and generated text")
    parser.add_argument("--levels", default="0.3,0.5,0.7,0.9")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, help="block length (default 128; --tiny: 32)")
    parser.add_argument("--max-sequences", type=int)
    parser.add_argument("--lr", type=float, help="learning rate (default 5e-5; --tiny: 5e-4)")
    parser.add_argument("--threads", type=int, help="torch threads (tiny models: 1 is fastest)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.model, args.text = tiny_world(out)
    args.max_length = args.max_length or (32 if args.tiny else 128)
    args.lr = args.lr or (5e-4 if args.tiny else 5e-5)
    if not args.model:
        parser.error("--model (or --tiny) is required")

    recipe = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "lr": args.lr,
    }
    if args.max_sequences:
        recipe["max_sequences"] = args.max_sequences
    levels = [float(x) for x in args.levels.split(",")]
    spec = ImpSpec(
        model=args.model, task="mlm", levels=levels, recipe=recipe, text=args.text, eval_text=args.eval_text
    )
    started = time.perf_counter()
    summary = run_imp_on_task(spec, out / "imp", quiet=True)
    imp_seconds = time.perf_counter() - started

    tokenizer = load_tokenizer(args.model)
    teacher = load_encoder(args.model)
    _, heldout = load_mlm_text(spec, MlmRecipe.from_overrides(recipe), tokenizer, progress=False)
    head, _ = load_mlm_head(out / "imp" / "mlm_head", teacher)
    head.eval()
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=word_embeddings(teacher).weight.shape[0])

    def losses(mask) -> dict:
        student = copy.deepcopy(teacher)
        apply_mask(student, mask)
        found = pretraining_losses(teacher, student, heldout, masking=masking, head=head, progress=False)
        return {"mlm_loss": found["mlm_loss"], "kd_loss": found["kd_loss"]}

    dense = pretraining_losses(teacher, teacher, heldout, masking=masking, head=head, progress=False)
    rows = []
    for index, sparsity in enumerate(levels, start=1):
        imp_mask = load_mask(out / "imp" / level_name(index) / "mask.safetensors")
        omp_mask = prune(
            teacher, "omp", sparsity, scope=spec.scope, scheme=spec.scheme, source_model=args.model
        )
        level = read_json(out / "imp" / level_name(index) / "results.json")
        rows.append(
            {
                "sparsity": sparsity,
                "imp": losses(imp_mask),
                "omp": losses(omp_mask),
                "jaccard_imp_omp": imp_mask.jaccard(omp_mask),
                "imp_level_trained_mlm_loss": level["final"]["mlm_loss"],
                "imp_search_cost": imp_mask.provenance.method_params["search_cost"],
            }
        )
    result = {
        "model": args.model,
        "text": summary["levels"][0]["text"],
        "eval_text": summary["levels"][0]["eval_text"],
        "num_eval_targets": summary["levels"][0]["num_eval_targets"],
        "recipe": recipe,
        "dense": {
            "mlm_loss": dense["mlm_loss"],
            "full_model_trained_mlm_loss": summary["levels"][0]["final"]["mlm_loss"],
        },
        "rows": rows,
        "imp_wall_seconds_this_call": imp_seconds,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(out / "imp_mlm_tickets.json", result)
    print(f"dense pre-trained model: held-out MLM loss {dense['mlm_loss']:.4f} ({heldout.source})")
    print(
        "| sparsity | IMP@MLM mask: MLM loss | OMP mask: MLM loss | IMP KD (MSE) | OMP KD (MSE) | Jaccard | IMP level after training | IMP search steps |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['sparsity']:.0%} | {row['imp']['mlm_loss']:.4f} | {row['omp']['mlm_loss']:.4f} | "
            f"{row['imp']['kd_loss']:.4g} | {row['omp']['kd_loss']:.4g} | {row['jaccard_imp_omp']:.3f} | "
            f"{row['imp_level_trained_mlm_loss']:.4f} | {row['imp_search_cost']['steps']} |"
        )
    print(f"written to {out / 'imp_mlm_tickets.json'}")
    print(json.dumps({"imp_wall_seconds_this_call": round(imp_seconds, 1)}))


if __name__ == "__main__":
    main()
