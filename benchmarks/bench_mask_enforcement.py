"""Mask enforcement overhead in a training step: masked step / dense step on MiniLM-L6.

MiniLM-L6 (``$TICKETLAB_SHARED/models/all-MiniLM-L6-v2``) as ``AutoModelForSequenceClassification``,
one real batch (32 rows of 128 tokens: SST-2 training sentences, tokenised with the model's
tokenizer and packed back to back so every position is a real token), AdamW with weight decay.
Three copies of the same model, each with its own optimizer, take steps in turn (the order
rotates every repeat, so load on the machine hits all three alike):

- ``dense``: no mask;
- ``ticketlab``: ``apply_mask(model, mask)`` + ``enforcer.attach(optimizer)`` (gradient hooks and a
  post-step re-zeroing by a uint8 keep mask, one byte per masked weight; no reparametrisation);
- ``ticketlab, float keep mask``: the same with the keep masks in the parameters' dtype, as before
  (4 bytes per weight), for comparison;
- ``ticketlab, gradients after backward``: the gradient hooks removed and the gradients zeroed
  instead in one ``torch._foreach_mul_`` after ``backward()`` (the alternative to per-tensor hooks;
  not what ticketlab does, measured to see whether the hooks cost anything inside backward);
- ``torch.nn.utils.prune``: ``prune.custom_from_mask`` on the same matrices, as the original
  BERT-Tickets code did (``weight = weight_orig * weight_mask`` recomputed before every forward).

The optimizer is the training loop's (``training.loop.make_optimizer``: torch's fused AdamW, no
decay on 1-D parameters), or plain ``torch.optim.AdamW`` with ``--optimizer adamw`` (earlier runs).
The mask is global OMP at 70% over the encoder scope (chen2020). After the steps, the pruned weights
of every masked copy must be exactly zero (for torch's, the effective weights), and the ticketlab
copy's weights must equal the float-mask copy's bit for bit (the same arithmetic in another mask
dtype). ``--profile`` adds one profiled step of ``dense`` and ``ticketlab``: the top operators by
self CPU time and the time inside the enforcer's named ranges (``ticketlab.mask_gradient``,
``ticketlab.rezero_weights``), written to the JSON.

    TICKETLAB_SHARED=../shared PYTHONPATH=$PWD/src python benchmarks/bench_mask_enforcement.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time

import torch
import torch.nn.utils.prune as torch_prune

from bench_common import markdown_table, shared_dir, summary, timed, write_results
from ticketlab.masks import apply_mask
from ticketlab.models import EncoderAdapter
from ticketlab.pruning import prune

MODEL = "models/all-MiniLM-L6-v2"
SST2 = "data/glue/SST-2/train.tsv"


def packed_batch(tokenizer, sentences: list[str], rows: int, length: int) -> dict[str, torch.Tensor]:
    """``rows`` x ``length`` token ids: [CLS] sentence [SEP] sentence [SEP] ... cut at ``length``."""
    ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    stream = iter(ids)
    batch = []
    for _ in range(rows):
        row = [tokenizer.cls_token_id]
        while len(row) < length:
            row += next(stream) + [tokenizer.sep_token_id]
        batch.append(row[: length - 1] + [tokenizer.sep_token_id])
    input_ids = torch.tensor(batch)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def read_sst2(path, limit: int = 2000) -> tuple[list[str], list[int]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [next(reader) for _ in range(limit)]
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def train_step(model, optimizer, batch, labels, after_backward=None) -> None:
    loss = model(**batch, labels=labels).loss
    loss.backward()
    if after_backward is not None:
        after_backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(model, lr: float, weight_decay: float, kind: str = "loop") -> torch.optim.Optimizer:
    if kind == "loop":
        from ticketlab.training.loop import TrainConfig
        from ticketlab.training.loop import make_optimizer as loop_optimizer

        return loop_optimizer(model, TrainConfig(lr=lr, weight_decay=weight_decay))
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def profile_step(step) -> dict:
    """One step under torch.profiler: the top operators by self CPU time, and the enforcer's ranges."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds, _ = timed(step)
    events = prof.key_averages()
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    ranges = {e.key: e.cpu_time_total / 1e6 for e in events if e.key.startswith("ticketlab.")}
    return {
        "step_s": seconds,
        "self_cpu_total_s": sum(e.self_cpu_time_total for e in events) / 1e6,
        "enforcer_ranges_s": ranges,
        "top_ops_self_cpu_s": {e.key: round(e.self_cpu_time_total / 1e6, 4) for e in top},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has two cores)")
    parser.add_argument("--optimizer", choices=("loop", "adamw"), default="loop")
    parser.add_argument("--profile", action="store_true", help="profile one step of dense and ticketlab")
    parser.add_argument("--results-name", default="mask_enforcement")
    args = parser.parse_args()

    shared = shared_dir()
    if shared is None or not (shared / MODEL).is_dir() or not (shared / SST2).is_file():
        print(
            "skipped: set TICKETLAB_SHARED to the folder holding models/all-MiniLM-L6-v2 and data/glue/SST-2"
        )
        return 0
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(shared / MODEL)
    sentences, sentence_labels = read_sst2(shared / SST2)
    batch = packed_batch(tokenizer, sentences, args.batch, args.length)
    labels = torch.tensor(sentence_labels[: args.batch])

    base = AutoModelForSequenceClassification.from_pretrained(shared / MODEL, num_labels=2)
    mask = prune(base, "omp", args.sparsity, scope="encoder", scheme="global")
    lr, weight_decay = 1e-4, 0.01

    float_name = "ticketlab, float keep mask"
    after_name = "ticketlab, gradients after backward"
    variants = ("dense", "ticketlab", after_name, float_name, "torch.nn.utils.prune")
    models = {name: copy.deepcopy(base) for name in variants}

    def optimizer_for(name):
        return make_optimizer(models[name], lr, weight_decay, args.optimizer)

    optimizers = {"dense": optimizer_for("dense")}
    enforcer = apply_mask(models["ticketlab"], mask)
    optimizers["ticketlab"] = optimizer_for("ticketlab")
    enforcer.attach(optimizers["ticketlab"])
    float_enforcer = apply_mask(models[float_name], mask)
    float_enforcer._keep = {n: k.float() for n, k in float_enforcer._keep.items()}  # the earlier form
    optimizers[float_name] = optimizer_for(float_name)
    float_enforcer.attach(optimizers[float_name])
    after_enforcer = apply_mask(models[after_name], mask)
    for handle in after_enforcer._handles:  # the gradient hooks: zeroed after backward instead
        handle.remove()
    after_enforcer._handles.clear()
    optimizers[after_name] = optimizer_for(after_name)
    after_enforcer.attach(optimizers[after_name])
    after_params = [after_enforcer.parameters[n] for n in after_enforcer._keep]
    after_keeps = list(after_enforcer._keep.values())

    def zero_gradients_after_backward():
        torch._foreach_mul_([p.grad for p in after_params], after_keeps)

    after_backward = {after_name: zero_gradients_after_backward}
    torch_adapter = EncoderAdapter(models["torch.nn.utils.prune"])
    torch_modules = {}
    for name, bits in mask.tensors.items():
        module = torch_adapter.base.get_submodule(name.rsplit(".", 1)[0])
        torch_prune.custom_from_mask(module, "weight", bits)
        torch_modules[name] = module
    optimizers["torch.nn.utils.prune"] = optimizer_for("torch.nn.utils.prune")

    names = list(models)
    for model in models.values():
        model.train()

    def step(name, seed):
        torch.manual_seed(seed)  # the same dropout in every variant at a repeat: comparable bits
        return train_step(models[name], optimizers[name], batch, labels, after_backward.get(name))

    for warmup in range(args.warmup):
        for name in names:
            step(name, 10_000 + warmup)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    loads = []
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            cpu_start = time.process_time()
            seconds, _ = timed(lambda name=name, repeat=repeat: step(name, repeat))
            cpu_times[name].append(time.process_time() - cpu_start)
            times[name].append(seconds)
        loads.append(round(os.getloadavg()[0], 2))
        print(
            f"step {repeat + 1}/{args.repeats} (load {loads[-1]}): "
            + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names),
            flush=True,
        )

    ticket_adapter = EncoderAdapter(models["ticketlab"])

    def pruned_nonzero(model) -> int:
        adapter = EncoderAdapter(model)
        return sum(int(adapter.parameter(n).detach()[~b].ne(0).sum()) for n, b in mask.tensors.items())

    nonzero_pruned = {name: pruned_nonzero(models[name]) for name in ("ticketlab", after_name, float_name)}
    nonzero_pruned["torch.nn.utils.prune"] = sum(
        int((torch_modules[n].weight_orig * torch_modules[n].weight_mask).detach()[~b].ne(0).sum())
        for n, b in mask.tensors.items()
    )
    # Same steps, same arithmetic: the uint8 and the float keep masks give the same weights bit for bit.
    float_state = models[float_name].state_dict()
    same_as_float_mask = all(
        torch.equal(v, float_state[k]) for k, v in models["ticketlab"].state_dict().items()
    )
    moved = sum(
        int((ticket_adapter.parameter(n).detach()[b] != EncoderAdapter(base).parameter(n).detach()[b]).sum())
        for n, b in mask.tensors.items()
    )
    # After the checks: a profiled step puts two copies one step ahead of the others.
    profiles = (
        {name: profile_step(lambda name=name: step(name, 99_999)) for name in ("dense", "ticketlab")}
        if args.profile
        else None
    )
    # The enforcement work alone, timed in isolation (many repeats, so far less noisy than whole
    # steps): the gradient hooks' in-place multiply of the gradients, and the post-step re-zeroing.
    keeps = enforcer._keep
    grads = {n: torch.randn_like(ticket_adapter.parameter(n)) for n in keeps}
    hook_times = [timed(lambda: [grads[n].mul_(keeps[n]) for n in keeps])[0] for _ in range(args.repeats * 4)]
    enforce_times = [timed(enforcer.enforce)[0] for _ in range(args.repeats * 4)]
    float_times = [timed(float_enforcer.enforce)[0] for _ in range(args.repeats * 4)]
    masked_weights = sum(mask.tensors[n].numel() for n in keeps)
    dense = statistics.median(times["dense"])
    results = {
        "model": "all-MiniLM-L6-v2 as AutoModelForSequenceClassification (2 labels)",
        "batch": {"rows": args.batch, "length": args.length, "text": "SST-2 train sentences, packed"},
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": weight_decay},
        "mask": {"method": "omp", "scope": "encoder", "scheme": "global", "sparsity": mask.sparsity},
        "optimizer_kind": "training loop's make_optimizer (fused AdamW, no decay on 1-D)"
        if args.optimizer == "loop"
        else "torch.optim.AdamW (all parameters decayed)",
        "torch_threads": args.threads,
        "warmup_steps": args.warmup,
        "load_average_1min_per_repeat": loads,
        "timings": {name: summary(t) for name, t in times.items()},
        "ratio_to_dense": {name: statistics.median(t) / dense for name, t in times.items()},
        # The median of per-repeat ratios pairs steps taken back to back, so slow phases of the
        # machine's load cancel out.
        "paired_ratio_to_dense": {
            name: statistics.median(a / d for a, d in zip(t, times["dense"])) for name, t in times.items()
        },
        "ratio_of_mins_to_dense": {name: min(t) / min(times["dense"]) for name, t in times.items()},
        # CPU seconds of the process: with one torch thread, the work itself, which a loaded
        # machine inflates far less than the wall time (with two, it includes OpenMP's spin-waits).
        "cpu_timings": {name: summary(t) for name, t in cpu_times.items()},
        "paired_cpu_time_ratio_to_dense": {
            name: statistics.median(a / d for a, d in zip(t, cpu_times["dense"]))
            for name, t in cpu_times.items()
        },
        "isolated_enforcement_work": {
            "gradient_hooks": summary(hook_times),
            "post_step_rezero": summary(enforce_times),
            "post_step_rezero_float_keep_mask": summary(float_times),
            "fraction_of_dense_step": (statistics.median(hook_times) + statistics.median(enforce_times))
            / dense,
            "fraction_of_dense_step_cpu_time": (
                statistics.median(hook_times) + statistics.median(enforce_times)
            )
            / statistics.median(cpu_times["dense"]),
        },
        "extra_bytes_per_masked_weight": {
            "ticketlab": enforcer.keep_mask_bytes() / masked_weights,
            float_name: float_enforcer.keep_mask_bytes() / masked_weights,
        },
        "nonzero_pruned_weights_after_training": nonzero_pruned,
        "ticketlab_equals_float_mask_bit_for_bit": same_as_float_mask,
        "profile": profiles,
        "kept_weights_that_trained": moved,
    }
    path = write_results(args.results_name, results)
    rows = [
        [
            name,
            f"{results['timings'][name]['median_s']:.3f}",
            f"{results['timings'][name]['min_s']:.3f}",
            f"{results['ratio_to_dense'][name]:.3f}",
            f"{results['paired_ratio_to_dense'][name]:.3f}",
            f"{results['ratio_of_mins_to_dense'][name]:.3f}",
            f"{results['cpu_timings'][name]['median_s']:.3f}",
            f"{results['paired_cpu_time_ratio_to_dense'][name]:.3f}",
        ]
        for name in names
    ]
    print()
    header = ["variant", "median step s", "min step s", "median / dense", "paired ratio", "min / min"]
    header += ["median CPU s", "paired CPU-time ratio"]
    print(markdown_table(rows, header))
    work = results["isolated_enforcement_work"]
    print(
        f"\nenforcement work alone: gradient hooks {1e3 * work['gradient_hooks']['median_s']:.1f} ms + "
        f"re-zeroing {1e3 * work['post_step_rezero']['median_s']:.1f} ms per step = "
        f"{100 * work['fraction_of_dense_step']:.2f}% of the dense step"
    )
    print(f"extra bytes per masked weight: {results['extra_bytes_per_masked_weight']}")
    print(f"pruned weights not zero after training: {nonzero_pruned}; kept weights that trained: {moved:,}")
    print(f"ticketlab's weights equal the float-mask copy's bit for bit: {same_as_float_mask}")
    print(f"load average per repeat: {loads}")
    if profiles:
        for name, prof in profiles.items():
            print(f"profiled {name}: step {prof['step_s']:.3f}s, enforcer ranges {prof['enforcer_ranges_s']}")
    print(f"wrote {path}")
    return 0 if all(v == 0 for v in nonzero_pruned.values()) and same_as_float_mask else 1


if __name__ == "__main__":
    sys.exit(main())
