"""Where TAMT's swaps go, and which of them cost the fine-tune (issue 18).

At a budget-matched lr (BertAdam, 7e-4 over 300 steps) TAMT-KD's masks on MiniLM-L6 at 50% swap
about 2% of OMP's kept weights and fine-tune on STS-B 40 points below OMP (bench_tamt_budgets.py).
This script asks where those 2% are and which part of them does the harm:

1. **Where** (no training): for one TAMT mask against OMP's mask at the same sparsity, the share of
   OMP's kept weights swapped out, per kind of matrix (query, key, value, attention output, FFN in
   and out, the three embedding tables, the pooler); in the word embeddings, by rows of tokens that
   the TAMT text holds or not and that the fine-tuning task's training text holds or not; in the
   token-type and position embeddings (when the scope holds them), by row (a TAMT text of single
   blocks only ever uses token type 0, and blocks of ``max_length`` tokens only the positions
   below it).
2. **Which part costs the fine-tune**: hybrid masks, TAMT's bits on one part of the model and
   OMP's on the rest (exact per-matrix counts either way: the scheme is per-matrix), each
   fine-tuned with bench_tamt_budgets.py's recipe (the full STS-B training set, one epoch, lr 1e-4,
   batch 16, best of the dev evaluations), beside OMP and TAMT itself. ``--parts`` names them:
   ``embeddings`` (the embedding tables in scope), ``encoder`` (the layers and the pooler),
   ``attention`` (query, key, value and attention output of every layer), ``query_key``,
   ``value_output`` (those two halves of it), ``ffn`` (both FFN
   matrices of every layer), ``word``, ``position``, ``token_type``.

Everything goes to ``--work`` (masks, fine-tuning runs, one JSON per finished item, resumable: a
rerun skips what is done); the aggregate is ``benchmarks/results/<--results-name>.json``.

    OMP_NUM_THREADS=1 TICKETLAB_SHARED=../shared PYTHONPATH=src taskset -c 1 \\
        python benchmarks/bench_tamt_where.py --tamt-run DIR [--budget 300] [--sparsity 0.5] \\
        [--parts embeddings,encoder] [--seeds 0] [--analysis-only]

``DIR`` is a ``ticketlab tamt --out DIR`` run (``mask.safetensors``, ``mask-step<N>.safetensors``)
of the same model, scope and scheme; the benchmark's own runs (``tamt-bertadam-<s>/`` in its
``--work``) are such runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench_common import markdown_table, quiet_run, require_shared, shared_dir, write_results
from bench_tamt_budgets import EVAL_TEXT, GLUE, MODEL, SCHEME, SCOPE, TAMT_TEXT, Bench
from bench_tamt_budgets import parse_args as budgets_args

# Kinds of matrix, by the end of the canonical parameter name (BERT naming).
KINDS = (
    ("word embeddings", "embeddings.word_embeddings.weight"),
    ("position embeddings", "embeddings.position_embeddings.weight"),
    ("token-type embeddings", "embeddings.token_type_embeddings.weight"),
    ("query", "attention.self.query.weight"),
    ("key", "attention.self.key.weight"),
    ("value", "attention.self.value.weight"),
    ("attention output", "attention.output.dense.weight"),
    ("FFN in", "intermediate.dense.weight"),
    ("FFN out", ".output.dense.weight"),  # (after "attention output": the first match wins)
    ("pooler", "pooler.dense.weight"),
)
# The parts a hybrid can take from TAMT: a predicate over parameter names.
PARTS = {
    "embeddings": lambda n: ".embeddings." in f".{n}",
    "encoder": lambda n: ".embeddings." not in f".{n}",
    "attention": lambda n: ".attention." in n,
    "query_key": lambda n: n.endswith(("attention.self.query.weight", "attention.self.key.weight")),
    "value_output": lambda n: n.endswith(("attention.self.value.weight", "attention.output.dense.weight")),
    "ffn": lambda n: ".intermediate." in n or (n.endswith(".output.dense.weight") and ".attention." not in n),
    "word": lambda n: n.endswith("word_embeddings.weight"),
    "position": lambda n: n.endswith("position_embeddings.weight"),
    "token_type": lambda n: n.endswith("token_type_embeddings.weight"),
}


def kind_of(name: str) -> str:
    for kind, ending in KINDS:
        if name.endswith(ending):
            return kind
    return "other"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tamt-run", required=True, help="a `ticketlab tamt --out DIR` run directory")
    p.add_argument("--budget", type=int, default=300, help="which of its masks (its final one: its steps)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--task", default="stsb")
    p.add_argument("--seeds", default="0")
    p.add_argument("--parts", default="embeddings,encoder", help=f"hybrids to fine-tune: {', '.join(PARTS)}")
    p.add_argument("--references", default="omp,tamt", help="also fine-tune these (omp, tamt)")
    p.add_argument(
        "--epochs", type=int, default=1, help="fine-tuning epochs (bench_tamt_budgets's recipe: 1)"
    )
    p.add_argument("--eval-every", type=int, help="also evaluate every N steps (a learning curve)")
    p.add_argument("--analysis-only", action="store_true", help="the where-table only, no fine-tuning")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "ticketlab" / "bench_tamt_where"))
    p.add_argument("--results-name", default="tamt_where")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r} (choose from {', '.join(PARTS)})")
    args.references = [x for x in args.references.split(",") if x]
    return args


def tamt_mask_path(run: Path, budget: int) -> Path:
    """The run's mask at ``budget`` steps: a ``--save-at`` one, or its final mask at its last step."""
    saved = run / f"mask-step{budget}.safetensors"
    if saved.exists():
        return saved
    results = run / "results.json"
    if results.exists() and json.loads(results.read_text())["steps"] == budget:
        return run / "mask.safetensors"
    raise SystemExit(f"{run} has no mask at step {budget} (yet? its --save-at and --steps say which it has)")


def token_ids(tokenizer, lines: list[str]) -> set[int]:
    ids: set[int] = set()
    for start in range(0, len(lines), 512):
        for row in tokenizer(lines[start : start + 512], add_special_tokens=False)["input_ids"]:
            ids.update(row)
    return ids


def where(omp, tamt, tamt_tokens: set[int], task_tokens: set[int], max_length: int) -> dict[str, Any]:
    """Shares of OMP's kept weights TAMT swapped out, by kind of matrix and by row groups."""
    import torch

    by_kind: dict[str, list[int]] = {}
    per_matrix = {}
    for name, kept in omp.tensors.items():
        out = kept & ~tamt.tensors[name]
        n_kept, n_out = int(kept.sum()), int(out.sum())
        per_matrix[name] = n_out / max(n_kept, 1)
        totals = by_kind.setdefault(kind_of(name), [0, 0])
        totals[0] += n_kept
        totals[1] += n_out
    rows: dict[str, dict[str, Any]] = {}

    def row_groups(label: str, name: str, groups: dict[str, torch.Tensor]) -> None:
        kept, mine = omp.tensors[name], tamt.tensors[name]
        for group, selected in groups.items():
            k = kept[selected]
            n_kept = int(k.sum())
            rows[f"{label}: {group}"] = {
                "rows": int(selected.sum()),
                "kept_by_omp": n_kept,
                "swapped_out": int((k & ~mine[selected]).sum()) / max(n_kept, 1),
                "swapped_in": int((~k & mine[selected]).sum()) / max(n_kept, 1),
            }

    for name in omp.tensors:
        n_rows = omp.tensors[name].shape[0]
        index = torch.arange(n_rows)
        if name.endswith("word_embeddings.weight"):
            seen = torch.zeros(n_rows, dtype=torch.bool)
            seen[list(tamt_tokens)] = True
            task = torch.zeros(n_rows, dtype=torch.bool)
            task[list(task_tokens)] = True
            row_groups(
                "word embeddings",
                name,
                {
                    "tokens in the TAMT text": seen,
                    "tokens not in it": ~seen,
                    "task tokens in the TAMT text": task & seen,
                    "task tokens not in it": task & ~seen,
                },
            )
        elif name.endswith("token_type_embeddings.weight"):
            row_groups("token-type embeddings", name, {f"type {i}": index == i for i in range(n_rows)})
        elif name.endswith("position_embeddings.weight"):
            row_groups(
                "position embeddings",
                name,
                {
                    f"positions < {max_length}": index < max_length,
                    f"positions >= {max_length}": index >= max_length,
                },
            )
    return {
        "by_kind": {k: {"kept_by_omp": v[0], "swapped_out": v[1] / max(v[0], 1)} for k, v in by_kind.items()},
        "rows": rows,
        "per_matrix": per_matrix,
    }


class WhereBench(Bench):
    """bench_tamt_budgets's items (masks measured, fine-tunes recorded) over hybrid tickets."""

    def __init__(self, args: argparse.Namespace, budget_args: argparse.Namespace, shared: Path):
        super().__init__(budget_args, shared)
        self.where_args = args
        self.tamt_path = tamt_mask_path(Path(args.tamt_run).expanduser(), args.budget)

    def is_tamt(self, ticket: str) -> bool:
        return ticket == "tamt" or ticket.startswith("hybrid-")

    def same_as_omp(self, ticket: str, sparsity: float, mask: Path | None) -> bool:
        return False

    def mask_for(self, ticket: str, sparsity: float, seed: int) -> Path | None:
        if ticket == "tamt":
            return self.tamt_path
        if ticket.startswith("hybrid-"):
            return self.hybrid(ticket.removeprefix("hybrid-"), sparsity)
        return super().mask_for(ticket, sparsity, seed)

    def hybrid(self, part: str, sparsity: float) -> Path:
        """TAMT's bits on ``part``, OMP's elsewhere; fingerprinted against the dense model."""
        from ticketlab.masks import load_mask
        from ticketlab.masks.fingerprint import fingerprint
        from ticketlab.masks.io import save_mask
        from ticketlab.masks.unstructured import UnstructuredMask
        from ticketlab.models import load_encoder

        path = self.work / "masks" / f"hybrid-{part}-step{self.where_args.budget}-{sparsity:.2f}.safetensors"
        if path.exists():
            return path
        omp, tamt = load_mask(self.baseline_mask("omp", sparsity, 0)), load_mask(self.tamt_path)
        chosen = PARTS[part]
        bits = {n: (tamt.tensors[n] if chosen(n) else omp.tensors[n]).clone() for n in omp.tensors}
        provenance = tamt.provenance
        provenance.method_params = {
            **provenance.method_params,
            "hybrid": {"tamt_on": part, "omp_elsewhere": True, "tamt_mask": str(self.tamt_path)},
        }
        mask = UnstructuredMask(bits, provenance, dict(omp.info))
        mask.provenance.fingerprint = fingerprint(mask, load_encoder(self.model))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_mask(mask, path)
        return path

    def plan(self) -> list[tuple[str, str, float, int]]:
        a = self.where_args
        tickets = [*a.references, *(f"hybrid-{p}" for p in a.parts)]
        return [(a.task, t, a.sparsity, int(s)) for s in a.seeds.split(",") for t in tickets]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_shared("bench_tamt_where.py", MODEL, GLUE, TAMT_TEXT, EVAL_TEXT)
    shared = shared_dir()
    quiet_run(args.threads)
    from ticketlab.masks import load_mask, read_header

    tamt_path = tamt_mask_path(Path(args.tamt_run).expanduser(), args.budget)
    params = read_header(tamt_path)["provenance"]["method_params"]
    # The items aggregate records TAMT's settings: those of the run whose mask is read, not defaults.
    optimizer = params.get("optimizer") or "adamw"  # masks from before --optimizer: AdamW
    optimizer = optimizer["name"] if isinstance(optimizer, dict) else optimizer
    tamt_settings = ["--tamt-lr", str(params["lr"]), "--tamt-optimizer", optimizer]
    tamt_settings += ["--tamt-batch-size", str(params["batch_size"])]
    tamt_settings += ["--tamt-max-length", str(params["max_length"])]
    budget_args = budgets_args(
        [
            "--work",
            args.work,
            "--results-name",
            f"{args.results_name}_items",
            "--sparsities",
            str(args.sparsity),
        ]
        + [
            "--tasks",
            args.task,
            "--seeds",
            args.seeds,
            "--budgets",
            str(args.budget),
            "--epochs",
            str(args.epochs),
        ]
        + (["--eval-every", str(args.eval_every)] if args.eval_every else [])
        + tamt_settings
    )
    bench = WhereBench(args, budget_args, shared)

    from transformers import AutoTokenizer

    from ticketlab.data.glue import load_glue_examples
    from ticketlab.data.text import read_text_lines

    tamt = load_mask(bench.tamt_path)
    omp = load_mask(bench.baseline_mask("omp", args.sparsity, 0))
    tokenizer = AutoTokenizer.from_pretrained(bench.model)
    examples = load_glue_examples(args.task, "train", shared / GLUE)
    task_lines = list(examples.text_a) + list(examples.text_b or [])
    found = where(
        omp,
        tamt,
        token_ids(tokenizer, read_text_lines(shared / TAMT_TEXT)),
        token_ids(tokenizer, task_lines),
        int(params.get("max_length", 128)),
    )
    kinds = [
        [k, f"{v['kept_by_omp']:,}", f"{100 * v['swapped_out']:.2f}%"] for k, v in found["by_kind"].items()
    ]
    print(markdown_table(kinds, ["matrices", "OMP's kept weights", "swapped out by TAMT"]))
    groups = [
        [
            g,
            f"{v['rows']:,}",
            f"{v['kept_by_omp']:,}",
            f"{100 * v['swapped_out']:.2f}%",
            f"{100 * v['swapped_in']:.2f}%",
        ]
        for g, v in found["rows"].items()
    ]
    print(markdown_table(groups, ["rows", "count", "OMP's kept weights", "swapped out", "swapped in"]))
    if not args.analysis_only:
        bench.run()
    items = bench.aggregate()
    write_results(
        args.results_name,
        {
            "settings": {k: v for k, v in vars(args).items() if k != "work"},
            "tamt_mask": str(bench.tamt_path).replace(str(Path.home()), "~"),
            "tamt_params": {
                k: params.get(k)
                for k in ("objective", "steps", "lr", "optimizer", "max_length", "batch_size")
            },
            "model": MODEL,
            "scope": SCOPE,
            "scheme": SCHEME,
            "where": {"by_kind": found["by_kind"], "rows": found["rows"]},
            "where_table": {"by_kind": kinds, "rows": groups},
            "finetunes": items["table"],
            "command": " ".join(["python", "benchmarks/bench_tamt_where.py", *sys.argv[1:]]).replace(
                str(Path.home()), "~"
            ),
        },
    )
    print(markdown_table(items["table"]["rows"], items["table"]["header"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
