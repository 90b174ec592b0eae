"""Tables, plots and reports of all-tickets-winning runs: the full model against the good, random
and bad subnetworks (retrained, and before retraining), the pruning curves, and the survival and
stability of the tickets across seeds and tasks.

Inputs are plain data (the per-seed summaries a run writes into its ``results.json``) and masks,
so a report can be rebuilt from finished run directories without any model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.analysis.stability import plot_survival, structured_stability
from ticketlab.errors import TicketlabError
from ticketlab.masks.structured import StructuredMask
from ticketlab.masks.unstructured import UnstructuredMask

ROWS: tuple[str, ...] = ("full", "good", "random", "bad")
COLOURS = {"full": "0.45", "good": "tab:green", "random": "tab:blue", "bad": "tab:red"}


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, 0 for one value); NaN when a value is NaN."""
    if not values:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def subnetwork_table(seeds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per subnetwork (full, good, random, bad) over the seeds.

    ``retrained``: best dev metric after fine-tuning from the pre-trained weights (the full row: the
    fine-tuned full model); ``pruned``: the dev metric of the fine-tuned full model with the mask
    applied and no retraining (the full row: the stopping rule's reference).
    """
    rows = []
    for name in ROWS:
        retrained, pruned, remaining, heads, ffn = [], [], [], [], []
        for seed in seeds:
            if name == "full":
                retrained.append(_number(seed["full"]["best"]))
                pruned.append(_number(seed["pruning"]["reference"]))
                remaining.append(1.0)
                continue
            record = seed["subnetworks"].get(name)
            if record is None:
                continue
            pruned.append(_number(record.get("pruned_metric")))
            if "retrained" in record:
                retrained.append(_number(record["retrained"]["best"]))
            remaining.append(_number(record.get("weights_remaining")))
            if "heads_kept" in record:
                heads.append(record["heads_kept"])
                ffn.append(record["ffn_kept"])
        if not pruned:
            continue
        mean, std = _mean_std(retrained)
        pruned_mean, pruned_std = _mean_std(pruned)
        row = {
            "subnetwork": name,
            "n": len(retrained),
            "mean": mean,
            "std": std,
            "values": retrained,
            "pruned_mean": pruned_mean,
            "pruned_std": pruned_std,
            "pruned_values": pruned,
            "weights_remaining": float(np.mean(remaining)),
        }
        if heads:
            row["heads_kept"] = float(np.mean(heads))
            row["ffn_kept"] = float(np.mean(ffn))
        rows.append(row)
    return rows


def ticket_stability(
    tickets: Sequence[StructuredMask | UnstructuredMask], names: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """Survival and agreement of the tickets of several seeds (or tasks): for structured tickets,
    per heads and FFNs (Cochran's Q, Fleiss' kappa, Krippendorff's alpha, super-survivors); for
    unstructured ones, the pairwise Jaccard of kept weights against chance. None for one ticket."""
    if len(tickets) < 2:
        return None
    if all(isinstance(t, StructuredMask) for t in tickets):
        return {kind: result.to_dict() for kind, result in structured_stability(tickets).items()}
    if all(isinstance(t, UnstructuredMask) for t in tickets):
        from ticketlab.analysis.overlap import pairwise_overlap

        names = list(names) if names is not None else [str(i) for i in range(len(tickets))]
        pairs = pairwise_overlap(dict(zip(names, tickets)))
        return {"pairwise_overlap": [p.to_dict() for p in pairs]}
    raise TicketlabError("the tickets mix structured and unstructured masks")


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[Any]]:
    """A finished all-winning run's ``results.json`` and its tickets (one per seed)."""
    from ticketlab.io import read_json
    from ticketlab.masks.io import load_mask

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise TicketlabError(f"{run_dir} holds no results.json: not a finished all-winning run")
    results = read_json(path)
    if results.get("kind") != "all-winning":
        raise TicketlabError(f"{run_dir} is not an all-winning run (kind {results.get('kind')!r})")
    return results, [load_mask(Path(run_dir) / ticket) for ticket in results["tickets"]]


def summarize_run(results: Mapping[str, Any], tickets: Sequence[Any]) -> dict[str, Any]:
    """The run's report data: its facts, the comparison table and the tickets' stability."""
    return {
        **{k: results[k] for k in ("task", "model", "method", "metric", "seeds")},
        "table": subnetwork_table(results["seeds"]),
        "stability": ticket_stability(tickets, [f"seed {s['seed']}" for s in results["seeds"]]),
    }


def report_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write a finished run's report (default ``RUN_DIR/report/``); returns the report data with
    its ``files``."""
    results, tickets = load_run(run_dir)
    summary = summarize_run(results, tickets)
    summary["files"] = write_run_report(summary, tickets, out_dir or Path(run_dir) / "report")
    return summary


# -- plots ---------------------------------------------------------------------------------------
def plot_subnetworks(groups: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike) -> Path:
    """Bars (mean over seeds) and dots (each seed) of the retrained full, good, random and bad
    subnetworks, one group per run (task, method); open diamonds: before retraining."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ticketlab.analysis.plots import _save

    width = 0.2
    figure, axis = plt.subplots(figsize=(3.0 + 2.4 * len(groups), 4.2), dpi=120)
    rng = np.random.default_rng(0)  # jitter of the dots only
    labelled: set[str] = set()
    for position, rows in enumerate(groups.values()):
        for row in (r for r in rows if r["subnetwork"] in ROWS):
            name = row["subnetwork"]
            x = position + (ROWS.index(name) - 1.5) * width
            label = name if name not in labelled else None
            labelled.add(name)
            if row["n"]:
                axis.bar(
                    x,
                    row["mean"],
                    width * 0.9,
                    yerr=row["std"],
                    color=COLOURS[name],
                    alpha=0.6,
                    capsize=3,
                    label=label,
                )
                jitter = rng.uniform(-width * 0.25, width * 0.25, len(row["values"]))
                axis.scatter(x + jitter, row["values"], s=12, color="black", zorder=3)
            if not math.isnan(row["pruned_mean"]):
                axis.scatter(
                    x,
                    row["pruned_mean"],
                    marker="D",
                    s=30,
                    facecolors="none",
                    edgecolors=COLOURS[name],
                    zorder=4,
                    label="before retraining" if "before" not in labelled else None,
                )
                labelled.add("before")
    axis.set_xticks(range(len(groups)), list(groups), fontsize=8)
    axis.set_ylabel("dev metric (best; dots: seeds)")
    axis.set_title("full model and same-size subnetworks", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def plot_pruning_curves(seeds: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Dev metric of the pruned fine-tuned model at each step, one line per seed, with its
    threshold (dashed) and the ticket (star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ticketlab.analysis.plots import _save

    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for index, seed in enumerate(seeds):
        trace = seed["pruning"]
        colour = f"C{index % 10}"
        steps = [s["step"] for s in trace["steps"]]
        values = [_number(s["metric"]) for s in trace["steps"]]
        axis.plot(steps, values, marker="o", color=colour, label=f"seed {seed['seed']}")
        axis.axhline(trace["threshold"], color=colour, ls="--", lw=0.8)
        ticket = trace["ticket_step"]
        axis.scatter([steps[ticket]], [values[ticket]], marker="*", s=160, color=colour, zorder=4)
    axis.set_xlabel("pruning step (no retraining)")
    axis.set_ylabel(f"dev {seeds[0]['metric'] if seeds else 'metric'}")
    axis.set_title(title or "iterative pruning: dev metric per step (star: ticket; dashed: 0.9 x full)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


# -- Markdown ------------------------------------------------------------------------------------
def _fmt(value: float, std: float | None = None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if std is None else f"{value:.4f} ± {std:.4f}"


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header = (
        "| subnetwork | size (mean over seeds) | retrained (best, mean ± std) | n | before retraining |\n"
        "|---|---|---|---|---|"
    )
    lines = [header]
    for row in rows:
        if "heads_kept" in row:
            size = f"{row['heads_kept']:.1f} heads, {row['ffn_kept']:.1f} FFNs"
        else:
            size = f"{100 * row['weights_remaining']:.1f}% of weights"
        if row["subnetwork"] == "full":
            size = "all"
        lines.append(
            f"| {row['subnetwork']} | {size} | {_fmt(row['mean'], row['std'])} | {row['n']} | "
            f"{_fmt(row['pruned_mean'], row['pruned_std'])} |"
        )
    return "\n".join(lines)


def stability_markdown(stability: Mapping[str, Any] | None) -> str:
    if not stability:
        return "One ticket only: no stability across seeds."
    if "pairwise_overlap" in stability:
        lines = ["| pair | Jaccard | chance | ratio |", "|---|---|---|---|"]
        for pair in stability["pairwise_overlap"]:
            lines.append(
                f"| {pair['a']} / {pair['b']} | {pair['jaccard']:.4f} | {pair['jaccard_random']:.4f} | "
                f"{pair['ratio_to_random']:.3f} |"
            )
        return "\n".join(lines)
    lines = [
        "| units | count | kept by all (super-survivors) | pruned by all | Cochran's Q (p) | Fleiss' kappa | Krippendorff's alpha |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("heads", "ffn"):
        d = stability[kind]
        lines.append(
            f"| {kind} | {d['units']} | {d['kept_by_all']} | {d['pruned_by_all']} | "
            f"{d['cochran_q']:.3f} ({d['cochran_p']:.3g}) | {_fmt(_number(d['fleiss_kappa']))} | "
            f"{_fmt(_number(d['krippendorff_alpha']))} |"
        )
    survivors = np.argwhere(np.asarray(stability["heads"]["super_survivors"], dtype=bool))
    listed = ", ".join(f"L{layer}H{head}" for layer, head in survivors.tolist()) or "none"
    ffn = np.flatnonzero(np.asarray(stability["ffn"]["super_survivors"], dtype=bool)).tolist()
    lines.append("")
    lines.append(f"Super-survivor heads (layer, head): {listed}. Super-survivor FFN layers: {ffn or 'none'}.")
    return "\n".join(lines)


def _seed_lines(seeds: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| seed | full (reference) | ticket step | stop | ticket size | ticket dev (pruned) |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        trace, ticket = seed["pruning"], seed["ticket"]
        if "heads_kept" in ticket:
            size = f"{ticket['heads_kept']}/{ticket['heads_total']} heads, {ticket['ffn_kept']}/{ticket['ffn_total']} FFNs"
        else:
            size = f"{100 * ticket['weights_remaining']:.1f}% of weights"
        lines.append(
            f"| {seed['seed']} | {_fmt(_number(trace['reference']))} | {trace['ticket_step']} | "
            f"{trace['stop_reason']} | {size} | {_fmt(_number(ticket['metric']))} |"
        )
    return "\n".join(lines)


def write_run_report(
    summary: Mapping[str, Any], tickets: Sequence[Any], out_dir: str | os.PathLike
) -> dict[str, str]:
    """``report.md``, ``report.json``, ``subnetworks.png``, ``pruning.png`` and (structured tickets
    of two or more seeds) ``survival.png`` under ``out_dir``; returns their paths."""
    from ticketlab.io import atomic_write, write_json
    from ticketlab.training.metrics import json_safe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label = f"{summary['task']} ({summary['method']})"
    files = {
        "subnetworks": str(plot_subnetworks({label: summary["table"]}, out / "subnetworks.png")),
        "pruning": str(plot_pruning_curves(summary["seeds"], out / "pruning.png", title=f"{label}: pruning")),
    }
    stability = summary.get("stability")
    if stability and "heads" in stability:
        results = structured_stability(tickets)
        files["survival"] = str(
            plot_survival(results, out / "survival.png", title=f"{label}: ticket survival")
        )
    text = [
        f"# All tickets winning: {label}",
        "",
        f"Model `{summary['model']}`, metric `{summary['metric']}`, {len(summary['seeds'])} seed(s). "
        "Subnetworks are retrained from the pre-trained weights with a fresh task head; "
        "'before retraining' applies each mask to the fine-tuned full model.",
        "",
        "## Full model and subnetworks",
        "",
        table_markdown(summary["table"]),
        "",
        "![subnetworks](subnetworks.png)",
        "",
        "## Iterative pruning (no retraining), per seed",
        "",
        _seed_lines(summary["seeds"]),
        "",
        "![pruning](pruning.png)",
        "",
        "## Stability of the tickets across seeds",
        "",
        stability_markdown(stability),
    ]
    if "survival" in files:
        text += ["", "![survival](survival.png)"]
    report = "\n".join(text) + "\n"

    def write(tmp: str) -> None:
        Path(tmp).write_text(report, encoding="utf-8")

    atomic_write(out / "report.md", write)
    files["markdown"] = str(out / "report.md")
    files["json"] = str(out / "report.json")
    write_json(
        out / "report.json",
        json_safe({k: summary[k] for k in ("task", "model", "method", "metric", "table", "stability")}),
    )
    return files


# -- several runs (tasks, methods) ---------------------------------------------------------------
def write_combined_report(
    runs: Sequence[tuple[Mapping[str, Any], Sequence[Any]]], out_dir: str | os.PathLike
) -> dict[str, Any]:
    """A report over several finished runs (``(results.json contents, tickets)`` each): one
    comparison plot, the table of every run, survival heat-maps and stability per run and over all
    structured tickets of the same shape (every task and seed a rater; super-survivors are kept by
    all). Returns the report's JSON data (also written to ``report.json``)."""
    from ticketlab.io import atomic_write, write_json
    from ticketlab.training.metrics import json_safe

    if not runs:
        raise TicketlabError("no runs to report on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups, labels = {}, []
    for summary, _ in runs:
        label = f"{summary['task']} ({summary['method']})"
        while label in groups:
            label += "'"
        groups[label] = summary["table"]
        labels.append(label)
    files = {"subnetworks": str(plot_subnetworks(groups, out / "subnetworks.png"))}
    text = ["# All tickets winning: several runs", ""]
    data: dict[str, Any] = {"runs": [], "across_runs": None}
    structured: list[StructuredMask] = []
    for label, (summary, tickets) in zip(labels, runs):
        text += [
            f"## {label}",
            "",
            table_markdown(summary["table"]),
            "",
            stability_markdown(summary.get("stability")),
            "",
        ]
        data["runs"].append(
            {
                "label": label,
                **{k: summary.get(k) for k in ("task", "model", "method", "metric", "table", "stability")},
            }
        )
        if tickets and all(isinstance(t, StructuredMask) for t in tickets):
            structured += list(tickets)
            if len(tickets) >= 2:
                name = "survival_" + "".join(c if c.isalnum() else "_" for c in label).strip("_") + ".png"
                files[name] = str(
                    plot_survival(structured_stability(tickets), out / name, title=f"{label}: survival")
                )
                text += [f"![survival]({name})", ""]
    shapes = {(tuple(t.heads.shape), tuple(t.ffn.shape)) for t in structured}
    if len(structured) >= 2 and len(shapes) == 1:
        across = structured_stability(structured)
        data["across_runs"] = {kind: result.to_dict() for kind, result in across.items()}
        files["survival_all"] = str(
            plot_survival(across, out / "survival_all.png", title=f"survival over {len(structured)} tickets")
        )
        text += [
            "## Every structured ticket (all tasks and seeds)",
            "",
            stability_markdown(data["across_runs"]),
            "",
            "![survival](survival_all.png)",
            "",
        ]
    text.insert(2, "![subnetworks](subnetworks.png)\n")
    report = "\n".join(text)

    def write(tmp: str) -> None:
        Path(tmp).write_text(report, encoding="utf-8")

    atomic_write(out / "report.md", write)
    files["markdown"] = str(out / "report.md")
    files["json"] = str(out / "report.json")
    data["files"] = files
    write_json(out / "report.json", json_safe(data))
    return json_safe(data)
