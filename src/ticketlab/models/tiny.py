"""Tiny randomly initialised encoders built from a config: for the demo, tests and examples."""

from __future__ import annotations

from typing import Any

from torch import nn


def tiny_config(model_type: str = "bert", **overrides: Any):
    """A small config of a supported family (2 layers, 4 heads, hidden 32 unless overridden)."""
    from transformers import AutoConfig

    sizes: dict[str, Any] = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=80,
    )
    if model_type == "distilbert":
        sizes = dict(vocab_size=128, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=80)
    if model_type == "roberta":
        sizes.update(pad_token_id=1, bos_token_id=0, eos_token_id=2)
    sizes.update(overrides)
    return AutoConfig.for_model(model_type, **sizes)


def tiny_model(
    model_type: str = "bert", seed: int = 0, model_class: Any = None, **overrides: Any
) -> nn.Module:
    """A tiny encoder (``AutoModel`` unless ``model_class`` is given) with seeded random weights."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    # Auto classes build from a config with from_config; concrete classes take it in __init__.
    model_class = model_class or AutoModel
    is_auto_class = model_class.__name__.startswith("Auto")
    model = model_class.from_config(config) if is_auto_class else model_class(config)
    model.eval()
    return model
