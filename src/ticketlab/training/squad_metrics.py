"""SQuAD v1.1 exact match and F1, with the official answer normalisation.

An answer is normalised by: lower case, delete every ASCII punctuation character, delete the
articles a / an / the (whole words), and collapse runs of whitespace to single spaces (in that
order). Exact match: the normalised prediction equals a normalised gold answer. F1: the harmonic mean
of token precision and recall, tokens being the normalised answer split on whitespace and counted
with multiplicity (a bag of words); F1 is 0 when no token is shared. Each question scores its best
over its gold answers; the totals are means over all questions, in percent (0-100), as the official
script reports them. A question with no prediction scores 0 on both, as there.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from ticketlab.data.squad import SquadExample
from ticketlab.errors import TicketlabError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = "".join(character for character in text.lower() if character not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 when the two answers are equal after normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 (0-1) of two answers after normalisation."""
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    shared = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(prediction_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_gold(metric, prediction: str, golds: Iterable[str]) -> float:
    """A question's score: the best of ``metric(prediction, gold)`` over its gold answers."""
    return max(metric(prediction, gold) for gold in golds)


def squad_scores(
    predictions: Mapping[str, str], gold_answers: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent over all questions of ``gold_answers`` (id -> gold texts)."""
    if not gold_answers:
        raise TicketlabError("no SQuAD questions to score")
    exact_total = f1_total = 0.0
    for question_id, golds in gold_answers.items():
        if not golds:
            raise TicketlabError(f"question {question_id!r} has no gold answer")
        if question_id not in predictions:
            continue  # unanswered: 0 on both, like the official script
        prediction = predictions[question_id]
        exact_total += best_over_gold(exact_match_score, prediction, golds)
        f1_total += best_over_gold(f1_score, prediction, golds)
    return {
        "exact_match": 100.0 * exact_total / len(gold_answers),
        "f1": 100.0 * f1_total / len(gold_answers),
    }


def compute_squad_metrics(
    predictions: Mapping[str, str], examples: Sequence[SquadExample]
) -> dict[str, float]:
    """``{"exact_match", "f1"}`` (0-100) of a predictions dict against the questions' gold answers."""
    return squad_scores(predictions, {example.id: example.answer_texts for example in examples})
