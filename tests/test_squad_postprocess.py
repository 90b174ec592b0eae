"""Post-processing on hand-made logits with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ticketlab.data.squad import SquadExample
from ticketlab.data.squad_features import SquadEvalFeatures
from ticketlab.errors import TicketlabError
from ticketlab.training.squad_postprocess import best_span_in_window, postprocess_predictions

CONTEXT = "alpha beta gamma delta epsilon zeta"
WORD_OFFSETS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30), (31, 35)]
# one window: [CLS] q q [SEP] alpha ... zeta [SEP]  (tokens 4..9 are the context)
ONE_WINDOW = [None, None, None, None, *WORD_OFFSETS, None]


def _logits(length, high):
    """Zeros with the given {token: value} set: a start or end logit vector."""
    values = np.zeros(length)
    for token, value in high.items():
        values[token] = value
    return values


def test_picks_highest_start_plus_end():
    span = best_span_in_window(_logits(11, {5: 3, 7: 1}), _logits(11, {6: 2, 8: 5}), ONE_WINDOW)
    # candidates (5,6)=5, (5,8)=8, (7,8)=6, (7,6) invalid: best (5,8) = "beta gamma delta epsilon"
    assert (span.start, span.end, span.score) == (5, 8, 8.0)
    assert CONTEXT[span.start_char : span.end_char] == "beta gamma delta epsilon"


def test_spans_outside_the_context_are_rejected():
    # the best logits sit on question and special tokens; the answer must still come from the context
    starts = _logits(11, {0: 50, 1: 40, 6: 2})
    ends = _logits(11, {0: 50, 10: 45, 7: 1})
    span = best_span_in_window(starts, ends, ONE_WINDOW)
    assert (span.start, span.end) == (6, 7)


def test_end_before_start_is_rejected():
    span = best_span_in_window(_logits(11, {8: 10, 5: 1}), _logits(11, {6: 10, 9: 1}), ONE_WINDOW)
    # (8,6) would score 20 but ends before it starts; (8,9) and (5,6) both score 11: the tie goes to
    # the higher-ranked start, 8
    assert (span.start, span.end) == (8, 9)


def test_max_answer_length_is_respected():
    starts, ends = _logits(11, {4: 10, 8: 1}), _logits(11, {9: 10, 8: 2})
    span = best_span_in_window(starts, ends, ONE_WINDOW)
    assert (span.start, span.end) == (4, 9)
    span = best_span_in_window(starts, ends, ONE_WINDOW, max_answer_length=5)
    assert (span.start, span.end) == (4, 8)  # 6 tokens is too long; (4,8) is 5 tokens, score 12
    span = best_span_in_window(starts, ends, ONE_WINDOW, max_answer_length=1)
    assert (span.start, span.end) == (4, 4)  # 10 + 0 beats (8, 8) = 1 + 2


def test_only_n_best_candidates_are_considered():
    starts = _logits(11, {0: 9, 6: 8, 7: 1})
    ends = _logits(11, {0: 9, 7: 8})
    span = best_span_in_window(starts, ends, ONE_WINDOW)
    assert (span.start, span.end) == (6, 7)
    # with one candidate each, only (0, 0) is looked at, and it is outside the context
    assert best_span_in_window(starts, ends, ONE_WINDOW, n_best=1) is None


def test_padded_logits_are_cut_to_the_window_and_short_ones_fail():
    starts = np.concatenate([_logits(11, {6: 1}), [100.0, 100.0]])  # padding positions score high
    ends = np.concatenate([_logits(11, {6: 1}), [100.0, 100.0]])
    span = best_span_in_window(starts, ends, ONE_WINDOW)
    assert (span.start, span.end) == (6, 6)
    with pytest.raises(TicketlabError, match="logits cover 5 tokens but the window has 11"):
        best_span_in_window(np.zeros(5), np.zeros(5), ONE_WINDOW)


def _two_windows():
    """Context split into two overlapping windows: words 0-3 and words 2-5 (stride 2)."""
    first = [None, None, None, *WORD_OFFSETS[0:4], None]  # tokens 3..6 are words 0..3
    second = [None, None, None, *WORD_OFFSETS[2:6], None]  # tokens 3..6 are words 2..5
    return SquadEvalFeatures(inputs=None, example_ids=["q", "q"], offsets=[first, second])


def test_answer_across_the_window_boundary_comes_from_the_better_window():
    example = SquadExample("q", "T", CONTEXT, "?", ("delta epsilon",), (17,))
    features = _two_windows()
    # window 1 holds only "delta" (token 6); its best span is "delta" with score 4 + 1
    # window 2 holds "delta epsilon" (tokens 4, 5) with score 4 + 6: it wins
    start_logits = [_logits(8, {6: 4}), _logits(8, {4: 4})]
    end_logits = [_logits(8, {6: 1}), _logits(8, {5: 6})]
    assert postprocess_predictions([example], features, start_logits, end_logits) == {"q": "delta epsilon"}
    # the same when the logits come as one padded 2-D array
    assert postprocess_predictions([example], features, np.stack(start_logits), np.stack(end_logits)) == {
        "q": "delta epsilon"
    }
    # and the first window wins when it scores higher
    end_logits[0] = _logits(8, {6: 9})
    assert postprocess_predictions([example], features, start_logits, end_logits) == {"q": "delta"}


def test_question_without_valid_span_gets_empty_answer_and_counts_must_match():
    example = SquadExample("q", "T", CONTEXT, "?", ("delta",), (17,))
    features = _two_windows()
    nothing = [_logits(8, {0: 9}), _logits(8, {0: 9})]
    assert postprocess_predictions([example], features, nothing, nothing, n_best=1) == {"q": ""}
    with pytest.raises(TicketlabError, match="logits for 1 / 1 windows but there are 2"):
        postprocess_predictions([example], features, nothing[:1], nothing[:1])


def _brute_force_best(start_logits, end_logits, offsets, n_best, max_answer_length):
    """Every pair of top-n tokens, checked one by one: an independent reference for the vectorised code."""
    length = len(offsets)
    ranked_starts = sorted(range(length), key=lambda token: (-start_logits[token], token))[:n_best]
    ranked_ends = sorted(range(length), key=lambda token: (-end_logits[token], token))[:n_best]
    best = None
    for start in ranked_starts:
        for end in ranked_ends:
            if (
                offsets[start] is None
                or offsets[end] is None
                or end < start
                or end - start + 1 > max_answer_length
            ):
                continue
            score = start_logits[start] + end_logits[end]
            if best is None or score > best[0]:
                best = (score, start, end)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_matches_a_brute_force_search_on_random_windows(seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(8, 60))
    question = int(rng.integers(2, min(10, length - 3)))
    offsets = [None] * question + [(i, i + 1) for i in range(length - question - 1)] + [None]
    # rounded logits make ties common, so the tie rule is exercised too
    starts, ends = np.round(rng.normal(size=length), 1), np.round(rng.normal(size=length), 1)
    n_best, max_answer_length = int(rng.integers(1, 25)), int(rng.integers(1, 12))
    span = best_span_in_window(starts, ends, offsets, n_best, max_answer_length)
    reference = _brute_force_best(starts, ends, offsets, n_best, max_answer_length)
    if reference is None:
        assert span is None
    else:
        assert (span.score, span.start, span.end) == pytest.approx(reference)
