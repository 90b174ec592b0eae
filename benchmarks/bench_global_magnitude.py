"""Global magnitude mask over a BERT-base-sized encoder: ticketlab vs torch.nn.utils.prune.

Builds ``BertModel`` from the default ``BertConfig`` (12 layers, hidden 768, FFN 3072; random
weights, no download), takes the ``encoder`` scope (Q, K, V, attention output, FFN in/out of every
layer plus the pooler: 85.5M weights) and times, side by side and interleaved:

- ticketlab's selection: ``MagnitudePruning().select`` (|W|, then the exact global lowest-k),
- ticketlab's fingerprint of the result (XXH3-128 of the kept and the dense weights, the other
  part of ``prune()``), and ``prune()`` whole, with the global and the per-matrix scheme,
- ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` and the same count k, on
  fresh holder modules sharing the same weight tensors (so every repeat starts un-pruned).

The masks of the two are compared bit for bit. With ``--cli``, the model is also saved to a
temporary folder and ``ticketlab prune`` (a fresh process) is timed beside a process that only
imports ticketlab and loads the model, to give the command's cost beyond loading.

    PYTHONPATH=$PWD/src python benchmarks/bench_global_magnitude.py [--repeats 5] [--sparsity 0.7] [--cli]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from bench_common import markdown_table, summary, timed, write_results
from ticketlab.masks.fingerprint import fingerprint
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models import EncoderAdapter
from ticketlab.pruning import MagnitudePruning, num_to_prune, prune, selection


def bert_base(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig())  # bert-base-uncased's shape, random weights
    model.eval()
    return model


def torch_global_l1(weights: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """torch's global L1 pruning of exactly k weights; returns keep-bits per name."""
    holders = {}
    for name, weight in weights.items():
        holder = nn.Module()
        holder.weight = nn.Parameter(weight.detach(), requires_grad=False)  # shares storage
        holders[name] = holder
    torch_prune.global_unstructured(
        [(h, "weight") for h in holders.values()], pruning_method=torch_prune.L1Unstructured, amount=k
    )
    return {name: h.weight_mask.bool() for name, h in holders.items()}


def compare_masks(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], weights) -> dict:
    """Bitwise comparison; where bits differ, whether only tied magnitudes were swapped."""
    differing = 0
    values = set()
    for name, bits in ours.items():
        diff = bits != theirs[name]
        differing += int(diff.sum())
        values.update(weights[name].detach().abs()[diff].tolist())
    return {"identical": differing == 0, "differing_bits": differing, "differing_magnitudes": sorted(values)}


# Run in a fresh process: where `ticketlab prune`'s time goes beyond importing torch and transformers.
STAGES = """
import json, sys, time
import torch, transformers  # imported by loading alone too: not counted below
t = [time.perf_counter()]
from ticketlab.cli import build_parser
build_parser()  # imports every verb's module, as the command does
t.append(time.perf_counter())
from ticketlab.masks import save_mask
from ticketlab.models import load_encoder
from ticketlab.pruning import prune
t.append(time.perf_counter())
model = load_encoder(sys.argv[1])
t.append(time.perf_counter())
mask = prune(model, "omp", float(sys.argv[3]), scheme=sys.argv[4])
t.append(time.perf_counter())
save_mask(mask, sys.argv[2])
t.append(time.perf_counter())
names = ["cli parser (imports of every verb)", "masks, models, pruning imports", "load_encoder", "prune()", "save_mask"]
print(json.dumps({n: b - a for n, a, b in zip(names, t, t[1:])}))
"""


def time_cli(model: nn.Module, sparsity: float, repeats: int, threads: int) -> dict:
    """Wall time of `ticketlab prune` (a fresh process) against a process that loads the model only."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        out = os.path.join(folder, "mask.safetensors")
        prune_command = [sys.executable, "-m", "ticketlab", "prune", "--model", folder, "--method", "omp"]
        prune_command += ["--sparsity", str(sparsity), "--out", out, "--quiet"]
        commands = {
            "load only (python: import ticketlab, load_encoder)": [
                sys.executable,
                "-c",
                "import sys; from ticketlab.models import load_encoder; load_encoder(sys.argv[1])",
                folder,
            ],
            "ticketlab prune --method omp (global)": prune_command,
            "ticketlab prune --method omp --scheme per-matrix": [*prune_command, "--scheme", "per-matrix"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(repeats):
            for name, command in commands.items():
                seconds, _ = timed(
                    lambda command=command: subprocess.run(command, check=True, env=env, capture_output=True)
                )
                times[name].append(seconds)
            print(
                f"cli repeat {repeat + 1}: " + ", ".join(f"{n[:24]} {t[-1]:.2f}s" for n, t in times.items()),
                flush=True,
            )
        stages: dict[str, dict[str, list[float]]] = {"global": {}, "per-matrix": {}}
        for _ in range(repeats):
            for scheme, found in stages.items():
                command = [sys.executable, "-c", STAGES, folder, out, str(sparsity), scheme]
                done = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
                for stage, seconds in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    found.setdefault(stage, []).append(seconds)
    load = statistics.median(times["load only (python: import ticketlab, load_encoder)"])
    return {
        "stages_in_one_process_median_s": {
            scheme: {stage: statistics.median(t) for stage, t in found.items()}
            for scheme, found in stages.items()
        },
        "timings": {name: summary(t) for name, t in times.items()},
        "beyond_loading_s": {name: statistics.median(t) - load for name, t in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each variant (interleaved)")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-repeats",
        type=int,
        default=3,
        help="repeats that also run torch's global_unstructured (slow)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has two cores)")
    parser.add_argument(
        "--cli", action="store_true", help="also time `ticketlab prune` against loading alone"
    )
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--results-name", default="global_magnitude")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = bert_base(args.seed)
    adapter = EncoderAdapter(model)
    weights = adapter.prunable_weights("encoder")
    n = sum(w.numel() for w in weights.values())
    k = num_to_prune(n, args.sparsity)
    print(f"BERT-base-sized encoder scope: {len(weights)} matrices, {n:,} weights; pruning k = {k:,}")

    method = MagnitudePruning()
    variants = {
        "ticketlab select (abs W, exact global lowest-k)": lambda: method.select(
            weights, args.sparsity, "global", 0
        ),
        "ticketlab select, per-matrix": lambda: method.select(weights, args.sparsity, "per-matrix", 0),
        "ticketlab fingerprint (XXH3-128 of kept and dense weights)": lambda: fingerprint(ours_mask, model),
        "ticketlab prune() (select + fingerprint + mask object)": lambda: prune(
            model, "omp", args.sparsity, scope="encoder", scheme="global"
        ),
        "ticketlab prune(), per-matrix": lambda: prune(
            model, "omp", args.sparsity, scope="encoder", scheme="per-matrix"
        ),
    }
    torch_name = "torch global_unstructured(L1Unstructured)"
    if args.torch_repeats > 0:
        variants[torch_name] = lambda: torch_global_l1(weights, k)

    ours_bits = method.select(weights, args.sparsity, "global", 0)  # warm-up, and the mask to check
    ours_mask = UnstructuredMask(ours_bits)
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    loads = []
    theirs_bits = None
    names = list(variants)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # rotate the order
            if name == torch_name and repeat >= args.torch_repeats:
                continue
            cpu_start = time.process_time()
            seconds, result = timed(variants[name])
            cpu_times[name].append(time.process_time() - cpu_start)
            times[name].append(seconds)
            if name == torch_name and theirs_bits is None:
                theirs_bits = result
            del result
        loads.append(round(os.getloadavg()[0], 2))
        done = [v for v in names if len(times[v]) == repeat + 1]
        print(
            f"repeat {repeat + 1} (load {loads[-1]}): "
            + ", ".join(f"{v[:14]} {times[v][-1]:.3f}s" for v in done),
            flush=True,
        )
    # The per-matrix bits against the exact path (one kthvalue per matrix, ties in index order).
    per_matrix = method.select(weights, args.sparsity, "per-matrix", 0)
    per_matrix_exact = {
        name: selection._prune_lowest_exact(
            [selection._Scores(name, weight, True)], num_to_prune(weight.numel(), args.sparsity)
        )[0].reshape(weight.shape)
        for name, weight in weights.items()
    }
    per_matrix_same = all(torch.equal(per_matrix[n], per_matrix_exact[n]) for n in weights)

    pruned = sum(int((~b).sum()) for b in ours_bits.values())
    assert pruned == k, (pruned, k)
    results: dict = {
        "torch_threads": args.threads,
        "model": "BertModel(BertConfig()) random weights, scope encoder (incl. pooler)",
        "num_weights": n,
        "sparsity": args.sparsity,
        "k": k,
        "load_average_1min_per_repeat": loads,
        "timings": {name: summary(t) for name, t in times.items()},
        # CPU seconds of the process, all its threads together (the work, less the waiting for a core).
        "cpu_timings": {name: summary(t) for name, t in cpu_times.items()},
        "per_matrix_equals_one_kthvalue_per_matrix": per_matrix_same,
    }
    select_name = names[0]
    if theirs_bits is not None:
        check = compare_masks(ours_bits, theirs_bits, weights)
        results["masks_compared"] = check
        results["torch_over_ticketlab_select"] = (
            results["timings"][torch_name]["median_s"] / results["timings"][select_name]["median_s"]
        )
        for scheme_name in (
            "ticketlab prune() (select + fingerprint + mask object)",
            "ticketlab prune(), per-matrix",
        ):
            results.setdefault("torch_over_ticketlab_prune", {})[scheme_name] = (
                results["timings"][torch_name]["median_s"] / results["timings"][scheme_name]["median_s"]
            )
    if args.cli:
        results["cli"] = time_cli(model, args.sparsity, args.cli_repeats, args.threads)
    path = write_results(args.results_name, results)

    rows = [
        [
            name,
            f"{s['median_s']:.3f}",
            f"{s['min_s']:.3f}",
            f"{s['max_s']:.3f}",
            f"{results['cpu_timings'][name]['median_s']:.3f}",
            s["repeats"],
        ]
        for name, s in results["timings"].items()
    ]
    print()
    print(markdown_table(rows, ["variant", "median s", "min s", "max s", "median CPU s", "repeats"]))
    print(f"per-matrix bits equal one kthvalue per matrix: {per_matrix_same}; load per repeat: {loads}")
    if theirs_bits is not None:
        print(
            f"\ntorch / ticketlab select: {results['torch_over_ticketlab_select']:.1f}x; "
            f"masks identical: {check['identical']} (differing bits: {check['differing_bits']})"
        )
        for name, ratio in results["torch_over_ticketlab_prune"].items():
            print(f"torch / {name}: {ratio:.1f}x")
        assert check["identical"] or len(check["differing_magnitudes"]) == 1, check
    if args.cli:
        for name, extra in results["cli"]["beyond_loading_s"].items():
            print(
                f"{name}: median {results['cli']['timings'][name]['median_s']:.2f} s, beyond loading {extra:+.2f} s"
            )
        for scheme, found in results["cli"]["stages_in_one_process_median_s"].items():
            print(
                f"stages ({scheme}): "
                + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in found.items())
            )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
