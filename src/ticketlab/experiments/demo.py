"""The offline demo: a tiny BERT, tickets by several methods, their overlap, and masked training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ticketlab.analysis.overlap import pairwise_overlap
from ticketlab.masks import apply_mask, save_mask
from ticketlab.models.tiny import tiny_model
from ticketlab.pruning import prune


def _format_rows(rows: list[list[str]], header: list[str]) -> str:
    from ticketlab.cli.common import format_table

    return format_table(rows, header)


def _synthetic_batch(generator: torch.Generator, vocab: int, batch: int = 32, length: int = 16):
    """A generated task: is token 5 more frequent than token 6 in the sequence?"""
    tokens = torch.randint(7, vocab, (batch, length), generator=generator)
    plant = torch.randint(0, 3, (batch, length), generator=generator)
    tokens = torch.where(plant == 1, torch.full_like(tokens, 5), tokens)
    tokens = torch.where(
        (plant == 2) & (torch.rand(batch, length, generator=generator) < 0.8),
        torch.full_like(tokens, 6),
        tokens,
    )
    labels = ((tokens == 5).sum(1) > (tokens == 6).sum(1)).long()
    return tokens, labels


def run(out: Path, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out`` and return its numbers."""
    from transformers import BertForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model("bert", seed=seed, hidden_size=64, num_hidden_layers=4, intermediate_size=128)
    model.save_pretrained(out / "model")
    echo(f"built a tiny BERT (4 layers, hidden 64) and saved it to {out / 'model'}")

    masks = {}
    rows = []
    for method in ("omp", "random"):
        for sparsity in (0.5, 0.8):
            mask = prune(
                model,
                method,
                sparsity,
                scope="encoder",
                scheme="global",
                seed=seed,
                source_model=str(out / "model"),
            )
            path = out / f"{method}-{int(sparsity * 100)}.safetensors"
            save_mask(mask, path)
            masks[path.name] = mask
            rows.append(
                [
                    path.name,
                    method,
                    f"{100 * mask.sparsity:.2f}%",
                    f"{mask.num_pruned():,}",
                    f"{path.stat().st_size:,} B",
                ]
            )
    echo(_format_rows(rows, ["mask", "method", "sparsity", "pruned", "file"]))
    overlap = pairwise_overlap(masks)
    echo(
        _format_rows(
            [[p.a, p.b, f"{p.jaccard:.3f}", f"{p.jaccard_random:.3f}"] for p in overlap],
            ["mask A", "mask B", "jaccard", "random masks"],
        )
    )

    # Train a masked classifier briefly with AdamW + weight decay: the pruned weights must stay zero.
    results = {}
    for name in ("omp-80.safetensors", "random-80.safetensors"):
        torch.manual_seed(seed)
        classifier = BertForSequenceClassification.from_pretrained(out / "model", num_labels=2)
        enforcer = apply_mask(classifier, masks[name])
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=0.01)
        enforcer.attach(optimizer)
        generator = torch.Generator().manual_seed(seed)
        classifier.train()
        losses = []
        for _ in range(60):
            tokens, labels = _synthetic_batch(generator, classifier.config.vocab_size)
            loss = classifier(input_ids=tokens, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        leaked = sum(
            int(p[enforcer._pruned[n].to(p.device)].ne(0).sum())
            for n, p in enforcer.parameters.items()
            if n in enforcer._pruned
        )
        results[name] = {
            "first_loss": sum(losses[:10]) / 10,
            "last_loss": sum(losses[-10:]) / 10,
            "pruned_nonzero": leaked,
        }
    echo(
        _format_rows(
            [
                [n, f"{r['first_loss']:.3f}", f"{r['last_loss']:.3f}", str(r["pruned_nonzero"])]
                for n, r in results.items()
            ],
            ["ticket", "loss, first 10 steps", "loss, last 10 steps", "pruned weights != 0"],
        )
    )
    echo(f"masks written to {out}; inspect one with: ticketlab inspect {out / 'omp-80.safetensors'}")
    return {"masks": {n: m.sparsity for n, m in masks.items()}, "training": results}
