"""Evaluation metrics with the reference definitions (scikit-learn and scipy), under plain names.

``accuracy``, ``f1`` (binary, positive class 1), ``matthews`` (Matthews correlation, CoLA),
``pearson`` and ``spearman`` (STS-B). A correlation that is undefined (constant predictions) is
NaN, never a made-up number; :func:`json_safe` turns NaN into null for JSON files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ticketlab.errors import TicketlabError


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1(predictions: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews(predictions: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def _correlation(function: Callable, predictions: Sequence, labels: Sequence) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN: keep the NaN
        value = function(np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64))
    return float(value[0])


def pearson(predictions: Sequence, labels: Sequence) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, labels)


def spearman(predictions: Sequence, labels: Sequence) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, labels)


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(names: Iterable[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """``{name: value}`` for each metric name in ``names``."""
    if len(predictions) != len(labels):
        raise TicketlabError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise TicketlabError("cannot compute metrics on zero examples")
    results = {}
    for name in names:
        if name not in METRICS:
            raise TicketlabError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")
        results[name] = METRICS[name](predictions, labels)
    return results


def is_better(value: float | None, best: float | None, greater_is_better: bool = True) -> bool:
    """Whether ``value`` beats ``best``; NaN or None never beats anything, anything beats None/NaN."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if greater_is_better else value < best


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value
