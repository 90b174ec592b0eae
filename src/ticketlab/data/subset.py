"""Which N examples of a training split to train on, when a run is cut to N."""

from __future__ import annotations

from ticketlab.errors import TicketlabError

TRAIN_SUBSETS = ("first", "random")
# The random subset is the same for every run (not the run's seed): tickets, seeds and frameworks
# that are compared must see the same training examples.
TRAIN_SUBSET_SEED = 0


def subset_indices(total: int, count: int | None, how: str = "first") -> list[int]:
    """Indices of the ``count`` training examples to keep out of ``total``, in file order.

    ``first``: the first ``count`` (what most scripts do; biased where a file is ordered by source,
    as GLUE's are); ``random``: ``count`` drawn without replacement with a fixed seed.
    """
    if how not in TRAIN_SUBSETS:
        raise TicketlabError(f"train subset must be one of {', '.join(TRAIN_SUBSETS)}, not {how!r}")
    if count is None or count >= total:
        return list(range(total))
    if how == "first":
        return list(range(count))
    import numpy as np

    chosen = np.random.default_rng(TRAIN_SUBSET_SEED).choice(total, size=count, replace=False)
    return sorted(int(i) for i in chosen)
