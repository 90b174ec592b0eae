"""Speed of one TAMT step against the dense training step of the same objective, side by side.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/tamt_step_speed.py \
        [--batch-size 16] [--max-length 128] [--repeats 8] [--threads 1]

MiniLM-L6 (``$TICKETLAB_SHARED/models/all-MiniLM-L6-v2``), one batch of WikiText-2 ``test.txt``
blocks, ``encoder+embeddings`` per matrix at ``--sparsity`` (TAMT's protocol). The steps, each on its
own copy of the model, are taken in turn, the order rotating every repeat (so a change of the
machine's load hits all of them alike):

- ``dense_mlm``: MLM training of every weight and the head (same masking, same head);
- ``tamt_mlm``: TAMT-MLM (the scores and the head's transform train, the weights are frozen);
- ``dense_kd``: a dense student trained on the KD loss against the same teacher forward (the
  frozen pre-trained model, under ``torch.no_grad``), all its weights trained;
- ``tamt_kd``: TAMT-KD (student = the masked model, teacher = the same model unmasked);

each dense step twice, with the optimizer TAMT uses (``bertadam``: the comparison then isolates what
the mask costs) and with torch's fused AdamW as the training loop makes it (``fused-adamw``), both
in the same run (``--dense-optimizers``). Printed and written to
``benchmarks/results/tamt_step_speed.json``: each step's median and min, the medians of the paired
ratios TAMT / dense (steps taken back to back), the load average at each repeat, and the exact
top-k of the scores alone (the current selection and the ``kthvalue`` per matrix it replaced, with
the bits compared).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

from bench_common import markdown_table, require_shared, summary, write_results

MODEL = "models/all-MiniLM-L6-v2"
TEXT = "data/wikitext-2/test.txt"


def main() -> int:
    from ticketlab.data.text import load_text_blocks
    from ticketlab.models import load_encoder, load_tokenizer
    from ticketlab.models.mlm_head import MlmHead, word_embeddings
    from ticketlab.pruning import prune
    from ticketlab.pruning.selection import num_to_prune
    from ticketlab.pruning.tamt import LearnedMask, keep_bits, keep_bits_on_device
    from ticketlab.training.bertadam import BertAdam
    from ticketlab.training.loop import TrainConfig, make_optimizer
    from ticketlab.training.objectives import MlmMasking, kd_loss, mlm_loss
    from ticketlab.training.tamt import TamtObjective, tamt_optimizer, tamt_step

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=8, help="timed steps per variant (interleaved)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--dense-optimizers",
        type=lambda text: text.split(","),
        default=["bertadam", "fused-adamw"],
        help="comma-separated: the dense steps' optimizers (bertadam, fused-adamw)",
    )
    parser.add_argument("--results-name", default="tamt_step_speed")
    args = parser.parse_args()

    model_dir, text = require_shared("tamt_step_speed.py", MODEL, TEXT)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(model_dir))
    blocks = load_text_blocks(
        tokenizer, text, max_length=args.max_length, max_sequences=args.batch_size, progress=False
    )
    ids, attention = blocks.input_ids, blocks.attention_mask
    keys = list(range(len(ids)))
    base = load_encoder(str(model_dir))
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=word_embeddings(base).weight.shape[0])
    init = prune(base, "omp", args.sparsity, scope="encoder+embeddings", scheme="per-matrix")

    def dense_optimizer(
        kind: str, params: list[torch.nn.Parameter], weight_decay: float
    ) -> torch.optim.Optimizer:
        if kind == "bertadam":
            return BertAdam(params, lr=1e-5, weight_decay=weight_decay)
        holder = torch.nn.Module()
        holder.params = torch.nn.ParameterList(params)
        return make_optimizer(holder, TrainConfig(lr=1e-5, weight_decay=weight_decay))

    def dense_mlm_step(kind: str):
        """Dense MLM: every weight and the head train."""
        encoder = copy.deepcopy(base)
        head = MlmHead.for_encoder(encoder)
        optimizer = dense_optimizer(kind, list(encoder.parameters()) + list(head.parameters()), 0.0)

        def step(_):
            encoder.train()
            corrupted, labels = masking(ids, seed=0, keys=keys)
            hidden = encoder(input_ids=corrupted, attention_mask=attention).last_hidden_state
            targets = labels != -100
            loss = mlm_loss(head(hidden[targets], word_embeddings(encoder).weight), labels[targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    teacher = copy.deepcopy(base).eval()

    def dense_kd_step(kind: str):
        """Dense KD: a trainable student against the frozen teacher's forward, as TAMT-KD's teacher runs."""
        student = copy.deepcopy(base)
        optimizer = dense_optimizer(kind, list(student.parameters()), 0.01)

        def step(_):
            with torch.no_grad():
                target = teacher(
                    input_ids=ids, attention_mask=attention, output_hidden_states=True
                ).hidden_states
            student.train()
            out = student(input_ids=ids, attention_mask=attention, output_hidden_states=True)
            loss = kd_loss(out.hidden_states, target, attention, "cosine")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps = {}
    learned_masks = {}
    for objective in ("mlm", "kd"):
        student = copy.deepcopy(base)
        learned = LearnedMask(student, init, args.sparsity, "per-matrix")
        head = MlmHead.for_encoder(student) if objective == "mlm" else None
        tamt = TamtObjective(student, learned, objective, head, masking)
        optimizer = tamt_optimizer(learned, head, objective, lr=1e-4)
        learned.attach()  # each student has its own weights, so all stay attached at once
        for kind in args.dense_optimizers:
            steps[f"dense_{objective}[{kind}]"] = (dense_mlm_step if objective == "mlm" else dense_kd_step)(
                kind
            )
        steps[f"tamt_{objective}"] = lambda i, tamt=tamt, optimizer=optimizer: tamt_step(
            tamt, optimizer, ids, attention, keys, 0, i + 2
        )
        learned_masks[objective] = learned

    names = list(steps)
    for name in names:  # warm-up
        steps[name](-1)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    loads = []
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[name](repeat)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
        loads.append(round(os.getloadavg()[0], 2))
        print(
            f"repeat {repeat + 1}/{args.repeats} (load {loads[-1]}): "
            + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names),
            flush=True,
        )

    # The top-k alone, on the trained scores of the KD run (after the steps: not all tied any more).
    learned = learned_masks["kd"]
    scores = {n: learned.score(n).detach() for n in learned.names}

    def kthvalue_per_matrix():  # the selection TAMT ran before on the CPU (now its accelerator path)
        return keep_bits_on_device(scores, args.sparsity, "per-matrix")

    top_k: dict[str, list[float]] = {"current": [], "kthvalue_per_matrix": []}
    top_k_cpu: dict[str, list[float]] = {"current": [], "kthvalue_per_matrix": []}
    for _ in range(5):
        for label, fn in (
            ("current", lambda: keep_bits(scores, args.sparsity, "per-matrix")),
            ("kthvalue_per_matrix", kthvalue_per_matrix),
        ):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            top_k[label].append(time.perf_counter() - start)
            top_k_cpu[label].append(time.process_time() - cpu_start)
    current, previous = keep_bits(scores, args.sparsity, "per-matrix"), kthvalue_per_matrix()
    same_bits = all(torch.equal(current[n], previous[n]) for n in scores)
    exact_counts = all(
        int((~current[n]).sum()) == num_to_prune(current[n].numel(), args.sparsity) for n in current
    )

    def paired(a: str, b: str, source: dict[str, list[float]]) -> dict[str, float]:
        ratios = [x / y for x, y in zip(source[a], source[b])]
        return {
            "median_of_paired_ratios": statistics.median(ratios),
            "ratio_of_medians": statistics.median(source[a]) / statistics.median(source[b]),
            "ratio_of_mins": min(source[a]) / min(source[b]),
        }

    def ratios(source: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        return {
            f"{objective} vs dense[{kind}]": paired(f"tamt_{objective}", f"dense_{objective}[{kind}]", source)
            for objective in ("mlm", "kd")
            for kind in args.dense_optimizers
        }

    results = {
        "model": "all-MiniLM-L6-v2 (BertModel)",
        "batch": {"rows": len(ids), "length": args.max_length, "text": "WikiText-2 test.txt blocks"},
        "mask": {
            "init": "omp",
            "scope": "encoder+embeddings",
            "scheme": "per-matrix",
            "sparsity": args.sparsity,
        },
        "tamt_optimizer": "bertadam (lr 1e-4)",
        "dense_optimizers": args.dense_optimizers,
        "torch_threads": args.threads,
        "repeats": args.repeats,
        "load_average_1min_per_repeat": loads,
        "timings": {name: summary(t) for name, t in times.items()},
        # CPU seconds of the process (with one torch thread: the work itself, which a loaded
        # machine does not inflate the way it inflates wall time by making the step wait for a core).
        "cpu_timings": {name: summary(t) for name, t in cpu_times.items()},
        "tamt_over_dense": ratios(times),
        "tamt_over_dense_cpu_time": ratios(cpu_times),
        "top_k_alone": {
            "scores": sum(s.numel() for s in scores.values()),
            "current": summary(top_k["current"]),
            "kthvalue_per_matrix": summary(top_k["kthvalue_per_matrix"]),
            "cpu_current": summary(top_k_cpu["current"]),
            "cpu_kthvalue_per_matrix": summary(top_k_cpu["kthvalue_per_matrix"]),
            "same_bits": same_bits,
            "exact_counts": exact_counts,
        },
    }
    path = write_results(args.results_name, results)
    rows = [
        [
            name,
            f"{results['timings'][name]['median_s']:.3f}",
            f"{results['timings'][name]['min_s']:.3f}",
            f"{results['cpu_timings'][name]['median_s']:.3f}",
            f"{results['cpu_timings'][name]['min_s']:.3f}",
        ]
        for name in names
    ]
    print()
    print(markdown_table(rows, ["step", "median s", "min s", "median CPU s", "min CPU s"]))
    for label, key in (("wall", "tamt_over_dense"), ("CPU time", "tamt_over_dense_cpu_time")):
        for objective, ratio in results[key].items():
            print(
                f"TAMT-{objective} ({label}): paired {ratio['median_of_paired_ratios']:.3f}, "
                f"medians {ratio['ratio_of_medians']:.3f}, mins {ratio['ratio_of_mins']:.3f}"
            )
    top = results["top_k_alone"]
    print(
        f"top-k alone ({top['scores']:,} scores): {1e3 * top['current']['median_s']:.0f} ms "
        f"(kthvalue per matrix: {1e3 * top['kthvalue_per_matrix']['median_s']:.0f} ms); CPU time "
        f"{1e3 * top['cpu_current']['median_s']:.0f} ms ({1e3 * top['cpu_kthvalue_per_matrix']['median_s']:.0f} ms); "
        f"same bits {same_bits}, exact counts {exact_counts}"
    )
    print(f"load average per repeat: {loads}")
    print(f"wrote {path}")
    return 0 if same_bits and exact_counts else 1


if __name__ == "__main__":
    sys.exit(main())
