"""TAMT (KD, or MLM with a built head) with BERT's Adam against OMP and matched random, by
mask-training budget (issue 18).

What it measures, in the order that answers the question soonest: MiniLM-L6 (no MLM head: TAMT-KD
by default; ``--objective mlm`` trains TAMT-MLM through the head ticketlab builds for it, its
decoder tied to the word embeddings and its transform trained ``--head-steps`` first, at the
paper's MLM lr 5e-5 without weight decay), scope ``encoder+embeddings`` with the ``per-matrix`` scheme (``liu2022``), sparsity 0.7
first, then 0.5. One TAMT-KD run per sparsity with the paper's optimizer and settings (BertAdam, lr
2e-5 decaying linearly to zero over ``--tamt-steps``, weight decay 0.01 on the scores, batch 16 x 128
tokens of WikiText-2 ``test.txt``, cosine KD over the layers, student dropout on, teacher in eval
mode), its masks saved at several budgets along that one run (``--budgets``, the ``--save-at``
mechanism). Every mask (TAMT at each budget, OMP, random matched per matrix, a fresh draw per
seed) gets its KD loss (MSE over layers, TAMT's evaluation) on the first blocks of ``valid.txt``
and the fraction of OMP's kept weights it swapped, and is fine-tuned on the FULL STS-B training set
for one epoch (lr 1e-4, batch 16: the full model's recipe for MiniLM-L6 on two cores), then on an
SST-2 draw; seeds 0, 1, 2 (``--seeds`` for more). The full model is fine-tuned with the same recipe.

Order of the work (each item skipped when done, so a rerun continues where a kill stopped it): at
0.7 on STS-B, seed 0: OMP, TAMT to the first budget and its ticket, random, then each further TAMT
budget and its ticket, the full model; then seeds 1, 2; then the second task; then 0.5 likewise.
The TAMT run pauses at each budget (its checkpoint is written there) so the fine-tunes of the
early budgets come before the later mask-training steps; resumed, it gives the same masks as an
uninterrupted run (tests/test_tamt.py).

Everything goes into ``--work`` (default ``~/.cache/ticketlab/bench_tamt_budgets``): masks, TAMT
runs, fine-tuning run directories, one JSON per finished item under ``items/``. The objectives
never mix: TAMT-MLM's tickets are ``tamt_mlm<N>`` (TAMT-KD's ``tamt<N>``, as before), its runs
``tamt-mlm-*`` and its aggregate ``<NAME>_mlm``; the OMP, random and full items are the same
computation for both, so one ``--work`` shares them. After every item
the aggregate (per task x sparsity x ticket: mean ± std over the finished seeds, the KD losses,
the swap fractions, TAMT's loss curve and cost) is written to ``benchmarks/results/<NAME>.json``.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_tamt_budgets.py [--probe]
        [--sparsities 0.7,0.5] [--tasks stsb,sst2] [--seeds 0,1,2] [--budgets 100,300,1000]
        [--objective kd|mlm] [--work DIR] [--threads 1]

``--probe`` times 5 TAMT steps and a 128-example fine-tune on this machine, prints the estimate
of the whole plan and exits. ``--report-only`` rewrites the aggregate from the finished items.
On the GPU machine: ``--tamt-steps 11000 --budgets 1000,3000,11000 --tamt-max-length 512
--threads 8`` is the paper's setting at 50% (BERT-base: ``--model``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import markdown_table, quiet_run, require_shared, shared_dir, write_results

MODEL = "models/all-MiniLM-L6-v2"
GLUE = "data/glue"
TAMT_TEXT = "data/wikitext-2/test.txt"
EVAL_TEXT = "data/wikitext-2/valid.txt"
SCOPE, SCHEME = "encoder+embeddings", "per-matrix"
# Fine-tuning recipe per task: the full STS-B training set; SST-2 a fixed random draw.
TASKS: dict[str, dict[str, Any]] = {
    "stsb": {"max_train_samples": None, "metric": "pearson"},
    "sst2": {"max_train_samples": 8000, "metric": "accuracy"},
}


# The paper's peak lr per objective (weight decay: its default per objective, 0.01 KD, 0 MLM).
OBJECTIVE_LR = {"kd": 2e-5, "mlm": 5e-5}
RESULTS_NAME = "tamt_budgets"


class Pause(Exception):
    """Raised from TAMT's on_step at a budget: the checkpoint there lets the next item resume."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help=f"dense model (default: $TICKETLAB_SHARED/{MODEL})")
    p.add_argument("--sparsities", default="0.7,0.5")
    p.add_argument("--tasks", default="stsb,sst2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--budgets", default="100,300,1000", help="TAMT masks after these steps (the last: the run)"
    )
    p.add_argument(
        "--objective", choices=list(OBJECTIVE_LR), default="kd", help="TAMT's objective (mlm: built head)"
    )
    p.add_argument("--tamt-lr", type=float, help="TAMT peak lr (default: the paper's, KD 2e-5, MLM 5e-5)")
    p.add_argument(
        "--head-steps", type=int, default=100, help="mlm: training steps of the head built for the model"
    )
    p.add_argument("--tamt-optimizer", default="bertadam", choices=["bertadam", "adamw"])
    p.add_argument("--tamt-batch-size", type=int, default=16)
    p.add_argument("--tamt-max-length", type=int, default=128)
    p.add_argument(
        "--tamt-max-sequences", type=int, help="smoke runs: TAMT (and the built head) on the first N blocks"
    )
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning lr")
    p.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--eval-every", type=int, help="fine-tuning: also evaluate every N steps (a learning curve)"
    )
    p.add_argument("--max-train-samples", type=int, help="smoke runs: N training examples of every task")
    p.add_argument("--max-eval-samples", type=int, help="smoke runs: the first N dev examples")
    p.add_argument("--eval-max-sequences", type=int, default=64, help="valid.txt blocks for the KD loss")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(Path.home() / ".cache" / "ticketlab" / "bench_tamt_budgets"))
    p.add_argument(
        "--results-name", default=RESULTS_NAME, help=f"default {RESULTS_NAME} (KD), {RESULTS_NAME}_mlm"
    )
    p.add_argument("--probe", action="store_true", help="time one TAMT step and a small fine-tune; estimate")
    p.add_argument("--report-only", action="store_true", help="aggregate the finished items and exit")
    p.add_argument(
        "--plot", help="also draw the dev score against TAMT's steps, OMP's and random's bands (PNG)"
    )
    args = p.parse_args(argv)
    args.sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    if args.tamt_lr is None:
        args.tamt_lr = OBJECTIVE_LR[args.objective]
    if args.objective != "kd" and args.results_name == RESULTS_NAME:
        args.results_name = f"{RESULTS_NAME}_{args.objective}"
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, shared: Path):
        self.args, self.shared = args, shared
        self.model = args.model or str(shared / MODEL)
        self.work = Path(args.work).expanduser()
        (self.work / "items").mkdir(parents=True, exist_ok=True)
        # TAMT's tickets and runs per objective (KD keeps the names of runs before the option).
        self.tamt_prefix = "tamt" if args.objective == "kd" else f"tamt_{args.objective}"
        self.started = time.perf_counter()

    # -- items ------------------------------------------------------------------------------------
    def item_path(self, key: str) -> Path:
        return self.work / "items" / f"{key}.json"

    def done(self, key: str) -> dict[str, Any] | None:
        path = self.item_path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def record(self, key: str, data: dict[str, Any]) -> None:
        from ticketlab.io import write_json

        write_json(self.item_path(key), {"key": key, "load_average": list(os.getloadavg()), **data})
        print(f"[{time.strftime('%H:%M:%S')}] done {key}: {_brief(data)}", flush=True)
        self.aggregate()

    # -- masks ------------------------------------------------------------------------------------
    def tamt_spec(self, sparsity: float):
        from ticketlab.experiments.tamt import TamtSpec

        a = self.args
        return TamtSpec(
            model=self.model,
            objective=a.objective,
            sparsity=sparsity,
            text=str(self.shared / TAMT_TEXT),
            steps=a.budgets[-1],
            save_at=tuple(a.budgets[:-1]),
            batch_size=a.tamt_batch_size,
            max_length=a.tamt_max_length,
            lr=a.tamt_lr,
            optimizer=a.tamt_optimizer,
            checkpoint_every=math.gcd(*a.budgets),  # a checkpoint at every budget (the pauses)
            head_steps=a.head_steps,  # (mlm only: the built head's training)
            max_sequences=a.tamt_max_sequences,
        )

    def tamt_dir(self, sparsity: float) -> Path:
        objective = "" if self.args.objective == "kd" else f"{self.args.objective}-"
        return self.work / f"tamt-{objective}{self.args.tamt_optimizer}-{sparsity:.2f}"

    def is_tamt(self, ticket: str) -> bool:
        """A TAMT ticket of this run's objective (``tamt<N>`` is KD's, ``tamt_mlm<N>`` MLM's)."""
        return ticket.startswith(self.tamt_prefix) and ticket[len(self.tamt_prefix) :].isdigit()

    def of_this_objective(self, ticket: str) -> bool:
        return not ticket.startswith("tamt") or self.is_tamt(ticket)

    def tamt_mask(self, sparsity: float, budget: int) -> Path:
        """Train (or resume) the TAMT run up to ``budget`` and return that budget's mask."""
        from ticketlab.experiments.tamt import TamtOutputs, run_tamt

        out = self.tamt_dir(sparsity)
        outputs = TamtOutputs.for_out(out)
        path = outputs.final if budget == self.args.budgets[-1] else outputs.budget(budget)
        if path.exists():
            return path

        def pause(step: int, _losses: dict[str, float]) -> None:
            if step == budget and budget != self.args.budgets[-1]:
                raise Pause

        started = time.perf_counter()
        with contextlib.suppress(Pause):
            run_tamt(self.tamt_spec(sparsity), out, progress=False, on_step=pause)
        print(f"  TAMT {sparsity:.0%} up to step {budget}: {time.perf_counter() - started:.0f} s", flush=True)
        return path

    def baseline_mask(self, method: str, sparsity: float, seed: int) -> Path:
        from ticketlab.masks.io import save_mask
        from ticketlab.models import load_encoder
        from ticketlab.pruning import prune

        name = f"{method}-{sparsity:.2f}" + (f"-seed{seed}" if method == "random" else "")
        path = self.work / "masks" / f"{name}.safetensors"  # (not with_suffix: the name has dots)
        if not path.exists():
            mask = prune(
                load_encoder(self.model),
                method,
                sparsity,
                scope=SCOPE,
                scheme=SCHEME,
                seed=seed,
                source_model=self.model,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            save_mask(mask, path)
        return path

    def mask_for(self, ticket: str, sparsity: float, seed: int) -> Path | None:
        if ticket == "full":
            return None
        if self.is_tamt(ticket):
            return self.tamt_mask(sparsity, int(ticket.removeprefix(self.tamt_prefix)))
        return self.baseline_mask(ticket, sparsity, seed)

    def measure_mask(self, ticket: str, sparsity: float, seed: int, path: Path) -> None:
        """KD loss on valid.txt and the swap against OMP, once per mask file."""
        key = f"mask-{ticket}-{sparsity:.2f}" + (f"-seed{seed}" if ticket == "random" else "")
        if self.done(key):
            return
        from ticketlab.experiments.pretrain_loss import PretrainLossSpec, run_pretrain_loss
        from ticketlab.masks import load_mask, read_header

        losses = run_pretrain_loss(
            PretrainLossSpec(
                model=self.model,
                mask=str(path),
                text=str(self.shared / EVAL_TEXT),
                max_sequences=self.args.eval_max_sequences,
                max_length=128,
                kd_loss="mse",
            ),
            progress=False,
        )
        omp, mask = load_mask(self.baseline_mask("omp", sparsity, 0)), load_mask(path)
        kept = sum(int(b.sum()) for b in omp.tensors.values())
        swapped = sum(int((omp.tensors[n] & ~mask.tensors[n]).sum()) for n in omp.tensors)
        params = read_header(path)["provenance"]["method_params"]
        self.record(
            key,
            {
                "kind": "mask",
                "ticket": ticket,
                "sparsity": sparsity,
                "seed": seed,
                "kd_loss_mse": losses["kd_loss"],
                "kd_sequences": losses["num_sequences"],
                "swapped_vs_omp": swapped / kept,
                "search_cost": params.get("search_cost"),
                "optimizer": params.get("optimizer"),
            },
        )

    def same_as_omp(self, ticket: str, sparsity: float, mask: Path | None) -> bool:
        if mask is None or not self.is_tamt(ticket):
            return False
        from ticketlab.masks import load_mask

        omp, mine = load_mask(self.baseline_mask("omp", sparsity, 0)), load_mask(mask)
        return all(torch_equal(omp.tensors[n], mine.tensors[n]) for n in omp.tensors)

    def finetune(self, task: str, ticket: str, sparsity: float, seed: int) -> None:
        key = (
            f"ft-{task}-{ticket}-{sparsity:.2f}-seed{seed}"
            if ticket != "full"
            else f"ft-{task}-full-seed{seed}"
        )
        if self.done(key):
            return
        from ticketlab.experiments.finetune import FinetuneSpec, run_finetune

        mask = self.mask_for(ticket, sparsity, seed)
        if mask is not None:
            self.measure_mask(ticket, sparsity, seed, mask)
        same = self.same_as_omp(ticket, sparsity, mask)
        omp_key = f"ft-{task}-omp-{sparsity:.2f}-seed{seed}"
        if same and self.done(omp_key):
            # A TAMT budget whose mask is OMP's bit for bit (the scores have not crossed yet)
            # fine-tunes exactly as OMP's does: its result, not the same half hour again.
            found = self.done(omp_key)
            kept = {k: v for k, v in found.items() if k not in ("key", "load_average", "ticket")}
            self.record(key, {**kept, "ticket": ticket, "same_mask_as": "omp"})
            return
        a, recipe = self.args, TASKS[task]
        spec = FinetuneSpec(
            model=self.model,
            task=task,
            data_dir=str(self.shared / GLUE),
            mask=str(mask) if mask else None,
            lr=a.lr,
            batch_size=a.batch_size,
            epochs=a.epochs,
            eval_every=a.eval_every,
            max_length=128,
            seed=seed,
            max_train_samples=a.max_train_samples or recipe["max_train_samples"],
            max_eval_samples=a.max_eval_samples,
            train_subset="random" if (a.max_train_samples or recipe["max_train_samples"]) else "first",
            log_every=50,
        )
        results = run_finetune(
            spec, self.work / "finetune" / key, cache_dir=str(self.work / "cache"), quiet=True
        )
        metric = recipe["metric"]
        self.record(
            key,
            {
                "kind": "finetune",
                "task": task,
                "ticket": ticket,
                "sparsity": 0.0 if ticket == "full" else sparsity,
                "seed": seed,
                "metric": metric,
                "best": results["best"].get(metric),
                "final": results["final"].get(metric),
                "best_step": results["best_step"],
                "curve": [[e["step"], e["metrics"].get(metric)] for e in results.get("evaluations", [])],
                "train_examples": results["train_examples"],
                "training_steps": results["training_steps"],
                "wall_seconds": results["wall_seconds"],
            },
        )

    # -- the plan ---------------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, str, float, int]]:
        """(task, ticket, sparsity, seed) in the order that answers the question soonest."""
        tamt = [f"{self.tamt_prefix}{b}" for b in self.args.budgets]
        items: list[tuple[str, str, float, int]] = []
        for sparsity in self.args.sparsities:
            for task in self.args.tasks:
                for seed in self.args.seeds:
                    order = ["omp", tamt[0], "random", *tamt[1:]]
                    items += [(task, t, sparsity, seed) for t in order]
                    items.append((task, "full", 0.0, seed))
        return list(dict.fromkeys(items))

    def run(self) -> None:
        for task, ticket, sparsity, seed in self.plan():
            self.finetune(task, ticket, sparsity, seed)
        print(f"all done in {(time.perf_counter() - self.started) / 3600:.1f} h", flush=True)

    # -- the aggregate ----------------------------------------------------------------------------
    def aggregate(self) -> dict[str, Any]:
        items = [json.loads(p.read_text()) for p in sorted((self.work / "items").glob("*.json"))]
        items = [i for i in items if self.of_this_objective(i["ticket"])]  # never the other objective's
        cells: dict[tuple, list[dict[str, Any]]] = {}
        for item in items:
            if item["kind"] == "finetune":
                cells.setdefault((item["task"], item["sparsity"], item["ticket"]), []).append(item)
        masks = {(i["ticket"], i["sparsity"]): i for i in items if i["kind"] == "mask"}
        random_losses: dict[float, list[float]] = {}
        for i in items:
            if i["kind"] == "mask" and i["ticket"] == "random":
                random_losses.setdefault(i["sparsity"], []).append(i["kd_loss_mse"])
        rows, table = [], []
        for (task, sparsity, ticket), runs in sorted(
            cells.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])
        ):
            values = [r["best"] for r in sorted(runs, key=lambda r: r["seed"])]
            mask = masks.get((ticket, sparsity))
            kd = (
                statistics.mean(random_losses[sparsity])
                if ticket == "random" and random_losses.get(sparsity)
                else (mask["kd_loss_mse"] if mask else None)
            )
            row = {
                "task": task,
                "sparsity": sparsity,
                "ticket": ticket,
                "metric": runs[0]["metric"],
                "seeds": [r["seed"] for r in sorted(runs, key=lambda r: r["seed"])],
                "values": values,
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "kd_loss_mse": kd,
                "swapped_vs_omp": mask["swapped_vs_omp"] if mask else None,
            }
            rows.append(row)
            table.append(
                [
                    task,
                    f"{sparsity:.0%}",
                    ticket,
                    f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}",
                    " / ".join(f"{100 * v:.1f}" for v in values),
                    "" if kd is None else f"{kd:.4f}",
                    "" if row["swapped_vs_omp"] is None else f"{100 * row['swapped_vs_omp']:.2f}%",
                ]
            )
        header = [
            "task",
            "sparsity",
            "ticket",
            "dev (best) mean ± std",
            "per seed",
            "KD loss (MSE)",
            "swapped vs OMP",
        ]
        tamt_runs = {}
        for sparsity in self.args.sparsities:
            results = self.tamt_dir(sparsity) / "results.json"
            # (the checkpoint is with the claimed work since TAMT runs are steps; beside it before)
            paused = (self.tamt_dir(sparsity) / ".final.partial").is_dir() or (
                self.tamt_dir(sparsity) / "checkpoint.safetensors"
            ).exists()
            if results.exists():
                done = json.loads(results.read_text())
                tamt_runs[f"{sparsity:.2f}"] = {
                    "steps": done["steps"],
                    "losses": done["losses"],
                    "search_cost": done["search_cost"],
                    "optimizer": done["optimizer"],
                    "mlm_head": done.get("mlm_head"),
                }
            elif paused:
                tamt_runs[f"{sparsity:.2f}"] = {"status": "paused at a budget (checkpoint present)"}
        a = self.args
        data = {
            "settings": {
                k: v
                for k, v in vars(a).items()
                if k not in ("probe", "report_only", "work", "model", "results_name", "plot")
            },
            "model": a.model or MODEL,
            "scope": SCOPE,
            "scheme": SCHEME,
            "tasks": {t: TASKS[t] for t in a.tasks},
            "tamt": {
                "objective": a.objective,
                "ticket_prefix": self.tamt_prefix,
                "text": TAMT_TEXT,
                "kd_loss_train": "cosine" if a.objective == "kd" else None,
                "mlm_head": {"built": True, "head_steps": a.head_steps} if a.objective == "mlm" else None,
                "steps": a.budgets[-1],
                "budgets": a.budgets,
                "lr": a.tamt_lr,
                "optimizer": a.tamt_optimizer,
                "batch": [a.tamt_batch_size, a.tamt_max_length],
                "runs": tamt_runs,
            },
            "kd_eval": {"text": EVAL_TEXT, "blocks": a.eval_max_sequences, "length": 128, "loss": "mse"},
            "finished_items": len(items),
            "planned_finetunes": len(self.plan()),
            "table": {"header": header, "rows": table},
            "cells": rows,
            "items": items,
            "command": " ".join(["python", "benchmarks/bench_tamt_budgets.py", *sys.argv[1:]]).replace(
                str(Path.home()), "~"
            ),
        }
        write_results(a.results_name, data)
        return data


def plot_budgets(data: dict[str, Any], path: str) -> Path:
    """Per task x sparsity: TAMT's dev score (mean ± std over seeds) against its mask-training steps,
    with OMP's, random's and the full model's mean ± std as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = data["cells"]
    panels = sorted(
        {(c["task"], c["sparsity"]) for c in cells if c["ticket"] != "full"}, key=lambda k: (k[0], -k[1])
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (task, sparsity) in zip(axes[0], panels):
        mine = [c for c in cells if c["task"] == task and c["sparsity"] == sparsity]
        prefix = data["tamt"].get("ticket_prefix", "tamt")
        tamt = sorted(
            (int(c["ticket"][len(prefix) :]), c)
            for c in mine
            if c["ticket"].startswith(prefix) and c["ticket"][len(prefix) :].isdigit()
        )
        bands = [
            (c, colour)
            for name, colour in (("omp", "tab:blue"), ("random", "tab:grey"))
            for c in mine
            if c["ticket"] == name
        ]
        bands += [(c, "tab:green") for c in cells if c["task"] == task and c["ticket"] == "full"]
        right = max([b for b, _ in tamt] + [data["tamt"]["steps"]])
        for c, colour in bands:
            m, sd = 100 * c["mean"], 100 * c["std"]
            ax.axhspan(m - sd, m + sd, color=colour, alpha=0.15)
            ax.axhline(m, color=colour, lw=1, label=f"{c['ticket']} ({len(c['values'])} seeds)")
        if tamt:
            ax.errorbar(
                [b for b, _ in tamt],
                [100 * c["mean"] for _, c in tamt],
                yerr=[100 * c["std"] for _, c in tamt],
                marker="o",
                color="tab:red",
                capsize=3,
                label=f"TAMT-{data['tamt'].get('objective', 'kd').upper()} ("
                + ", ".join(str(len(c["values"])) for _, c in tamt)
                + " seeds)",
            )
        ax.set_xscale("log")
        ax.set_xlim(min([b for b, _ in tamt] + [right]) / 1.5, right * 1.5)
        ax.set_xticks(data["tamt"]["budgets"], [str(b) for b in data["tamt"]["budgets"]])
        ax.minorticks_off()
        ax.set_xlabel(f"TAMT steps ({data['tamt']['optimizer']}, lr {data['tamt']['lr']:g})")
        ax.set_ylabel(f"dev {mine[0]['metric']} (best, x100)")
        ax.set_title(f"{task} at {sparsity:.0%} (encoder+embeddings, per matrix)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _brief(data: dict[str, Any]) -> str:
    if data["kind"] == "finetune":
        return f"{data['metric']} {data['best']:.4f} ({data['wall_seconds']:.0f} s)"
    return f"KD {data['kd_loss_mse']:.4f}, swapped {100 * data['swapped_vs_omp']:.2f}%"


def probe(bench: Bench) -> None:
    """Seconds per TAMT step and per fine-tuning example here and now; the plan's estimate."""
    import tempfile

    from ticketlab.experiments.finetune import FinetuneSpec, run_finetune
    from ticketlab.experiments.tamt import run_tamt

    a = bench.args
    with tempfile.TemporaryDirectory() as tmp:
        spec = bench.tamt_spec(a.sparsities[0])
        spec.steps, spec.save_at = 6, ()
        times: list[float] = []
        last = [time.perf_counter()]

        def tick(step: int, _losses: dict[str, float]) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        run_tamt(spec, Path(tmp) / "tamt", progress=False, on_step=tick)
        step_s = statistics.median(times[1:])
        ft = {}
        for task in a.tasks:
            spec_ft = FinetuneSpec(
                model=bench.model,
                task=task,
                data_dir=str(bench.shared / GLUE),
                mask=str(bench.baseline_mask("omp", a.sparsities[0], 0)),
                lr=a.lr,
                batch_size=a.batch_size,
                epochs=1,
                max_length=128,
                max_train_samples=128,
                max_eval_samples=128,
                train_subset="random",
            )
            results = run_finetune(
                spec_ft, Path(tmp) / f"ft-{task}", cache_dir=str(bench.work / "cache"), quiet=True
            )
            ft[task] = (results["train_seconds"] / 128, results["eval_seconds"] / 128)
    sizes = {"stsb": (5749, 1500), "sst2": (TASKS["sst2"]["max_train_samples"], 872)}
    per_ft = {t: sizes[t][0] * a.epochs * ft[t][0] + sizes[t][1] * ft[t][1] + 15 for t in a.tasks}
    fts = {t: sum(1 for item in bench.plan() if item[0] == t) for t in a.tasks}
    total = a.budgets[-1] * step_s * len(a.sparsities) + sum(per_ft[t] * fts[t] for t in a.tasks)
    print(
        f"TAMT step ({a.tamt_batch_size} x {a.tamt_max_length}): {step_s:.2f} s; "
        f"{a.budgets[-1]} steps: {a.budgets[-1] * step_s / 60:.0f} min per sparsity"
    )
    for t in a.tasks:
        print(
            f"fine-tune {t}: {ft[t][0]:.3f} s/train example, {ft[t][1]:.3f} s/dev example -> "
            f"{per_ft[t] / 60:.1f} min per run, {fts[t]} runs"
        )
    print(f"whole plan: about {total / 3600:.1f} h at this load ({os.getloadavg()[0]:.1f})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_shared("bench_tamt_budgets.py", MODEL, GLUE, TAMT_TEXT, EVAL_TEXT)
    shared = shared_dir()
    quiet_run(args.threads)
    bench = Bench(args, shared)
    if args.probe:
        probe(bench)
    elif args.report_only:
        data = bench.aggregate()
        print(markdown_table(data["table"]["rows"], data["table"]["header"]))
        if args.plot:
            print(f"wrote {plot_budgets(data, args.plot)}")
    else:
        bench.run()
        data = bench.aggregate()
        print(markdown_table(data["table"]["rows"], data["table"]["header"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
