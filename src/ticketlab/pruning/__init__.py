"""How masks are chosen: strategies behind one interface, found through a registry."""

from ticketlab.pruning import magnitude, n_m, random_pruning  # noqa: F401  (registers the methods)
from ticketlab.pruning.importance import IMPORTANCE_VARIANTS, ImportanceScores, compute_importance
from ticketlab.pruning.magnitude import MagnitudePruning
from ticketlab.pruning.n_m import NMPruning
from ticketlab.pruning.prune import PROTOCOLS, prune
from ticketlab.pruning.random_pruning import RandomPruning
from ticketlab.pruning.registry import PRUNING_METHODS, PruningMethod, get_method, register
from ticketlab.pruning.selection import SCHEMES, lowest_k_mask, num_to_prune, validate_sparsity
from ticketlab.pruning.structured import (
    PRUNING_ORDERS,
    good_random_bad,
    iterative_step,
    nested_structured_masks,
    structured_levels,
    structured_mask_from_scores,
)

__all__ = [
    "IMPORTANCE_VARIANTS",
    "PRUNING_ORDERS",
    "ImportanceScores",
    "compute_importance",
    "good_random_bad",
    "iterative_step",
    "nested_structured_masks",
    "structured_levels",
    "structured_mask_from_scores",
    "PROTOCOLS",
    "PRUNING_METHODS",
    "SCHEMES",
    "MagnitudePruning",
    "NMPruning",
    "PruningMethod",
    "RandomPruning",
    "get_method",
    "lowest_k_mask",
    "num_to_prune",
    "prune",
    "register",
    "validate_sparsity",
]
