"""A masked-LM head beside a bare encoder, with its decoder tied to the word embeddings.

BERT's and RoBERTa's heads are the same shape: dense -> activation -> LayerNorm -> decoder (the
word-embedding matrix, transposed) + bias. :class:`MlmHead` is that head as a separate module, so
one code path serves checkpoints that ship a head (its weights are copied in) and those that do
not (sentence-embedding BERTs such as MiniLM: a head is built and its transform trained briefly,
see ``ticketlab.training.mlm_head``). The decoder reads the word-embedding module's ``weight`` at
every call, so whatever mask sits on the embeddings also acts on the decoder, as with tied weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models.adapters import EncoderAdapter

HEAD_FORMAT = "ticketlab-mlm-head"
HEAD_FILE = "mlm_head.safetensors"


@dataclass(frozen=True)
class HeadLayout:
    """Where a ``...ForMaskedLM`` model keeps its head's transform and output bias."""

    dense: str
    layer_norm: str
    bias: str
    activation_attr: str | None = "hidden_act"  # config attribute; None means gelu


HEAD_LAYOUTS: dict[str, HeadLayout] = {
    "bert": HeadLayout(
        "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias"
    ),
    "roberta": HeadLayout("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", None),
    "xlm-roberta": HeadLayout("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", None),
    "camembert": HeadLayout("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", None),
}


def _activation(config, layout: HeadLayout | None) -> str:
    name = getattr(config, layout.activation_attr, "gelu") if layout and layout.activation_attr else "gelu"
    return name if isinstance(name, str) else "gelu"


class MlmHead(nn.Module):
    """Transform (dense, activation, LayerNorm) and output bias; the decoder is the word embeddings."""

    def __init__(
        self, hidden_size: int, vocab_size: int, activation: str = "gelu", layer_norm_eps: float = 1e-12
    ):
        from transformers.activations import ACT2FN

        super().__init__()
        self.activation_name = activation
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[activation]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.reset_to_identity()

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Start a new head near "predict the token whose embedding the hidden state resembles"."""
        nn.init.eye_(self.dense.weight)
        self.dense.bias.zero_()
        self.layer_norm.reset_parameters()
        self.bias.zero_()

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., V]`` for hidden states ``[..., H]``."""
        transformed = self.layer_norm(self.activation(self.dense(hidden)))
        return nn.functional.linear(transformed, word_embeddings, self.bias)

    @classmethod
    def for_encoder(cls, encoder: nn.Module) -> MlmHead:
        adapter = EncoderAdapter(encoder)
        config = adapter.config
        layout = HEAD_LAYOUTS.get(config.model_type)
        return cls(
            adapter.hidden_size,
            word_embeddings(encoder).weight.shape[0],
            _activation(config, layout),
            float(getattr(config, "layer_norm_eps", 1e-12)),
        )


def word_embeddings(model: nn.Module) -> nn.Embedding:
    adapter = EncoderAdapter(model)
    return adapter.base.get_submodule(adapter.table.word_embeddings)


class EncoderWithMlmHead(nn.Module):
    """An encoder and an :class:`MlmHead`; logits are computed only where asked (the MLM targets).

    It looks like a Hugging Face task model to the rest of ticketlab: ``config``, ``base_model``
    (the encoder) and ``base_model_prefix``, so :class:`EncoderAdapter`, masks and pruning see the
    encoder's weights under their canonical names and everything else (``head.*``) as the head.
    """

    base_model_prefix = "encoder"

    def __init__(self, encoder: nn.Module, head: MlmHead):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.config = encoder.config
        # Weights the encoder's checkpoint lacked (an untrained pooler), named as in this model.
        untrained = getattr(encoder, "ticketlab_untrained", frozenset())
        self.ticketlab_untrained = frozenset(f"{self.base_model_prefix}.{n}" for n in untrained)

    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        output_hidden_states: bool = False,
        labels: torch.Tensor | None = None,
    ):
        """The encoder's outputs; with ``labels`` (``-100`` off target) also ``.loss``, the mean
        cross-entropy over the targets, as ``...ForMaskedLM`` computes it."""
        outputs = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states
        )
        if labels is not None:
            targets = labels != -100
            logits = self.logits_at(outputs.last_hidden_state, targets)
            # Summed then divided, so a batch without targets gives 0 (with a graph), not NaN.
            total = nn.functional.cross_entropy(logits.float(), labels[targets], reduction="sum")
            outputs.loss = total / max(int(targets.sum()), 1)
        return outputs

    def logits_at(self, last_hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, V]`` at the ``True`` entries of ``positions`` (``[B, L]``)."""
        return self.head(last_hidden[positions], word_embeddings(self.encoder).weight)


def head_from_checkpoint(name_or_path: str, encoder: nn.Module) -> tuple[MlmHead | None, str]:
    """The checkpoint's own MLM head copied into an :class:`MlmHead`, or ``None`` with the reason."""
    from transformers import AutoModelForMaskedLM

    config = EncoderAdapter(encoder).config
    layout = HEAD_LAYOUTS.get(config.model_type)
    if layout is None:
        return None, f"ticketlab has no MLM head layout for model type {config.model_type!r}"
    from transformers.utils import logging as hf_logging

    # A checkpoint without head loads with a long "MISSING" report: expected here, so kept quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        full, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError) as error:
        return (
            None,
            f"no masked-LM model could be loaded from {name_or_path!r} ({str(error).splitlines()[0]})",
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    head_keys = (f"{layout.dense}.weight", f"{layout.layer_norm}.weight", layout.bias)
    missing = [k for k in info.get("missing_keys", []) if k in head_keys or k.startswith(head_keys)]
    if missing:
        return None, f"the checkpoint {name_or_path!r} has no MLM head (missing {missing[0]})"
    head = MlmHead.for_encoder(encoder)
    with torch.no_grad():
        head.dense.load_state_dict(full.get_submodule(layout.dense).state_dict())
        head.layer_norm.load_state_dict(full.get_submodule(layout.layer_norm).state_dict())
        head.bias.copy_(full.get_parameter(layout.bias))
    return head, "the checkpoint's own MLM head"


def save_mlm_head(head: MlmHead, directory: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write ``head`` (safetensors, atomically) with ``info`` (how it was built) in its header."""
    from safetensors.torch import save_file

    from ticketlab.io import atomic_write

    path = Path(directory) / HEAD_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    header = {
        "format": HEAD_FORMAT,
        "activation": head.activation_name,
        "layer_norm_eps": head.layer_norm.eps,
        "info": info,
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"ticketlab": json.dumps(header)}))
    return path


def load_mlm_head(path: str | os.PathLike, encoder: nn.Module) -> tuple[MlmHead, dict[str, Any]]:
    """Read a head written by :func:`save_mlm_head` (a file or its directory) for ``encoder``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / HEAD_FILE
    if not path.is_file():
        raise TicketlabError(f"MLM head file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {}).get("ticketlab", "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise TicketlabError(f"{path} is not a readable MLM head file ({error})") from error
    if header.get("format") != HEAD_FORMAT:
        raise TicketlabError(f"{path} is not a ticketlab MLM head file")
    head = MlmHead.for_encoder(encoder)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise TicketlabError(f"{path}: the head does not fit this model (shapes {found} vs {expected})")
    head.load_state_dict(tensors)
    return head, header.get("info", {})
