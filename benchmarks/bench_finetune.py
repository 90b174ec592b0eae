"""Fine-tuning MiniLM-L6 on GLUE: ticketlab's pipeline beside Hugging Face's ``Trainer``, same recipe.

For each task and seed the script fine-tunes ``../shared/models/all-MiniLM-L6-v2`` twice: through
``ticketlab.experiments.finetune.run_finetune`` (the code path of ``ticketlab finetune``) and through
``transformers.Trainer`` with ``AutoModelForSequenceClassification``. The recipe is the same on both
sides: the same training subsample (the first N examples) and dev subset (the first M), max length
128 with dynamic padding, batch 32, AdamW with weight decay 0.01 (none on biases and LayerNorm
weights), linear decay without warm-up, gradient clipping at 1.0, the same learning rate, epochs
and seed (set before the head is initialised), an evaluation at each epoch end, and dev metrics
from the same functions (``ticketlab.training.metrics``: scikit-learn and scipy). Each side keeps
its own defaults where a user would (Trainer: its default optimizer implementation and shuffling).

The two runs of a seed are interleaved (which one goes first alternates with the seed), so load
from other processes hits both alike. Reported per task: the dev main score, mean +- std over
seeds, of the best evaluation and of the final one, and training throughput (training examples
per second over training time only, evaluation excluded) with the ratio ticketlab / Trainer.
Results are written to benchmarks/results/finetune.json after every run, so a stopped benchmark
leaves its finished runs behind; a Markdown table is printed at the end.

On two CPU cores one full-size 3-epoch run takes 6 (CoLA) to 15 (STS-B) minutes, so the defaults
subsample the training sets (the first 600 examples) and cut the larger dev sets (the first 500);
the output and the JSON say so. Estimated time of the defaults on an idle 2-core machine: 2
frameworks x 3 seeds x 3 epochs x (600 training examples at 69 (CoLA), ~49 (STS-B), ~32 (SST-2),
~16 (MRPC), 10 (RTE) examples/s + <= 500 dev examples about 3x faster), about 50-60 minutes. The
per-example cost follows the padded batch length (CoLA 19 tokens, STS-B 26, SST-2 40, MRPC 79,
RTE 128 for these subsets); the tasks run cheapest first, so a stopped run still covers the most
tasks.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_finetune.py \\
        [--tasks cola,stsb,sst2,mrpc,rte] [--seeds 0,1,2] [--epochs 3] [--lr 1e-4] \\
        [--max-train-samples 600] [--max-eval-samples 500]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import RESULTS_DIR, machine, markdown_table, shared_dir

MODEL = "models/all-MiniLM-L6-v2"
GLUE = "data/glue"
BATCH_SIZE = 32
MAX_LENGTH = 128
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="cola,stsb,sst2,mrpc,rte", help="GLUE tasks, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="learning rate for every task (suits MiniLM-L6)"
    )
    parser.add_argument(
        "--max-train-samples",
        type=int,
        default=600,
        help="train on the first N training examples of each task (0: the whole training set)",
    )
    parser.add_argument(
        "--max-eval-samples",
        type=int,
        default=500,
        help="evaluate on the first N dev examples of each task (0: the whole dev set)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "finetune.json"), help="results JSON")
    parser.add_argument(
        "--resume",
        metavar="JSON",
        help="keep the runs of this earlier results file (same settings) and do only the missing ones",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.max_train_samples = args.max_train_samples or None
    args.max_eval_samples = args.max_eval_samples or None
    return args


def require_shared() -> tuple[Path, Path]:
    """The model and GLUE folders under $TICKETLAB_SHARED, or exit with a clear message."""
    shared = shared_dir()
    if shared is None:
        sys.exit(
            "bench_finetune: set TICKETLAB_SHARED to the shared folder (../shared) with the model and GLUE"
        )
    model, glue = shared / MODEL, shared / GLUE
    for path in (model, glue):
        if not path.is_dir():
            sys.exit(f"bench_finetune: {path} is missing (needed: {MODEL} and {GLUE} under TICKETLAB_SHARED)")
    return model, glue


def run_ticketlab(task: str, seed: int, args: argparse.Namespace, model: Path, glue: Path, work: Path):
    """One run through ticketlab's fine-tuning pipeline; its results.json and per-epoch evaluations."""
    from ticketlab.experiments.finetune import LOG_FILE, FinetuneSpec, run_finetune

    spec = FinetuneSpec(
        model=str(model),
        task=task,
        data_dir=str(glue),
        lr=args.lr,
        batch_size=BATCH_SIZE,
        epochs=args.epochs,
        max_length=MAX_LENGTH,
        warmup_ratio=0.0,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        seed=seed,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
    )
    with tempfile.TemporaryDirectory(dir=work) as out:
        results = run_finetune(spec, out, cache_dir=work / "cache", quiet=True)
        log = [json.loads(line) for line in (Path(out) / LOG_FILE).read_text().splitlines()]
    main = results["main_metric"]
    evaluations = [e["metrics"] for e in log if e["event"] == "eval"]
    return {
        "framework": "ticketlab",
        "best": results["best"][main],
        "final": results["final"][main],
        "evaluations": evaluations,
        "train_examples": results["train_examples"],
        "train_examples_seen": results["train_examples_seen"],
        "train_seconds": results["train_seconds"],
        "eval_seconds": results["eval_seconds"],
        "train_examples_per_second": results["train_examples_per_second"],
        "wall_seconds": results["wall_seconds"],
    }


class TrainerData:
    """One task's training and dev sets for ``Trainer``, tokenised here with the tokenizer itself."""

    def __init__(self, task: str, args: argparse.Namespace, model: Path, glue: Path):
        from datasets import Dataset
        from transformers import AutoTokenizer

        from ticketlab.data.glue import glue_task, load_glue_examples

        self.info = glue_task(task)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model))

        def tokenised(split: str, count: int | None) -> Any:
            examples = load_glue_examples(self.info, split, glue).head(count)
            encoded = self.tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=MAX_LENGTH)
            return Dataset.from_dict({**encoded, "labels": list(examples.labels)})

        self.train = tokenised("train", args.max_train_samples)
        self.dev = tokenised(self.info.dev_splits[0], args.max_eval_samples)

    def same_inputs_as_ticketlab(self, args: argparse.Namespace, glue: Path, work: Path) -> bool:
        """Whether ticketlab's (cached) tokenised splits hold exactly these token ids and labels."""
        from ticketlab.training.tasks import DataOptions, get_task

        task = get_task(self.info.name)
        options = DataOptions(
            max_length=MAX_LENGTH,
            data_dir=str(glue),
            cache_dir=work / "cache",
            max_train_samples=args.max_train_samples,
            max_eval_samples=args.max_eval_samples,
            quiet=True,
        )
        ours = {
            "train": task.train_dataset(self.tokenizer, options),
            "dev": task.eval_data(self.info.dev_splits[0], self.tokenizer, options).dataset,
        }
        theirs = {"train": self.train, "dev": self.dev}
        return all(
            ours[s][column] == theirs[s][column]
            for s in ours
            for column in ("input_ids", "attention_mask", "labels")
        )


def run_trainer(data: TrainerData, seed: int, args: argparse.Namespace, model_path: Path, work: Path):
    """One run of the same recipe through ``transformers.Trainer``."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from ticketlab.training.metrics import compute_metrics

    info = data.info

    def metrics(prediction: Any) -> dict[str, float]:
        logits = np.asarray(prediction.predictions)
        predicted = logits[:, 0] if info.is_regression else logits.argmax(axis=-1)
        return compute_metrics(info.metrics, predicted, np.asarray(prediction.label_ids))

    class TimedTrainer(Trainer):
        """Trainer that adds up the time spent in evaluation (to leave it out of the throughput)."""

        eval_seconds = 0.0

        def evaluate(self, *a: Any, **k: Any) -> dict[str, float]:
            start = time.perf_counter()
            try:
                return super().evaluate(*a, **k)
            finally:
                self.eval_seconds += time.perf_counter() - start

    class LoopTimer(TrainerCallback):
        """Wall time of the training loop (after the set-up, up to the end of the last epoch)."""

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.seconds = time.perf_counter() - self.start

    wall_start = time.perf_counter()
    kwargs: dict[str, Any] = {"num_labels": info.num_labels}
    if info.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["problem_type"] = "single_label_classification"
    set_seed(seed)  # before the model: the head's initialisation depends on it
    model = AutoModelForSequenceClassification.from_pretrained(str(model_path), **kwargs)
    timer = LoopTimer()
    with tempfile.TemporaryDirectory(dir=work) as out:
        training_args = TrainingArguments(
            output_dir=out,
            learning_rate=args.lr,
            per_device_train_batch_size=BATCH_SIZE,
            per_device_eval_batch_size=BATCH_SIZE,
            num_train_epochs=args.epochs,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=WEIGHT_DECAY,
            max_grad_norm=MAX_GRAD_NORM,
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=seed,
            use_cpu=True,
        )
        trainer = TimedTrainer(
            model=model,
            args=training_args,
            train_dataset=data.train,
            eval_dataset=data.dev,
            data_collator=DataCollatorWithPadding(data.tokenizer),
            compute_metrics=metrics,
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every evaluation's logs
        output = trainer.train()
    main = info.main_metric
    evaluations = [
        {k.removeprefix("eval_"): v for k, v in entry.items() if k.removeprefix("eval_") in info.metrics}
        for entry in trainer.state.log_history
        if f"eval_{main}" in entry
    ]
    values = [e[main] for e in evaluations]
    finite = [v for v in values if not math.isnan(v)]
    seen = len(data.train) * args.epochs
    train_seconds = timer.seconds - trainer.eval_seconds
    return {
        "framework": "trainer",
        "best": max(finite) if finite else float("nan"),
        "final": values[-1],
        "evaluations": evaluations,
        "train_examples": len(data.train),
        "train_examples_seen": seen,
        "train_seconds": train_seconds,
        "eval_seconds": trainer.eval_seconds,
        "train_examples_per_second": seen / train_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "training_steps": output.global_step,
        "optimizer": getattr(training_args.optim, "value", str(training_args.optim)),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], tasks: list[str]) -> list[dict[str, Any]]:
    """One row per task with both frameworks' mean and std over the seeds that finished."""
    rows = []
    for task in tasks:
        mine = [r for r in runs if r["task"] == task]
        if not mine:
            continue
        row: dict[str, Any] = {
            "task": task,
            "main_metric": mine[0]["main_metric"],
            "train_examples": mine[0]["train_examples"],
            "eval_examples": mine[0]["eval_examples"],
        }
        for framework in ("ticketlab", "trainer"):
            done = [r for r in mine if r["framework"] == framework]
            row[framework] = {
                "seeds": [r["seed"] for r in done],
                **{
                    f"{what}_{stat}": value
                    for what in ("best", "final", "train_examples_per_second")
                    for stat, value in zip(("mean", "std"), mean_std([r[what] for r in done]))
                },
            }
        ours, theirs = row["ticketlab"], row["trainer"]
        row["throughput_ratio"] = (
            ours["train_examples_per_second_mean"] / theirs["train_examples_per_second_mean"]
        )
        rows.append(row)
    return rows


def _pm(mean: float, std: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "task (metric)",
        "train / dev",
        "best: ticketlab",
        "best: Trainer",
        "final: ticketlab",
        "final: Trainer",
        "ex/s: ticketlab",
        "ex/s: Trainer",
        "ratio",
    ]
    body = []
    for row in rows:
        ours, theirs = row["ticketlab"], row["trainer"]
        body.append(
            [
                f"{row['task']} ({row['main_metric']})",
                f"{row['train_examples']} / {row['eval_examples']}",
                _pm(ours["best_mean"], ours["best_std"]),
                _pm(theirs["best_mean"], theirs["best_std"]),
                _pm(ours["final_mean"], ours["final_std"]),
                _pm(theirs["final_mean"], theirs["final_std"]),
                _pm(ours["train_examples_per_second_mean"], ours["train_examples_per_second_std"], 1),
                _pm(theirs["train_examples_per_second_mean"], theirs["train_examples_per_second_std"], 1),
                "n/a" if math.isnan(row["throughput_ratio"]) else f"{row['throughput_ratio']:.2f}",
            ]
        )
    return markdown_table(body, header)


def run_conditions() -> dict[str, Any]:
    """When and under what load one run was measured (resumed results mix several sittings)."""
    import torch

    return {
        "date_utc": machine()["date_utc"],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
    }


# Settings that change what a run computes: an earlier file is reusable only if they agree.
_RESUME_KEYS = ("model", "epochs", "lr", "batch_size", "max_length", "max_train_samples", "max_eval_samples")


def earlier_runs(path: Path, settings: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, bool]]:
    earlier = json.loads(path.read_text())
    differ = [k for k in _RESUME_KEYS if earlier["settings"].get(k) != settings[k]]
    if differ:
        raise SystemExit(f"{path}: setting {differ[0]!r} differs from this run's; cannot resume from it")
    return list(earlier["runs"]), dict(earlier.get("same_inputs", {}))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, glue = require_shared()
    import transformers

    from ticketlab.data.glue import glue_task
    from ticketlab.training.metrics import json_safe

    transformers.logging.set_verbosity_error()  # the "newly initialised head" notice, once per run
    transformers.logging.disable_progress_bar()  # "Loading weights", once per run
    for task in args.tasks:
        glue_task(task)  # an unknown task fails now, not after an hour
    subsampled = (
        f"training sets subsampled to the first {args.max_train_samples} examples"
        if args.max_train_samples
        else "full training sets"
    ) + (
        f"; dev sets cut to the first {args.max_eval_samples} examples"
        if args.max_eval_samples
        else "; full dev sets"
    )
    settings = {
        "model": MODEL,
        "tasks": args.tasks,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "padding": "dynamic (per batch)",
        "warmup": 0,
        "schedule": "linear decay",
        "weight_decay": WEIGHT_DECAY,
        "max_grad_norm": MAX_GRAD_NORM,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "subsampled": args.max_train_samples is not None,
        "note": subsampled,
    }
    print(f"MiniLM-L6, lr {args.lr:g} for every task, {args.epochs} epochs, seeds {args.seeds}: {subsampled}")
    out = Path(args.out)
    runs: list[dict[str, Any]] = []
    checks: dict[str, bool] = {}
    if args.resume:
        runs, checks = earlier_runs(Path(args.resume), settings)
        print(f"kept {len(runs)} runs of {args.resume}")
    done = {(r["task"], r["seed"], r["framework"]) for r in runs}

    def save(status: str) -> dict[str, Any]:
        rows = summarise(runs, args.tasks)
        payload = {
            "benchmark": "finetune",
            "status": status,
            "machine": machine(),
            "settings": settings,
            "same_inputs": checks,
            "rows": rows,
            "runs": runs,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
        os.replace(tmp, out)  # atomic: a reader never sees half a file
        return payload

    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as work_dir:
        work = Path(work_dir)
        for task in args.tasks:
            info = glue_task(task)
            data = TrainerData(task, args, model, glue)
            for position, seed in enumerate(args.seeds):
                order = ("ticketlab", "trainer") if position % 2 == 0 else ("trainer", "ticketlab")
                for framework in order:
                    if (info.name, seed, framework) in done:
                        continue
                    if framework == "ticketlab":
                        run = run_ticketlab(info.name, seed, args, model, glue, work)
                        if info.name not in checks:  # ticketlab's tokenised data is cached now
                            checks[info.name] = data.same_inputs_as_ticketlab(args, glue, work)
                    else:
                        run = run_trainer(data, seed, args, model, work)
                    run.update(
                        task=info.name,
                        seed=seed,
                        main_metric=info.main_metric,
                        eval_examples=len(data.dev),
                        measured=run_conditions(),
                    )
                    runs.append(run)
                    save("partial")
                    print(
                        f"{info.name} seed {seed} {framework:<9}: {info.main_metric} best {run['best']:.4f} "
                        f"final {run['final']:.4f}, {run['train_examples_per_second']:.1f} train ex/s "
                        f"({run['train_seconds']:.0f} s training, {run['eval_seconds']:.0f} s evaluation)",
                        flush=True,
                    )
            if not checks.get(info.name, True):
                print(f"WARNING: {info.name}: Trainer's inputs differ from ticketlab's tokenisation")
    payload = save("complete")
    print()
    print(f"MiniLM-L6, {subsampled}; dev main score mean ± std over seeds {args.seeds}")
    print(table(payload["rows"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
