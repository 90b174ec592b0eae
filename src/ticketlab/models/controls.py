"""The controls of BERT-Tickets: pre-trained weights with their layers permuted, and random init."""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.models.adapters import EncoderAdapter


def layer_permutation(num_layers: int, seed: int) -> list[int]:
    """A seeded permutation of layer indices that moves at least one layer (for two or more layers)."""
    generator = torch.Generator().manual_seed(int(seed))
    while True:
        order = torch.randperm(num_layers, generator=generator).tolist()
        if num_layers < 2 or order != list(range(num_layers)):
            return order


@torch.no_grad()
def permute_layers(model: nn.Module, seed: int) -> list[int]:
    """Move whole encoder layers (seeded) in place; returns the order: new position i holds old layer order[i].

    Every weight stays pre-trained, but each sits at a depth it was not trained for.
    """
    adapter = EncoderAdapter(model)
    order = layer_permutation(adapter.num_layers, seed)
    states = [{k: v.clone() for k, v in adapter.layer(i).state_dict().items()} for i in order]
    for position, state in enumerate(states):
        adapter.layer(position).load_state_dict(state)
    return order


@torch.no_grad()
def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Replace every weight with the architecture's own random initialisation (seeded), in place."""
    torch.manual_seed(int(seed))
    fresh = type(model)(model.config)
    model.load_state_dict(fresh.state_dict())
    return model
