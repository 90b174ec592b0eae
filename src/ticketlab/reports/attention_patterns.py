"""Files of the attention-pattern analysis: classified maps, class shares of kept and pruned heads
(Markdown, CSV, stacked bars), pattern changes between two models, and labelling sheets.

``classify`` output folder: ``predictions.csv`` (one row per map: id, layer, head, example,
class, and the probability of each class), ``heads.csv`` and ``heads.json`` (per head its
majority class, the share of inputs that voted for it, and the votes), ``examples.png`` (a few
maps per predicted class).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.analysis.attention_patterns import (
    HeadPattern,
    ShareRow,
    head_patterns,
    pattern_changes,
    pattern_grid,
    shares,
    ticket_pattern_shares,
    transition_counts,
)
from ticketlab.data.attention_maps import PATTERN_CLASSES, MapCollection, parse_map_id
from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write, read_json, write_json
from ticketlab.training.metrics import json_safe

HEADS_JSON = "heads.json"
HEADS_CSV = "heads.csv"
PREDICTIONS_CSV = "predictions.csv"
EXAMPLES_PNG = "examples.png"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _csv(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_classification(
    classifier: Any,
    collection: MapCollection,
    out: str | os.PathLike,
    *,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Classify every map of ``collection`` (ticketlab map ids) and write the folder ``out``;
    returns what ``heads.json`` holds."""
    from ticketlab.analysis.attention_plots import plot_example_maps

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probabilities = classifier.probabilities(collection.maps)
    predicted = [classifier.classes[i] for i in probabilities.argmax(axis=1)]
    rows = [["id", "layer", "head", "example", "class", *[f"p_{c}" for c in classifier.classes]]]
    for name, label, p in zip(collection.names, predicted, probabilities):
        parsed = parse_map_id(name)
        example, layer, head = parsed if parsed is not None else ("", "", "")
        rows.append([name, layer, head, example, label, *[f"{v:.4f}" for v in p]])
    _write_text(out / PREDICTIONS_CSV, _csv(rows))
    summary: dict[str, Any] = {
        **dict(info or {}),
        "classes": list(classifier.classes),
        "normalised": classifier.normalised,
        "num_maps": len(collection),
        "map_shares": shares(predicted, classifier.classes),
    }
    if all(parse_map_id(n) is not None for n in collection.names):
        patterns = head_patterns(dict(zip(collection.names, predicted)), classifier.classes)
        summary["heads"] = [
            {"layer": p.layer, "head": p.head, "class": p.pattern, "agreement": p.agreement, "votes": p.votes}
            for p in patterns.values()
        ]
        summary["head_shares"] = shares((p.pattern for p in patterns.values()), classifier.classes)
        head_rows = [["layer", "head", "class", "agreement"]] + [
            [p.layer, p.head, p.pattern, f"{p.agreement:.3f}"] for p in patterns.values()
        ]
        _write_text(out / HEADS_CSV, _csv(head_rows))
    # A few maps per predicted class, the most confident first, for judging the labels by eye.
    examples: dict[str, list[tuple[str, np.ndarray]]] = {}
    confidence = probabilities.max(axis=1)
    for index in np.argsort(-confidence, kind="stable"):
        label = predicted[index]
        if len(examples.setdefault(label, [])) < 4:
            examples[label].append((collection.names[index], collection.maps[index]))
    ordered = {c: examples[c] for c in classifier.classes if c in examples}
    summary["examples_plot"] = str(plot_example_maps(ordered, out / EXAMPLES_PNG))
    write_json(out / HEADS_JSON, json_safe(summary))
    return summary


def read_head_patterns(folder: str | os.PathLike) -> dict[tuple[int, int], HeadPattern]:
    """The per-head classes of a ``classify`` output folder."""
    path = Path(folder) / HEADS_JSON
    if not path.exists():
        raise TicketlabError(
            f"{folder} holds no {HEADS_JSON}: not the output of 'attention-patterns classify'"
        )
    data = read_json(path)
    if "heads" not in data:
        raise TicketlabError(f"{path} has no per-head classes (its maps were not named by layer and head)")
    return {
        (int(h["layer"]), int(h["head"])): HeadPattern(
            int(h["layer"]), int(h["head"]), h["class"], dict(h["votes"])
        )
        for h in data["heads"]
    }


def share_table_markdown(rows: Sequence[ShareRow], classes: Sequence[str] = PATTERN_CLASSES) -> str:
    """The class shares (mean ± std over seeds, in %) per ticket and group, as Markdown."""

    def cell(row: ShareRow, c: str) -> str:
        mean = row.mean[c]
        if math.isnan(mean):
            return "n/a"
        return f"{100 * mean:.1f}" + (f" ± {100 * row.std[c]:.1f}" if row.seeds > 1 else "")

    lines = [
        "| ticket | heads | seeds | " + " | ".join(classes) + " |",
        "|---|---|---|" + "---|" * len(classes),
    ]
    for row in rows:
        name = row.ticket if row.group == "all" else f"{row.ticket} ({row.group})"
        lines.append(
            f"| {name} | {row.heads:g} | {row.seeds} | " + " | ".join(cell(row, c) for c in classes) + " |"
        )
    return "\n".join(lines) + "\n"


def share_table_csv(rows: Sequence[ShareRow], classes: Sequence[str] = PATTERN_CLASSES) -> str:
    header = [
        "ticket",
        "group",
        "heads",
        "seeds",
        *[f"{c}_mean" for c in classes],
        *[f"{c}_std" for c in classes],
    ]
    body = [
        [r.ticket, r.group, r.heads, r.seeds, *[r.mean[c] for c in classes], *[r.std[c] for c in classes]]
        for r in rows
    ]
    return _csv([header, *body])


def write_pattern_analysis(
    classified: str | os.PathLike,
    tickets: Mapping[str, Sequence[str | os.PathLike]],
    out: str | os.PathLike,
    *,
    before: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Class shares of the heads each ticket keeps and prunes (``shares.md``, ``shares.csv``,
    ``shares.png``); with ``before`` (the classification of another model, e.g. the pre-trained
    one), the heads whose class changed (``changes.csv``, ``changes.md``). Returns a summary (also
    in ``analysis.json``)."""
    from ticketlab.analysis.attention_plots import plot_pattern_shares
    from ticketlab.masks import StructuredMask, load_mask

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    patterns = read_head_patterns(classified)
    grid = pattern_grid(patterns)
    head_masks: dict[str, list[np.ndarray]] = {}
    for name, paths in tickets.items():
        for path in paths:
            mask = load_mask(path)
            if not isinstance(mask, StructuredMask):
                raise TicketlabError(f"{path} (ticket {name}) is not a structured (head/FFN) mask")
            head_masks.setdefault(name, []).append(mask.heads.numpy())
    rows = ticket_pattern_shares(grid, head_masks)
    _write_text(out / "shares.md", share_table_markdown(rows))
    _write_text(out / "shares.csv", share_table_csv(rows))
    summary: dict[str, Any] = {
        "classified": str(classified),
        "tickets": {name: [str(p) for p in paths] for name, paths in tickets.items()},
        "rows": [
            {
                "ticket": r.ticket,
                "group": r.group,
                "heads": r.heads,
                "seeds": r.seeds,
                "mean": r.mean,
                "std": r.std,
            }
            for r in rows
        ],
        "plot": str(plot_pattern_shares(rows, out / "shares.png")),
    }
    if before is not None:
        earlier = read_head_patterns(before)
        changes = pattern_changes(earlier, patterns)
        counts = transition_counts(earlier, patterns)
        _write_text(
            out / "changes.csv",
            _csv(
                [
                    ["layer", "head", "before", "after"],
                    *[[c.layer, c.head, c.before, c.after] for c in changes],
                ]
            ),
        )
        lines = [
            f"{len(changes)} of {len(patterns)} heads changed class.",
            "",
            "| before \\ after | " + " | ".join(PATTERN_CLASSES) + " |",
        ]
        lines.append("|---|" + "---|" * len(PATTERN_CLASSES))
        for c, row in zip(PATTERN_CLASSES, counts):
            lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in row) + " |")
        _write_text(out / "changes.md", "\n".join(lines) + "\n")
        summary["before"] = str(before)
        summary["changed"] = [c.__dict__ for c in changes]
        summary["transitions"] = counts.tolist()
    write_json(out / "analysis.json", json_safe(summary))
    return summary
