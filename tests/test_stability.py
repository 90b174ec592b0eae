import itertools
import math

import numpy as np
import pytest
import torch

from ticketlab.analysis.stability import (
    cochran_q,
    fleiss_kappa,
    fleiss_kappa_from_counts,
    krippendorff_alpha_nominal,
    plot_survival,
    structured_stability,
)
from ticketlab.errors import TicketlabError
from ticketlab.masks import StructuredMask

# Fleiss (1971)-style table as worked in the standard references: 10 subjects, 14 raters,
# 5 categories; P-bar = 0.378, P_e = 0.213, kappa = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff's worked example (4 observers, 12 units, missing values); nominal alpha = 0.743.
NAN = float("nan")
KRIPPENDORFF_TABLE = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
).T


def test_fleiss_kappa_on_the_textbook_table():
    assert round(fleiss_kappa_from_counts(FLEISS_TABLE), 3) == 0.210


def test_krippendorff_alpha_on_the_textbook_example():
    assert round(krippendorff_alpha_nominal(KRIPPENDORFF_TABLE), 3) == 0.743


def test_cochran_q_by_hand():
    # k = 3, column totals (4, 4, 1), N = 9, row totals (2, 1, 3, 1, 2):
    # Q = 2 (3 * 33 - 81) / (27 - 19) = 4.5; chi2 with 2 df: p = exp(-4.5 / 2).
    result = cochran_q([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0], [1, 1, 0]])
    assert result.statistic == pytest.approx(4.5) and result.df == 2
    assert result.p_value == pytest.approx(math.exp(-2.25))


def test_cochran_q_with_two_raters_is_mcnemar():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 2, size=(40, 2))
    b = int(((table[:, 0] == 1) & (table[:, 1] == 0)).sum())
    c = int(((table[:, 0] == 0) & (table[:, 1] == 1)).sum())
    assert cochran_q(table).statistic == pytest.approx((b - c) ** 2 / (b + c))


def _alpha_by_pairwise_disagreement(table):
    """Krippendorff's alpha the long way: pairwise disagreements within units vs. over all values."""
    units = [[v for v in row if not math.isnan(v)] for row in table]
    units = [u for u in units if len(u) >= 2]
    pooled = [v for u in units for v in u]
    n = len(pooled)
    within = sum(sum(a != b for a, b in itertools.permutations(u, 2)) / (len(u) - 1) for u in units)
    across = sum(a != b for a, b in itertools.permutations(pooled, 2))
    return 1.0 - (within / n) / (across / (n * (n - 1)))


def _kappa_by_rater_pairs(table):
    """Fleiss' kappa from ordered rater pairs agreeing within each unit (a loop, not counts)."""
    table = np.asarray(table)
    n_units, n_raters = table.shape
    agree = np.mean(
        [np.mean([row[i] == row[j] for i, j in itertools.permutations(range(n_raters), 2)]) for row in table]
    )
    shares = [np.mean(table == value) for value in np.unique(table)]
    chance = sum(s * s for s in shares)
    return (agree - chance) / (1 - chance)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_match_brute_force_reimplementations(seed):
    rng = np.random.default_rng(seed)
    base = rng.random(30) < 0.6
    table = np.stack([base ^ (rng.random(30) < 0.2) for _ in range(4)], axis=1).astype(float)
    assert fleiss_kappa(table) == pytest.approx(_kappa_by_rater_pairs(table))
    assert krippendorff_alpha_nominal(table) == pytest.approx(_alpha_by_pairwise_disagreement(table))
    with_missing = KRIPPENDORFF_TABLE.copy()
    with_missing[rng.integers(0, 12), rng.integers(0, 4)] = NAN
    assert krippendorff_alpha_nominal(with_missing) == pytest.approx(
        _alpha_by_pairwise_disagreement(with_missing)
    )


def test_degenerate_tables_and_bad_input():
    same = np.ones((5, 3))
    assert cochran_q(same).p_value == 1.0
    assert math.isnan(fleiss_kappa(same)) and math.isnan(krippendorff_alpha_nominal(same))
    with pytest.raises(TicketlabError, match="binary"):
        cochran_q([[0, 2], [1, 1]])
    with pytest.raises(TicketlabError, match="at least 2 raters"):
        fleiss_kappa([[1], [0]])


def _masks():
    heads = [
        [[1, 1, 0, 1], [1, 0, 0, 1]],
        [[1, 1, 0, 0], [1, 0, 1, 1]],
        [[1, 1, 1, 0], [1, 0, 0, 1]],
    ]
    ffn = [[1, 0], [1, 0], [0, 1]]
    return [
        StructuredMask(torch.tensor(h, dtype=torch.bool), torch.tensor(f, dtype=torch.bool))
        for h, f in zip(heads, ffn)
    ]


def test_structured_stability_survival_and_super_survivors(tmp_path):
    results = structured_stability(_masks())
    heads = results["heads"]
    np.testing.assert_allclose(heads.survival, [[1, 1, 1 / 3, 1 / 3], [1, 0, 1 / 3, 1]])
    assert heads.super_survivors.tolist() == [[True, True, False, False], [True, False, False, True]]
    # Each seed keeps 5 of 8 heads: identical rates, so Cochran's Q is 0 by construction.
    assert heads.cochran.statistic == 0.0 and heads.cochran.p_value == 1.0
    assert heads.fleiss_kappa == pytest.approx(
        _kappa_by_rater_pairs(
            np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
        )
    )
    data = heads.to_dict()
    assert data["kept_by_all"] == 4 and data["pruned_by_all"] == 1 and data["raters"] == 3
    path = plot_survival(results, tmp_path / "survival.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TicketlabError, match="at least two"):
        structured_stability(_masks()[:1])


def test_phase_transition_summary_super_ticket_and_plot(tmp_path):
    from ticketlab.analysis.phase_transition import (
        plot_phase_transition,
        summarize_phase_transition,
        super_ticket,
    )

    records = []
    for seed, noise in enumerate([0.0, 0.02, -0.02]):
        for level, remaining, win, rnd in [
            (0.1, 0.95, 0.84, 0.83),
            (0.3, 0.8, 0.86, 0.8),
            (0.5, 0.6, 0.86, 0.7),
        ]:
            records.append(
                {
                    "kind": "winning",
                    "level": level,
                    "weights_remaining": remaining,
                    "metric": win + noise,
                    "seed": seed,
                }
            )
            records.append(
                {
                    "kind": "random",
                    "level": level,
                    "weights_remaining": remaining,
                    "metric": rnd + noise,
                    "seed": seed,
                }
            )
    points = summarize_phase_transition(records)
    first = next(p for p in points if p.kind == "random" and p.level == 0.1)
    assert first.mean == pytest.approx(0.83) and first.std == pytest.approx(0.02) and first.seeds == 3
    best = super_ticket(points)
    assert best.level == 0.5  # ties with 0.3 on the mean; fewer weights wins
    path = plot_phase_transition(points, tmp_path / "phase.png", full_score=(0.85, 0.01), metric_name="F1")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(TicketlabError, match="lacks"):
        summarize_phase_transition([{"kind": "winning"}])
    with pytest.raises(TicketlabError, match="disagree"):
        summarize_phase_transition([dict(records[0]), dict(records[0], weights_remaining=0.5)])
