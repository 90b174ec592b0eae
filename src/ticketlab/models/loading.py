"""Loading pre-trained models from a hub id or a local directory."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ticketlab.errors import TicketlabError


def _describe_source(name_or_path: str) -> str:
    return "local directory" if os.path.isdir(name_or_path) else "hub id"


def load_encoder(name_or_path: str, model_class: Any = None, **kwargs: Any) -> nn.Module:
    """Load a pre-trained model (default: the bare encoder, ``AutoModel``) in eval mode.

    The names of weights the checkpoint lacked (initialised at random) are kept in
    ``model.ticketlab_untrained``.

    ``name_or_path`` is a Hugging Face hub id (the default way users name models) or a local
    directory written by ``save_pretrained``.
    """
    from transformers import AutoModel

    model_class = model_class or AutoModel
    if os.path.sep in name_or_path and not os.path.exists(name_or_path):
        raise TicketlabError(f"model directory {name_or_path!r} does not exist")
    try:
        model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TicketlabError(
            f"could not load model {name_or_path!r} ({_describe_source(name_or_path)}): {first_line}"
        ) from error
    # Weights the checkpoint did not have were freshly (randomly) initialised: remember them, so a
    # pooler that was never trained (a checkpoint saved from a masked-LM model) stays out of scope.
    model.ticketlab_untrained = frozenset(info.get("missing_keys", ()))
    model.eval()
    return model


def load_tokenizer(name_or_path: str, **kwargs: Any):
    """The tokenizer saved with a model (hub id or local directory)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise TicketlabError(f"could not load the tokenizer of {name_or_path!r}: {error}") from error


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
            f"cannot load the weights of {os.path.dirname(path) or path}: {str(error).splitlines()[0]}"
        ) from error
