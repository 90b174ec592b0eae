"""Metrics equal the reference implementations (scikit-learn, scipy) and hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ticketlab.errors import TicketlabError
from ticketlab.training.glue_task import GlueTask
from ticketlab.training.metrics import compute_metrics, is_better, json_safe
from ticketlab.training.tasks import SplitPredictions, get_task


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    got = compute_metrics(["accuracy", "f1", "matthews"], predictions, labels)
    assert got["accuracy"] == accuracy_score(labels, predictions)
    assert got["f1"] == f1_score(labels, predictions)
    assert got["matthews"] == matthews_corrcoef(labels, predictions)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 5, 100)
    predictions = labels + rng.normal(0, 1, 100)
    got = compute_metrics(["pearson", "spearman"], predictions, labels)
    assert got["pearson"] == pytest.approx(pearsonr(predictions, labels)[0], abs=1e-12)
    assert got["spearman"] == pytest.approx(spearmanr(predictions, labels)[0], abs=1e-12)


def test_hand_worked_values():
    # tp=1, fp=1, tn=2, fn=0: accuracy 3/4, F1 = 2/(2+1) = 2/3, MCC = (1*2 - 1*0) / sqrt(2*1*3*2) = 2/sqrt(12)
    predictions, labels = [1, 1, 0, 0], [1, 0, 0, 0]
    got = compute_metrics(["accuracy", "f1", "matthews"], predictions, labels)
    assert got == pytest.approx({"accuracy": 0.75, "f1": 2 / 3, "matthews": 2 / math.sqrt(12)})
    assert compute_metrics(["pearson"], [1.0, 2.0, 3.0], [2.0, 4.0, 6.0])["pearson"] == pytest.approx(1.0)


def test_undefined_correlation_is_nan_and_json_null():
    value = compute_metrics(["pearson"], [1.0, 1.0, 1.0], [0.0, 1.0, 2.0])["pearson"]
    assert math.isnan(value)
    assert json_safe({"pearson": value, "xs": [1.0, float("inf")]}) == {"pearson": None, "xs": [1.0, None]}
    assert not is_better(value, 0.1) and is_better(0.1, value) and is_better(0.2, None)
    assert is_better(0.1, 0.2, greater_is_better=False)


def test_bad_metric_requests():
    with pytest.raises(TicketlabError, match="unknown metric 'bleu'"):
        compute_metrics(["bleu"], [1], [1])
    with pytest.raises(TicketlabError, match="2 predictions for 3 labels"):
        compute_metrics(["accuracy"], [1, 0], [1, 0, 1])


def _split(name, predictions, labels):
    return SplitPredictions(name, list(range(len(labels))), np.asarray(predictions), np.asarray(labels))


def test_task_metric_keys():
    mnli = get_task("MNLI")
    got = mnli.metrics(
        {
            "dev_matched": _split("dev_matched", [0, 1, 2, 2], [0, 1, 2, 0]),
            "dev_mismatched": _split("dev_mismatched", [0, 0], [0, 1]),
        }
    )
    assert got == {"accuracy_matched": 0.75, "accuracy_mismatched": 0.5}
    assert set(get_task("cola").metrics({"dev": _split("dev", [0, 1], [0, 1])})) == {"matthews", "accuracy"}
    assert set(get_task("MRPC").metrics({"dev": _split("dev", [0, 1], [0, 1])})) == {"accuracy", "f1"}
    assert set(get_task("qqp").metrics({"dev": _split("dev", [0, 1], [0, 1])})) == {"accuracy", "f1"}
    stsb = get_task("STS-B").metrics({"dev": _split("dev", [0.5, 2.0, 1.0], [1.0, 3.0, 2.5])})
    assert set(stsb) == {"pearson", "spearman"}
    assert isinstance(get_task("wnli"), GlueTask)
    with pytest.raises(TicketlabError, match="unknown task 'imdb'"):
        get_task("imdb")
