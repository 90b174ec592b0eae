"""The offline demo: the lottery-ticket story on a tiny BERT, in a few minutes on two CPU cores.

1. A generated language with structure (agreement across relative clauses, topics) pre-trains a
   tiny BERT by masked-language modelling.
2. Two downstream tasks in GLUE layouts: agreement (CoLA layout, Matthews correlation) and topic
   (SST-2 layout, accuracy).
3. A ticket grid: the full model, one-shot magnitude (OMP), matched random and IMP tickets at
   several sparsities, each fine-tuned with two seeds, through the same pipeline as real tasks.
4. The table, the plots, and a verdict computed from the numbers: do magnitude tickets beat random
   ones at the highest sparsity?
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ticketlab.io import write_json


@dataclass
class DemoSettings:
    """Sizes of the demo (the defaults fit in a few minutes on two CPU cores)."""

    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    ffn_size: int = 256
    pretrain_documents: int = 3000
    pretrain_steps: int = 800
    pretrain_lr: float = 2e-3
    train_examples: int = 256
    dev_examples: int = 200
    sparsities: tuple[float, ...] = (0.5, 0.9)
    seeds: tuple[int, ...] = (0, 1)
    finetune_epochs: int = 3
    finetune_lr: float = 1e-3


def pretrain_tiny_bert(out: Path, settings: DemoSettings, seed: int, echo: Callable[[str], None]) -> Path:
    """Build and MLM-pre-train the demo's tiny BERT; saved with its tokenizer into ``out``."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import BertConfig, BertForMaskedLM

    from ticketlab.data.synthetic import build_tokenizer, pretraining_corpus
    from ticketlab.data.text import blocks_from_lines
    from ticketlab.training.loop import TrainConfig, train
    from ticketlab.training.objectives import MlmMasking

    if (out / "pretraining.json").exists():
        echo(f"pre-trained model found in {out}")
        return out
    started = time.perf_counter()
    tokenizer = build_tokenizer(out)
    set_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        intermediate_size=settings.ffn_size,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(config)
    blocks = blocks_from_lines(
        tokenizer,
        pretraining_corpus(settings.pretrain_documents, seed=seed),
        source="synthetic",
        max_length=32,
        progress=False,
    )
    masking = MlmMasking.for_tokenizer(tokenizer)
    indices = list(range(len(blocks)))

    batches_seen = [0]

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        # Fresh masks at every batch (dynamic masking), still a function of the seed and batch count.
        batches_seen[0] += 1
        ids, labels = masking(blocks.input_ids[rows], seed=seed * 1_000_003 + batches_seen[0], keys=rows)
        return {"input_ids": ids, "attention_mask": blocks.attention_mask[rows], "labels": labels}

    loader = DataLoader(
        indices,
        batch_size=32,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    config_train = TrainConfig(
        lr=settings.pretrain_lr,
        max_steps=settings.pretrain_steps,
        weight_decay=0.01,
        warmup_ratio=0.06,
        eval_at_epoch_end=False,
        seed=seed,
        quiet=True,
    )
    echo(
        f"pre-training a tiny BERT ({settings.layers} layers, hidden {settings.hidden_size}) by MLM on "
        f"{len(blocks)} blocks of a generated language, {settings.pretrain_steps} steps ..."
    )
    result = train(model, loader, None, config_train)
    model.save_pretrained(out)
    write_json(
        out / "pretraining.json",
        {"steps": result.steps, "seconds": time.perf_counter() - started, "blocks": len(blocks)},
    )
    echo(f"  done in {time.perf_counter() - started:.0f}s")
    return out


# Scores at or below these mean the full model learned nothing (chance level), so comparing
# tickets on that task says nothing either.
CHANCE = {"matthews": 0.1, "accuracy": 0.6}


def verdict(summary: dict[str, Any], sparsity: float) -> list[dict[str, Any]]:
    """Magnitude (OMP, IMP) against random tickets at ``sparsity``, per task, from the grid's cells.

    A win needs the gap to exceed the spread of the two cells (their stds added); on a task where
    the full model stayed at chance there is no verdict (``magnitude_wins`` is None).
    """
    rows = []
    for task in sorted({c["task"] for c in summary["cells"]}):
        at = {
            c["method"]: c
            for c in summary["cells"]
            if c["task"] == task and abs(c["sparsity"] - sparsity) < 1e-6
        }
        full = next((c for c in summary["cells"] if c["task"] == task and c["method"] == "full"), None)
        if "random" not in at:
            continue
        for method in ("omp", "imp"):
            if method not in at:
                continue
            metric = at[method]["metric"]
            gap = at[method]["mean"] - at["random"]["mean"]
            spread = at[method].get("std", 0.0) + at["random"].get("std", 0.0)
            learned = full is None or full["mean"] > CHANCE.get(metric, float("-inf"))
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "sparsity": sparsity,
                    "method": method,
                    "magnitude": at[method]["mean"],
                    "random": at["random"]["mean"],
                    "full": full["mean"] if full else None,
                    "gap": gap,
                    "spread": spread,
                    "full_model_learned": learned,
                    "magnitude_wins": (gap > spread) if learned else None,
                }
            )
    return rows


def run_grid(
    out: Path, seed: int = 0, echo: Callable[[str], None] = print, settings: DemoSettings | None = None
) -> tuple[Path, dict, Path]:
    """Pre-train the tiny model and run the demo's grid into ``out`` (resumable).

    Returns the grid's run directory, its summary and the pre-trained model's folder; the report
    and the verdict are written by ``ticketlab.reports.demo.run``, the layer above.
    """
    from ticketlab.data.synthetic import write_glue_tasks
    from ticketlab.experiments.grid import GridRunner, GridSpec

    settings = settings or DemoSettings()
    out.mkdir(parents=True, exist_ok=True)
    # A model this small runs fastest on one thread (more threads only add synchronisation).
    torch.set_num_threads(1)
    model_dir = pretrain_tiny_bert(out / "model", settings, seed, echo)
    data_dir = write_glue_tasks(out / "data", settings.train_examples, settings.dev_examples, seed=seed)
    spec = GridSpec(
        model=str(model_dir),
        tasks=["cola", "sst2"],
        data_dir=str(data_dir),
        methods=["full", "omp", "random", "imp"],
        sparsities=list(settings.sparsities),
        seeds=list(settings.seeds),
        imp_levels=list(settings.sparsities),
        recipe={
            "epochs": settings.finetune_epochs,
            "lr": settings.finetune_lr,
            "batch_size": 32,
            "max_length": 64,
            "log_every": 1000,
        },
    )
    echo(
        "fine-tuning tickets (full, OMP, matched random, IMP) on agreement (CoLA layout) and topic "
        f"(SST-2 layout), seeds {list(settings.seeds)} ..."
    )
    runner = GridRunner(spec, out / "grid", cache_dir=str(out / "cache"), quiet=True, echo=lambda _: None)
    summary = runner.run_all()
    return runner.root, summary, model_dir
