"""Model adapters and loading."""

from ticketlab.models.adapters import (
    ARCHITECTURES,
    LAYER_ROLES,
    SCOPES,
    ArchitectureTable,
    EncoderAdapter,
    PrunableMatrix,
    table_for,
)
from ticketlab.models.loading import load_encoder, load_tokenizer

__all__ = [
    "ARCHITECTURES",
    "LAYER_ROLES",
    "SCOPES",
    "ArchitectureTable",
    "EncoderAdapter",
    "PrunableMatrix",
    "load_encoder",
    "load_tokenizer",
    "table_for",
]
