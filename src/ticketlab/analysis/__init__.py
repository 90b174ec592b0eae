"""Analyses of masks and results: overlap, stability, correlations, tables and plots."""

from ticketlab.analysis.overlap import PairOverlap, expected_random_jaccard, pairwise_overlap
from ticketlab.analysis.phase_transition import (
    PhasePoint,
    plot_phase_transition,
    summarize_phase_transition,
    super_ticket,
)
from ticketlab.analysis.stability import (
    cochran_q,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    plot_survival,
    structured_stability,
)

__all__ = [
    "PairOverlap",
    "PhasePoint",
    "cochran_q",
    "expected_random_jaccard",
    "fleiss_kappa",
    "krippendorff_alpha_nominal",
    "pairwise_overlap",
    "plot_phase_transition",
    "plot_survival",
    "structured_stability",
    "summarize_phase_transition",
    "super_ticket",
]
