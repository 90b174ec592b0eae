"""CPU inference latency of shrunk structured tickets against the full model, beside their FLOP ratio.

A BERT-base-sized encoder (random weights: latency does not depend on the values) is shrunk with
random structured masks at several levels (super-ticket pairing: a fraction p of the heads, at least
one per layer, with round(10 p) of the 12 FFN layers). Each repeat times the full model and every
shrunk model once, in a rotating order, so load from other processes hits them alike; the medians
are compared. Writes benchmarks/results/shrink.json and prints a table.

    PYTHONPATH=src python benchmarks/bench_shrink.py [--repeats 7] [--threads 2] [--small]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from ticketlab.models.shrink import encoder_flops, shrink
from ticketlab.pruning.structured import structured_levels, structured_mask_from_scores

RESULTS = Path(__file__).parent / "results" / "shrink.json"


def time_once(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Wall-clock seconds, and CPU seconds of this process (all its threads) for one forward pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        model(**inputs)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0.2,0.4,0.6,0.8", help="fractions of heads pruned")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--small", action="store_true", help="a 4-layer, 256-wide model for a quick check")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    if args.small:
        sizes = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    config = BertConfig(**sizes, attn_implementation=args.attn)
    full = BertModel(config).eval()
    layers, heads = sizes["num_hidden_layers"], sizes["num_attention_heads"]
    head_dim = sizes["hidden_size"] // heads
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (args.batch, args.length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    fractions = [float(x) for x in args.levels.split(",")]
    models = {"full": full}
    flops = {
        "full": encoder_flops(
            [heads] * layers,
            [sizes["intermediate_size"]] * layers,
            sizes["hidden_size"],
            head_dim,
            args.length,
        )
    }
    scores = (torch.rand(layers, heads, generator=generator), torch.rand(layers, generator=generator))
    descriptions = {"full": {"heads_pruned": 0, "ffn_layers_pruned": 0}}
    for level in structured_levels(layers, heads, fractions):
        mask = structured_mask_from_scores(
            *scores, level.num_heads_pruned, level.num_ffn_pruned, kind="random", seed=1
        )
        name = f"p={level.head_fraction:g}"
        models[name] = shrink(full, mask)
        plan = models[name].ticketlab_shrink_plan
        flops[name] = encoder_flops(
            plan.head_counts, plan.ffn_sizes, sizes["hidden_size"], head_dim, args.length
        )
        descriptions[name] = {
            "heads_pruned": level.num_heads_pruned,
            "ffn_layers_pruned": level.num_ffn_pruned,
        }

    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(args.repeats + 1):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order every round
            elapsed, cpu = time_once(models[name], inputs)
            if round_index > 0:  # round 0 warms up every model
                times[name].append(elapsed)
                cpu_times[name].append(cpu)

    full_median = statistics.median(times["full"])
    full_cpu = statistics.median(cpu_times["full"])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        cpu_median = statistics.median(cpu_times[name])
        flop_ratio = flops["full"] / flops[name]
        speedup = full_median / median
        rows.append(
            {
                "model": name,
                **descriptions[name],
                "parameters": sum(p.numel() for p in models[name].parameters()),
                "encoder_gflops": flops[name] * args.batch / 1e9,
                "flop_ratio": flop_ratio,
                "median_s": median,
                "min_s": min(times[name]),
                "speedup": speedup,
                "speedup_over_flop_ratio": speedup / flop_ratio,
                # CPU time is less disturbed than wall time when other processes share the cores
                # (with --threads 1 it is the latency of an idle core).
                "cpu_median_s": cpu_median,
                "cpu_speedup": full_cpu / cpu_median,
                "cpu_speedup_over_flop_ratio": full_cpu / cpu_median / flop_ratio,
                "times_s": times[name],
                "cpu_times_s": cpu_times[name],
            }
        )
    result = {
        "config": {**sizes, "attn_implementation": args.attn, "batch": args.batch, "length": args.length},
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{'model':<8} {'heads-':>6} {'ffn-':>5} {'GFLOPs':>8} {'FLOP x':>7} {'median s':>9} {'speed-up':>9} {'/FLOP x':>8}"
    )
    for row in rows:
        print(
            f"{row['model']:<8} {row['heads_pruned']:>6} {row['ffn_layers_pruned']:>5} {row['encoder_gflops']:>8.1f} "
            f"{row['flop_ratio']:>7.2f} {row['median_s']:>9.3f} {row['speedup']:>9.2f} {row['speedup_over_flop_ratio']:>8.2f} "
            f"{row['cpu_median_s']:>7.3f} {row['cpu_speedup']:>6.2f} {row['cpu_speedup_over_flop_ratio']:>8.2f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
