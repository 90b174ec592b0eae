"""Analyses of masks and results: overlap, stability, correlations, tables and plots."""

from ticketlab.analysis.overlap import PairOverlap, expected_random_jaccard, pairwise_overlap

__all__ = ["PairOverlap", "expected_random_jaccard", "pairwise_overlap"]
