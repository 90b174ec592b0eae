"""Speed of one TAMT step against one dense MLM training step, same model and batch, one run.

    PYTHONPATH=src python benchmarks/tamt_step_speed.py --model ../shared/models/all-MiniLM-L6-v2 \
        --text ../shared/data/wikitext-2/test.txt [--batch-size 16] [--max-length 128] [--steps 5]

Prints seconds per step (median over --steps after one warm-up step) for: dense MLM training (all
weights, AdamW), TAMT-MLM (scores + head transform), TAMT-KD (student and online teacher), and the
per-step top-k alone; and the TAMT-MLM / dense ratio (target: at most 1.3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _time_once(step, i: int) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(i)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _round_robin(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each step, the steps interleaved so that a machine whose load
    changes during the run (shared CPUs) affects them alike; one warm-up call each first."""
    for step in steps.values():
        step(-1)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(repeats):
        for name, step in steps.items():
            times[name].append(_time_once(step, i))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    from ticketlab.data.text import load_text_blocks
    from ticketlab.models import load_encoder, load_tokenizer
    from ticketlab.models.mlm_head import MlmHead, word_embeddings
    from ticketlab.pruning import prune
    from ticketlab.pruning.tamt import LearnedMask, keep_bits
    from ticketlab.training.objectives import MlmMasking, mlm_loss
    from ticketlab.training.tamt import TamtObjective, tamt_optimizer, tamt_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.model)
    blocks = load_text_blocks(
        tokenizer, args.text, max_length=args.max_length, max_sequences=args.batch_size, progress=False
    )
    ids, attention = blocks.input_ids.to(device), blocks.attention_mask.to(device)
    keys = list(range(len(ids)))
    results: dict[str, float] = {}

    # Dense MLM training step: every weight and the head train.
    dense_encoder = load_encoder(args.model).to(device)
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=word_embeddings(dense_encoder).weight.shape[0])
    dense_head = MlmHead.for_encoder(dense_encoder).to(device)
    dense_optimizer = torch.optim.AdamW(
        list(dense_encoder.parameters()) + list(dense_head.parameters()), lr=1e-5, foreach=False
    )
    dense_encoder.train()

    def dense_step(_):
        corrupted, labels = masking(ids, seed=0, keys=keys)
        hidden = dense_encoder(input_ids=corrupted, attention_mask=attention).last_hidden_state
        targets = labels != -100
        loss = mlm_loss(dense_head(hidden[targets], word_embeddings(dense_encoder).weight), labels[targets])
        dense_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dense_optimizer.step()

    steps = {"dense_mlm_step_s": dense_step}

    for objective in ("mlm", "kd"):
        student = load_encoder(args.model).to(device)
        init = prune(student, "omp", args.sparsity, scope="encoder+embeddings", scheme="per-matrix")
        learned = LearnedMask(student, init, args.sparsity, "per-matrix")
        head = MlmHead.for_encoder(student).to(device) if objective == "mlm" else None
        tamt = TamtObjective(student, learned, objective, head, masking)
        optimizer = tamt_optimizer(learned, head, objective, lr=1e-4)
        learned.attach()  # each student has its own weights, so all stay attached at once
        steps[f"tamt_{objective}_step_s"] = lambda i, tamt=tamt, optimizer=optimizer: tamt_step(
            tamt, optimizer, ids, attention, keys, 0, i + 2
        )
        scores = {n: learned.score(n) for n in learned.names}
        steps["top_k_per_step_s"] = lambda _, scores=scores: keep_bits(scores, args.sparsity, "per-matrix")
    results.update(_round_robin(steps, args.steps))
    results["tamt_mlm_over_dense"] = results["tamt_mlm_step_s"] / results["dense_mlm_step_s"]
    results["tamt_kd_over_dense"] = results["tamt_kd_step_s"] / results["dense_mlm_step_s"]
    results.update(
        device=str(device),
        batch_size=args.batch_size,
        max_length=args.max_length,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
