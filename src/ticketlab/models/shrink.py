"""Cut pruned heads and FFN neurons out of the weights: a structured ticket as a smaller dense model.

For each layer the kept heads' rows of Q, K and V and their columns of the attention-output
projection are kept; the kept FFN neurons' rows of FFN-in and columns of FFN-out likewise. Nothing
else changes: the head size, the attention scaling and every bias stay, so the shrunk model
computes what the gated full model computes (:class:`ticketlab.masks.gates.StructuredGates`):

- a layer with every head pruned gets an :class:`EmptyAttention` that returns a zero-width
  context; the attention-output projection becomes ``Linear(0, hidden)``, i.e. its bias, so the
  sub-layer is ``LayerNorm(hidden + bias_out)`` exactly as when all heads are gated;
- an FFN with zero neurons is ``Linear(hidden, 0)`` then ``Linear(0, hidden)``: its FFN-out bias
  when neurons were pruned one by one, and zero (bias cleared) when the whole FFN *layer* was
  pruned (a layer gate multiplies the bias too).

transformers configs hold one head count and one FFN size for all layers, so the per-layer sizes
go into ``ticketlab_shrunk.json`` beside ``config.json`` and the safetensors weights; only
:func:`load_shrunk` (not ``from_pretrained``) rebuilds such a model. The transformers attention
classes of the supported families take the number of heads from the projection's output width
(``view(..., -1, head_size)``), so resizing the linears is enough; their head-count attributes are
updated too for anyone reading them.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models.adapters import EncoderAdapter
from ticketlab.specs import check_value, from_mapping

SHRUNK_CONFIG_NAME = "ticketlab_shrunk.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "ticketlab-shrunk-model"
FORMAT_VERSION = 1


class UnitMask(Protocol):
    """What shrink needs of a structured mask (``ticketlab.masks.StructuredMask`` is one)."""

    heads: torch.Tensor  # [layers, heads] bool, True = kept
    ffn: torch.Tensor  # [layers] or [layers, d_ff] bool


class EmptyAttention(nn.Module):
    """Stands in for a self-attention block whose heads were all removed: a zero-width context.

    When the family keeps the output projection inside the attention block (DistilBERT), it is
    held here under its own name and applied (to nothing: its bias comes out).
    """

    def __init__(self, output_name: str | None = None, output: nn.Linear | None = None):
        super().__init__()
        self.output_name = output_name
        if output_name is not None:
            self.add_module(output_name, output)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is not None:
            context = getattr(self, self.output_name)(context)
        return context, None


@dataclass
class ShrinkPlan:
    """Which original heads and FFN neurons each layer keeps (written to ``ticketlab_shrunk.json``)."""

    heads_kept: list[list[int]]
    ffn_kept: list[list[int]]
    ffn_bias_cleared: list[bool]
    head_dim: int
    original_num_heads: int
    original_ffn_size: int

    @property
    def head_counts(self) -> list[int]:
        return [len(h) for h in self.heads_kept]

    @property
    def ffn_sizes(self) -> list[int]:
        return [len(f) for f in self.ffn_kept]


def plan_from_mask(adapter: EncoderAdapter, mask: UnitMask) -> ShrinkPlan:
    heads, ffn = mask.heads.bool().cpu(), mask.ffn.bool().cpu()
    if tuple(heads.shape) != (adapter.num_layers, adapter.num_heads):
        raise TicketlabError(
            f"heads mask shape {tuple(heads.shape)} does not fit a model with "
            f"{adapter.num_layers} layers x {adapter.num_heads} heads"
        )
    if ffn.dim() == 2 and tuple(ffn.shape) != (adapter.num_layers, adapter.ffn_size):
        raise TicketlabError(
            f"ffn mask shape {tuple(ffn.shape)} does not fit {adapter.num_layers} x {adapter.ffn_size}"
        )
    if ffn.dim() == 1 and ffn.shape[0] != adapter.num_layers:
        raise TicketlabError(f"ffn mask has {ffn.shape[0]} layers, the model {adapter.num_layers}")
    heads_kept = [torch.nonzero(heads[i]).flatten().tolist() for i in range(adapter.num_layers)]
    if ffn.dim() == 1:
        everything = list(range(adapter.ffn_size))
        ffn_kept = [everything if bool(ffn[i]) else [] for i in range(adapter.num_layers)]
        cleared = [not bool(ffn[i]) for i in range(adapter.num_layers)]
    else:
        ffn_kept = [torch.nonzero(ffn[i]).flatten().tolist() for i in range(adapter.num_layers)]
        cleared = [False] * adapter.num_layers
    return ShrinkPlan(heads_kept, ffn_kept, cleared, adapter.head_dim, adapter.num_heads, adapter.ffn_size)


# -- module surgery -------------------------------------------------------------------------------
def _new_linear(template: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-size linears warn that initialising them is a no-op
        return nn.Linear(
            in_features,
            out_features,
            bias=template.bias is not None,
            device=template.weight.device,
            dtype=template.weight.dtype,
        )


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _resize_layer(adapter: EncoderAdapter, index: int, num_heads: int, ffn_size: int) -> None:
    """Give layer ``index`` fresh linears of the new sizes (weights to be filled by the caller)."""
    table, layer = adapter.table, adapter.layer(index)
    width = num_heads * adapter.head_dim
    hidden = adapter.hidden_size
    core_path = table.query.rpartition(".")[0]  # the self-attention block holding Q, K, V
    output = _new_linear(adapter.layer_linear(index, "attention_output"), width, hidden)
    _set_submodule(layer, table.attention_output, output)
    if num_heads == 0:
        inside = table.attention_output.startswith(core_path + ".")
        name = table.attention_output[len(core_path) + 1 :] if inside else None
        if name is not None and "." in name:
            raise TicketlabError(
                f"cannot empty the attention of {table.model_types[0]}: nested output {name!r}"
            )
        _set_submodule(layer, core_path, EmptyAttention(name, output if inside else None))
    else:
        for role in ("query", "key", "value"):
            linear = _new_linear(adapter.layer_linear(index, role), hidden, width)
            _set_submodule(layer, table.layer_module_path(role), linear)
        core = layer.get_submodule(core_path)
        for attribute in ("num_attention_heads", "n_heads"):
            if hasattr(core, attribute):
                setattr(core, attribute, num_heads)
        if hasattr(core, "all_head_size"):
            core.all_head_size = width
    _set_submodule(layer, table.ffn_in, _new_linear(adapter.layer_linear(index, "ffn_in"), hidden, ffn_size))
    _set_submodule(
        layer, table.ffn_out, _new_linear(adapter.layer_linear(index, "ffn_out"), ffn_size, hidden)
    )


def _resize(model: nn.Module, plan: ShrinkPlan) -> None:
    adapter = EncoderAdapter(model)
    for index in range(adapter.num_layers):
        _resize_layer(adapter, index, plan.head_counts[index], plan.ffn_sizes[index])


def _copy_into(target: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        target.weight.copy_(weight)
        if bias is not None:
            target.bias.copy_(bias)


def _rows(bias: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if bias is None else bias[index]


@torch.no_grad()
def shrink(model: nn.Module, mask: UnitMask) -> nn.Module:
    """A copy of ``model`` with the pruned heads and FFN neurons physically removed.

    ``mask`` is a :class:`ticketlab.masks.StructuredMask` (FFN per layer or per neuron). The copy
    records its plan in ``model.ticketlab_shrink_plan``; save it with :func:`save_shrunk`.
    """
    if getattr(model, "ticketlab_shrink_plan", None) is not None:
        raise TicketlabError("this model is already shrunk; shrink the full model with the combined mask")
    adapter = EncoderAdapter(model)
    plan = plan_from_mask(adapter, mask)
    small = copy.deepcopy(model)
    _resize(small, plan)  # fresh linears of the new sizes, filled below from the untouched original
    small_adapter = EncoderAdapter(small)
    d = plan.head_dim
    for index in range(adapter.num_layers):
        heads = torch.tensor(plan.heads_kept[index], dtype=torch.long)
        rows = (heads.unsqueeze(1) * d + torch.arange(d)).reshape(-1)  # the kept heads' features
        neurons = torch.tensor(plan.ffn_kept[index], dtype=torch.long)
        for role in ("query", "key", "value") if rows.numel() else ():
            source = adapter.layer_linear(index, role)
            _copy_into(small_adapter.layer_linear(index, role), source.weight[rows], _rows(source.bias, rows))
        source = adapter.layer_linear(index, "attention_output")
        _copy_into(small_adapter.layer_linear(index, "attention_output"), source.weight[:, rows], source.bias)
        source = adapter.layer_linear(index, "ffn_in")
        _copy_into(
            small_adapter.layer_linear(index, "ffn_in"), source.weight[neurons], _rows(source.bias, neurons)
        )
        source = adapter.layer_linear(index, "ffn_out")
        bias = source.bias
        if bias is not None and plan.ffn_bias_cleared[index]:
            bias = torch.zeros_like(bias)  # a layer gate of 0 multiplies the bias too
        _copy_into(small_adapter.layer_linear(index, "ffn_out"), source.weight[:, neurons], bias)
    small.ticketlab_shrink_plan = plan
    small.train(model.training)
    return small


# -- save / load ----------------------------------------------------------------------------------
def _write_then_rename(path: Path, write) -> None:
    # models/ sits below masks/ (which has the shared atomic_write), hence this small local one.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_shrunk(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``ticketlab_shrunk.json`` (last, so a
    directory with it is complete)."""
    from safetensors.torch import save_model

    plan: ShrinkPlan | None = getattr(model, "ticketlab_shrink_plan", None)
    if plan is None:
        raise TicketlabError("this model was not made by shrink() (no ticketlab_shrink_plan)")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TicketlabError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    _write_then_rename(
        directory / WEIGHTS_NAME, lambda tmp: save_model(model, tmp, metadata={"format": "pt"})
    )
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "plan": asdict(plan),
        **(extra or {}),
    }
    text = json.dumps(header, indent=1)
    _write_then_rename(directory / SHRUNK_CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_shrunk_header(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / SHRUNK_CONFIG_NAME
    if not path.exists():
        raise TicketlabError(f"{directory} is not a shrunk ticketlab model (no {SHRUNK_CONFIG_NAME})")
    try:
        header = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TicketlabError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise TicketlabError(f"{path}: not a ticketlab shrink record (format {_format_of(header)!r})")
    version = check_value(header.get("format_version", 0), int, f"{path}: format_version")
    if version > FORMAT_VERSION:
        raise TicketlabError(f"{path}: format version {version} is newer than this ticketlab")
    from_mapping(ShrinkPlan, header.get("plan"), f"{path}: plan")
    return header


def _format_of(header: Any) -> Any:
    return header.get("format") if isinstance(header, dict) else type(header).__name__


def load_shrunk(directory: str | os.PathLike, **config_overrides: Any) -> nn.Module:
    """Rebuild a model written by :func:`save_shrunk` (in eval mode). ``config_overrides`` go to the
    config (``attn_implementation="sdpa"``, for example)."""
    from ticketlab.models.weights import load_weights_strict, model_from_header

    header = read_shrunk_header(directory)
    model = model_from_header(directory, header.get("model_class"), **config_overrides)
    plan = from_mapping(ShrinkPlan, header["plan"], "plan")
    _resize(model, plan)
    load_weights_strict(model, Path(directory) / WEIGHTS_NAME)
    model.ticketlab_shrink_plan = plan
    model.eval()
    return model


def encoder_flops(
    num_heads: list[int], ffn_sizes: list[int], hidden: int, head_dim: int, seq_len: int
) -> int:
    """Multiply-adds x 2 of the encoder layers per sequence (projections, attention, FFN).

    LayerNorms, softmax, biases and embeddings are left out (a few percent of BERT-base).
    """
    total = 0
    for heads, ffn in zip(num_heads, ffn_sizes):
        width = heads * head_dim
        per_token = 3 * hidden * width + width * hidden  # Q, K, V and the output projection
        per_token += 2 * seq_len * width  # scores (Q K^T) and the weighted sum of V
        per_token += 2 * hidden * ffn  # FFN in and out
        total += 2 * per_token * seq_len
    return total


def is_shrunk_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / SHRUNK_CONFIG_NAME).is_file()


def load_shrunk_as(directory: str | os.PathLike, model_class: Any, **config_kwargs: Any) -> nn.Module:
    """A shrunk model rebuilt as ``model_class`` (an Auto class or a concrete one), so that every
    verb taking ``--model`` can use it: a shrunk encoder as a task model, or the reverse.

    The encoder's weights come from the file; weights it lacks or holds in another shape (a task
    head for another task) are freshly initialised and listed in ``model.ticketlab_untrained``,
    as ``load_encoder`` does for a checkpoint. ``config_kwargs`` go to the config (``num_labels``).
    """
    import transformers
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_shrunk_header(directory)
    plan = from_mapping(ShrinkPlan, header["plan"], "plan")
    config = transformers.AutoConfig.from_pretrained(str(directory), **config_kwargs)
    auto = model_class.__name__.startswith("Auto")
    model = model_class.from_config(config) if auto else model_class(config)
    _resize(model, plan)
    try:
        stored = load_file(str(Path(directory) / WEIGHTS_NAME))
    except (SafetensorError, OSError) as error:
        raise TicketlabError(
            f"cannot load the weights of {directory}: {str(error).splitlines()[0]}"
        ) from error
    own = model.state_dict()
    prefix = f"{model.base_model_prefix}."

    def target(key: str) -> str | None:  # the saved name in this class's layout
        for name in (key, prefix + key, key.removeprefix(prefix)):
            if name in own and own[name].shape == stored[key].shape:
                return name
        return None

    loaded = {name: stored[key] for key in stored if (name := target(key)) is not None}
    if not any(name.removeprefix(prefix).startswith(("encoder.", "transformer.")) for name in loaded):
        raise TicketlabError(f"{directory}: its shrunk weights do not fit a {type(model).__name__}")
    model.load_state_dict(loaded, strict=False)
    model.ticketlab_untrained = frozenset(name for name in own if name not in loaded)
    model.ticketlab_shrink_plan = plan
    model.eval()
    return model
