"""The grid's ticket methods, one module per family, each registered as a strategy object
(``base.GridMethod``); the registry imports this package's modules when first asked."""

from ticketlab.experiments.grid.methods.base import (
    ENTRY_POINT_GROUP,
    GridMethod,
    active_methods,
    method_names,
    method_of,
    methods_where,
    register,
    registered,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "GridMethod",
    "active_methods",
    "method_names",
    "method_of",
    "methods_where",
    "register",
    "registered",
]
