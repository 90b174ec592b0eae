"""Loading pre-trained models from a hub id or a local directory."""

from __future__ import annotations

import os
import pickle
from typing import Any

from safetensors import SafetensorError
from torch import nn

from ticketlab.errors import TicketlabError, first_line


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
    from ticketlab.models.shrink import is_shrunk_dir, load_shrunk_as

    if is_shrunk_dir(name_or_path):  # a `ticketlab shrink` output: its layers have other sizes
        return load_shrunk_as(name_or_path, model_class, **kwargs)
    try:
        model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except RuntimeError as error:
        if "PytorchStreamReader" not in str(error):
            raise
        raise TicketlabError(
            f"could not load model {name_or_path!r} ({_describe_source(name_or_path)}): its weights file "
            f"is truncated or corrupt ({first_line(error)})"
        ) from error
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        # A truncated model.safetensors (SafetensorError) or a .bin the safe loader refuses
        # (UnpicklingError: torch loads .bin files with weights_only) is a bad input, not a crash.
        reason = first_line(error)
        if isinstance(error, SafetensorError | EOFError):
            reason = f"its weights file is truncated or corrupt ({reason})"
        raise TicketlabError(
            f"could not load model {name_or_path!r} ({_describe_source(name_or_path)}): {reason}"
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
        raise TicketlabError(
            f"could not load the tokenizer of {name_or_path!r}: {first_line(error)}"
        ) from error


# Families whose position ids start after the padding index (RoBERTa's layout).
_PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert")


def max_positions(model_or_config: Any) -> int | None:
    """How many tokens one sequence of the model may have (None when its config does not say)."""
    config = getattr(model_or_config, "config", model_or_config)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and getattr(config, "model_type", None) in _PADDING_OFFSET_TYPES:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def check_max_length(model: Any, max_length: int | None, what: str = "max length") -> None:
    """Refuse, before any data is tokenised, a sequence length above the model's positions.

    ``model`` is a model, its config, or a hub id / directory (only its config is read).
    """
    if max_length is None:
        return
    if isinstance(model, str | os.PathLike):
        from transformers import AutoConfig

        try:
            model = AutoConfig.from_pretrained(str(model))
        except (OSError, ValueError):
            return  # loading the model itself reports that problem in one line
    positions = max_positions(model)
    if positions is not None and max_length > positions:
        raise TicketlabError(
            f"{what} {max_length} is longer than the model's {positions} position embeddings; "
            f"use at most {positions}"
        )
