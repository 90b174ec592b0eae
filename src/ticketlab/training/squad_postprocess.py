"""From a QA model's start/end logits over all windows of each question to its answer text.

For every window, the ``n_best`` highest start logits and the ``n_best`` highest end logits give
``n_best**2`` candidate spans (BERT's protocol: candidates are picked among all tokens, then
filtered). A span is kept when both ends are context tokens of that window, the end is not before
the start, and it is at most ``max_answer_length`` tokens long. The question's answer is the kept span
with the highest ``start_logit + end_logit`` over all its windows, cut from the original context by
the tokens' character offsets (so the text is exactly the context's, spaces and case included).
A question with no valid span at all gets the empty answer. Ties go to the earlier window, then to the
higher-ranked start, then end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ticketlab.data.squad import SquadExample
from ticketlab.data.squad_features import Offset, SquadEvalFeatures
from ticketlab.errors import TicketlabError

N_BEST = 20
MAX_ANSWER_LENGTH = 30


@dataclass(frozen=True)
class SpanCandidate:
    """The best span of one window: token indices (inclusive), score and character range."""

    start: int
    end: int
    score: float
    start_char: int
    end_char: int


def best_span_in_window(
    start_logits: Any,
    end_logits: Any,
    offsets: Sequence[Offset | None],
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> SpanCandidate | None:
    """The highest-scoring valid span of one window, or None when no candidate is valid.

    ``start_logits`` / ``end_logits`` may be longer than ``offsets`` (a padded batch): only the
    window's own tokens are considered.
    """
    length = len(offsets)
    starts_all = np.asarray(start_logits, dtype=np.float64).reshape(-1)
    ends_all = np.asarray(end_logits, dtype=np.float64).reshape(-1)
    if starts_all.shape[0] < length or ends_all.shape[0] < length:
        raise TicketlabError(
            f"logits cover {min(starts_all.shape[0], ends_all.shape[0])} tokens but the window has {length}"
        )
    starts_all, ends_all = starts_all[:length], ends_all[:length]
    in_context = np.array([offset is not None for offset in offsets], dtype=bool)
    # stable sort: among equal logits the earlier token ranks first, so results are deterministic
    start_candidates = np.argsort(-starts_all, kind="stable")[:n_best]
    end_candidates = np.argsort(-ends_all, kind="stable")[:n_best]
    starts, ends = np.meshgrid(start_candidates, end_candidates, indexing="ij")
    valid = (
        in_context[starts] & in_context[ends] & (ends >= starts) & (ends - starts + 1 <= max_answer_length)
    )
    if not valid.any():
        return None
    scores = np.where(valid, starts_all[starts] + ends_all[ends], -np.inf)
    row, column = np.unravel_index(int(np.argmax(scores)), scores.shape)
    start, end = int(starts[row, column]), int(ends[row, column])
    return SpanCandidate(start, end, float(scores[row, column]), offsets[start][0], offsets[end][1])


def postprocess_predictions(
    examples: Sequence[SquadExample],
    features: SquadEvalFeatures,
    start_logits: Sequence[Any],
    end_logits: Sequence[Any],
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, str]:
    """The official predictions dict ``{question_id: answer_text}`` for every question in ``examples``.

    ``start_logits[i]`` / ``end_logits[i]`` are the logits of window ``i`` of ``features`` (a 1-D array
    per window, or rows of a padded 2-D array).
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise TicketlabError(
            f"got logits for {len(start_logits)} / {len(end_logits)} windows but there are {len(features)}"
        )
    windows_of: dict[str, list[int]] = defaultdict(list)
    for window, example_id in enumerate(features.example_ids):
        windows_of[example_id].append(window)
    predictions: dict[str, str] = {}
    for example in examples:
        best: SpanCandidate | None = None
        for window in windows_of.get(example.id, []):
            candidate = best_span_in_window(
                start_logits[window], end_logits[window], features.offsets[window], n_best, max_answer_length
            )
            if candidate is not None and (best is None or candidate.score > best.score):
                best = candidate
        predictions[example.id] = example.context[best.start_char : best.end_char] if best else ""
    return predictions
