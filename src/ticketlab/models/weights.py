"""Weights into a skeleton: the model class and config a ticketlab folder names, and a strict
safetensors load into it (shared by shrunk and sparse models; below ``loading``, which reads both)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ticketlab.errors import TicketlabError, first_line


def model_from_header(directory: str | os.PathLike, class_name: Any, **config_overrides: Any) -> nn.Module:
    """A randomly initialised ``transformers.<class_name>`` built from the ``config.json`` in
    ``directory``: the skeleton that ticketlab's own folders (shrunk, sparse) load weights into."""
    import transformers

    model_class = getattr(transformers, str(class_name), None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise TicketlabError(f"{directory}: unknown model class {class_name!r}")
    config = transformers.AutoConfig.from_pretrained(str(directory), **config_overrides)
    return model_class(config)


def load_weights_strict(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors file into ``model``, every name and shape exactly (else one line)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise TicketlabError(
            f"cannot load the weights of {os.path.dirname(path) or path}: {first_line(error)}"
        ) from error
