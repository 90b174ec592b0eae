"""Architecture tables: where an encoder keeps its attention and FFN matrices.

Every supported family is one :class:`ArchitectureTable` entry; the rest of ticketlab only talks to
:class:`EncoderAdapter`, which resolves a live Hugging Face model (a bare encoder or any task model
around it) against its table. Parameter names are *canonical*: relative to the base model
(``encoder.layer.0.attention.self.query.weight``), so a mask found on ``BertModel`` applies to
``BertForSequenceClassification`` or ``BertForMaskedLM`` of the same checkpoint unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ticketlab.errors import TicketlabError

Scope = Literal["encoder", "encoder+embeddings"]
SCOPES: tuple[str, ...] = ("encoder", "encoder+embeddings")

# Roles of a prunable matrix inside a layer, in canonical order.
LAYER_ROLES: tuple[str, ...] = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class ArchitectureTable:
    """Module paths of one encoder family, relative to its base model."""

    model_types: tuple[str, ...]
    layers: str
    query: str
    key: str
    value: str
    attention_output: str
    ffn_in: str
    ffn_out: str
    word_embeddings: str
    pooler: str | None = "pooler.dense"
    # Config attribute names (DistilBERT spells them differently).
    num_layers_attr: str = "num_hidden_layers"
    num_heads_attr: str = "num_attention_heads"
    hidden_attr: str = "hidden_size"
    ffn_attr: str = "intermediate_size"

    def layer_module_path(self, role: str) -> str:
        return getattr(self, role)


_BERT_LAYOUT = dict(
    layers="encoder.layer",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    word_embeddings="embeddings.word_embeddings",
)

ARCHITECTURES: tuple[ArchitectureTable, ...] = (
    ArchitectureTable(model_types=("bert",), **_BERT_LAYOUT),
    ArchitectureTable(model_types=("roberta", "xlm-roberta", "camembert"), **_BERT_LAYOUT),
    ArchitectureTable(model_types=("electra",), pooler=None, **_BERT_LAYOUT),
    ArchitectureTable(
        model_types=("distilbert",),
        layers="transformer.layer",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attention_output="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        word_embeddings="embeddings.word_embeddings",
        pooler=None,
        num_layers_attr="n_layers",
        num_heads_attr="n_heads",
        hidden_attr="dim",
        ffn_attr="hidden_dim",
    ),
)


def table_for(model_type: str) -> ArchitectureTable:
    """The architecture table of a ``config.model_type``."""
    for table in ARCHITECTURES:
        if model_type in table.model_types:
            return table
    supported = sorted(t for table in ARCHITECTURES for t in table.model_types)
    raise TicketlabError(f"model type {model_type!r} is not supported (supported: {', '.join(supported)})")


@dataclass(frozen=True)
class PrunableMatrix:
    """One weight matrix that a mask can cover."""

    name: str  # canonical parameter name, relative to the base model
    role: str  # one of LAYER_ROLES, "pooler" or "word_embeddings"
    layer: int | None  # encoder layer index; None for pooler and embeddings


class EncoderAdapter:
    """A Hugging Face encoder seen through its architecture table.

    Accepts the bare encoder (``BertModel``) or a task model around it (``...ForSequenceClassification``).
    """

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "model_type"):
            raise TicketlabError(f"{type(model).__name__} is not a Hugging Face model (no config.model_type)")
        self.model = model
        self.config = config
        self.table = table_for(config.model_type)
        # ``base_model`` is the encoder inside a task model (or the model itself).
        self.base: nn.Module = getattr(model, "base_model", model)
        self.num_layers: int = int(getattr(config, self.table.num_layers_attr))
        self.num_heads: int = int(getattr(config, self.table.num_heads_attr))
        self.hidden_size: int = int(getattr(config, self.table.hidden_attr))
        self.ffn_size: int = int(getattr(config, self.table.ffn_attr))
        self.head_dim: int = self.hidden_size // self.num_heads

    # -- module access ------------------------------------------------------------------------
    def layer(self, index: int) -> nn.Module:
        return self.base.get_submodule(self.table.layers)[index]

    def layer_linear(self, index: int, role: str) -> nn.Linear:
        return self.layer(index).get_submodule(self.table.layer_module_path(role))

    def has_pooler(self) -> bool:
        """Whether the model has a pre-trained pooler (one initialised at random is not in scope)."""
        if self.table.pooler is None:
            return False
        try:
            self.base.get_submodule(self.table.pooler)
        except AttributeError:
            return False
        untrained = getattr(self.model, "ticketlab_untrained", frozenset())
        return self.full_name(f"{self.table.pooler}.weight") not in untrained

    # -- prunable matrices --------------------------------------------------------------------
    def prunable_matrices(self, scope: str = "encoder") -> list[PrunableMatrix]:
        """The matrices in ``scope``, in canonical order (embeddings, layers, pooler)."""
        if scope not in SCOPES:
            raise TicketlabError(f"unknown scope {scope!r} (choose from {', '.join(SCOPES)})")
        matrices: list[PrunableMatrix] = []
        if scope == "encoder+embeddings":
            matrices.append(PrunableMatrix(f"{self.table.word_embeddings}.weight", "word_embeddings", None))
        for index in range(self.num_layers):
            for role in LAYER_ROLES:
                path = f"{self.table.layers}.{index}.{self.table.layer_module_path(role)}.weight"
                matrices.append(PrunableMatrix(path, role, index))
        if self.has_pooler():
            matrices.append(PrunableMatrix(f"{self.table.pooler}.weight", "pooler", None))
        return matrices

    def parameter(self, name: str) -> nn.Parameter:
        """A parameter by canonical name."""
        return self.base.get_parameter(name)

    def prunable_weights(self, scope: str = "encoder") -> dict[str, torch.Tensor]:
        """Canonical name -> live parameter, for every matrix in ``scope``."""
        return {m.name: self.parameter(m.name) for m in self.prunable_matrices(scope)}

    def describe(self, name: str) -> PrunableMatrix:
        """Role and layer of a canonical name (any scope)."""
        for matrix in self.prunable_matrices("encoder+embeddings"):
            if matrix.name == name:
                return matrix
        raise KeyError(name)

    def full_name(self, canonical: str) -> str:
        """The parameter's name in the wrapping model's ``state_dict``."""
        if self.base is self.model:
            return canonical
        return f"{self.model.base_model_prefix}.{canonical}"
