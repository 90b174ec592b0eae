"""SQuAD v1.1 exact match / F1 on hand-worked cases."""

from __future__ import annotations

import pytest

from ticketlab.data.squad import SquadExample
from ticketlab.errors import TicketlabError
from ticketlab.training.squad_metrics import (
    compute_squad_metrics,
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_scores,
)


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Quick, Brown  Fox!", "quick brown fox"),
        ("an apple a day", "apple day"),
        ("the theatre", "theatre"),  # articles only as whole words
        ("Anthem of a nation", "anthem of nation"),
        ("U.S. state-of-the-art", "us stateoftheart"),  # punctuation deleted, not replaced by a space
        ("  tabs\tand\nnewlines ", "tabs and newlines"),
        ("The", ""),
        ("", ""),
    ],
)
def test_normalisation(text, normalised):
    assert normalize_answer(text) == normalised


def test_exact_match_ignores_case_articles_punctuation():
    assert exact_match_score("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0
    assert exact_match_score("state of the art", "state-of-the-art") == 0.0


def test_f1_partial_overlap_hand_worked():
    # prediction tokens: big red dog barked (4); gold: red dog (2); shared 2
    # precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert f1_score("The big red dog barked", "a red dog") == pytest.approx(2 / 3)
    # counts with multiplicity: shared min(3,1) = 1; precision 1/3, recall 1/2, F1 = 2/5
    assert f1_score("dog dog dog", "dog cat") == pytest.approx(0.4)
    # gold loses "the": 1 shared of 3 predicted and 4 gold; P 1/3, R 1/4, F1 = (2/12) / (7/12) = 2/7
    assert f1_score("paris in france", "the city of paris today") == pytest.approx(2 / 7)


def test_f1_edge_cases():
    assert f1_score("", "Denver Broncos") == 0.0
    assert f1_score("completely different", "Denver Broncos") == 0.0
    assert f1_score("Denver Broncos!", "the denver broncos") == 1.0
    # v1.1 quirk kept: both normalise to empty -> exact match but no shared token, F1 0
    assert exact_match_score("the", "a") == 1.0
    assert f1_score("the", "a") == 0.0


def _example(qid: str, *answers: str) -> SquadExample:
    context = " ".join(answers)
    starts = []
    for answer in answers:
        starts.append(context.index(answer))
    return SquadExample(qid, "T", context, "?", tuple(answers), tuple(starts))


def test_max_over_gold_answers_and_average_in_percent():
    examples = [
        _example("a", "Denver Broncos", "the Broncos"),  # prediction matches the second: EM 1, F1 1
        _example("b", "big red dog", "red"),  # "red dog": EM 0; F1 vs 1st = 0.8, vs 2nd = 2/3 -> 0.8
        _example("c", "Paris"),  # unanswered: 0 / 0
        _example("d", "Seven"),  # empty prediction: 0 / 0
    ]
    predictions = {"a": "Broncos", "b": "red dog", "d": "", "unknown-id": "ignored"}
    metrics = compute_squad_metrics(predictions, examples)
    assert set(metrics) == {"exact_match", "f1"}
    assert metrics["exact_match"] == pytest.approx(100 * 1 / 4)
    assert metrics["f1"] == pytest.approx(100 * (1 + 0.8) / 4)


def test_scores_reject_empty_inputs():
    with pytest.raises(TicketlabError):
        squad_scores({}, {})
    with pytest.raises(TicketlabError, match="no gold"):
        squad_scores({"a": "x"}, {"a": []})
