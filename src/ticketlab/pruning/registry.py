"""The registry of pruning methods: each method is a small strategy object found by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ticketlab.errors import TicketlabError


class PruningMethod(ABC):
    """Chooses which weights to keep, given the weights in scope.

    Subclasses set ``name`` and implement :meth:`select`; :func:`register` makes them reachable by
    name from :func:`ticketlab.pruning.prune` and the command line.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def select(
        self, weights: Mapping[str, torch.Tensor], sparsity: float, scheme: str, seed: int
    ) -> dict[str, torch.Tensor]:
        """Keep-bits (True = kept) for each weight tensor."""

    def params(self) -> dict[str, Any]:
        """The method's own parameters, recorded in the mask's provenance."""
        return {}


PRUNING_METHODS: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    PRUNING_METHODS[cls.name] = cls
    return cls


def get_method(name: str, **params: Any) -> PruningMethod:
    try:
        cls = PRUNING_METHODS[name]
    except KeyError:
        raise TicketlabError(
            f"unknown pruning method {name!r} (available: {', '.join(sorted(PRUNING_METHODS))})"
        ) from None
    return cls(**params)
