"""Sparse linear layers and the folders that hold them: a ticket as a model that stores (and, on
the CPU, multiplies) only its kept weights.

Two layouts of the masked ``nn.Linear`` weights, chosen per export:

- ``csr``: :class:`CsrLinear` holds the weight as a compressed-sparse-row matrix (its kept values,
  their column indices, the row starts) and multiplies with torch's sparse CSR kernels (MKL on
  x86 CPUs). Float32; outputs equal the dense masked layer up to float rounding (a different
  summation order).
- ``2:4``: :class:`NMCompressedLinear` stores N:M weights as the N kept values of every group of M
  inputs and their positions in the group (uint8), a layout of its own that any machine can write
  and read; :func:`load_sparse` turns it into ``torch.sparse.to_sparse_semi_structured`` weights,
  which only CUDA GPUs run (sparse tensor cores), or with ``dense=True`` into the plain masked
  ``nn.Linear`` (any machine: for checks and for CPUs).

A folder is ``config.json``, ``model.safetensors`` (the whole state dict, the sparse layers as
their parts) and ``ticketlab_sparse.json`` (written last: the format, the model class and every
sparse layer's sizes), read back by :func:`load_sparse` only. Everything but the masked linear
layers (embeddings, LayerNorms, biases, the task head) stays dense.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write, read_json, write_json
from ticketlab.models.weights import load_weights_strict, model_from_header

FORMAT_NAME = "ticketlab-sparse-model"
FORMAT_VERSION = 1
HEADER_NAME = "ticketlab_sparse.json"
WEIGHTS_NAME = "model.safetensors"
SPARSE_FORMATS: tuple[str, ...] = ("csr", "2:4")


def _quiet_csr(function):
    # torch warns once per process that sparse CSR is "beta"; the kernels used here are stable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return function()


class CsrLinear(nn.Module):
    """``nn.Linear`` with its weight in CSR form: ``y = x W^T + b`` as a sparse-dense product."""

    def __init__(self, in_features: int, out_features: int, nnz: int, bias: bool, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # int32 indices (torch's CSR kernels take either): 8 bytes per kept weight with its value,
        # so the file is smaller than the dense one below 50% density.
        self.register_buffer("weight_crow_indices", torch.zeros(out_features + 1, dtype=torch.int32))
        self.register_buffer("weight_col_indices", torch.zeros(nnz, dtype=torch.int32))
        self.register_buffer("weight_values", torch.zeros(nnz, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, keep: torch.Tensor | None = None) -> CsrLinear:
        """The layer with the entries of ``linear.weight`` that ``keep`` prunes (and any zero) left out."""
        weight = linear.weight.detach()
        if keep is not None:
            weight = weight * keep.to(weight.device)
        csr = _quiet_csr(weight.to_sparse_csr)
        layer = cls(
            linear.in_features, linear.out_features, int(csr.values().numel()), linear.bias is not None
        )
        if csr.values().numel() >= 2**31:
            raise TicketlabError(f"a {tuple(weight.shape)} weight has too many entries for int32 CSR indices")
        layer.weight_crow_indices = csr.crow_indices().to(torch.int32)
        layer.weight_col_indices = csr.col_indices().to(torch.int32)
        layer.weight_values = csr.values().clone()
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def weight_csr(self, check: bool = False) -> torch.Tensor:
        """The weight as a sparse CSR tensor (no copy). ``check`` validates the indices, as
        :func:`load_sparse` does once: torch's kernels trust them, and bad ones crash."""
        return _quiet_csr(
            lambda: torch.sparse_csr_tensor(
                self.weight_crow_indices,
                self.weight_col_indices,
                self.weight_values,
                (self.out_features, self.in_features),
                check_invariants=check,
            )
        )

    def dense_weight(self) -> torch.Tensor:
        return self.weight_csr().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        weight = self.weight_csr()
        # W (sparse) times x^T (dense) is the product the CSR kernels run; the result is
        # transposed back and made contiguous, since transformers views it into heads.
        if self.bias is None:
            out = torch.mm(weight, flat.t())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), weight, flat.t())
        return out.t().contiguous().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        density = self.weight_values.numel() / max(1, self.in_features * self.out_features)
        return f"in_features={self.in_features}, out_features={self.out_features}, density={density:.3f}"


class NMCompressedLinear(nn.Module):
    """An N:M weight at rest: ``weight_values`` ``[out, in * n / m]`` (the kept values of every group
    of ``m`` inputs, in order, zero-padded where a group kept fewer) and ``weight_indices`` (their
    positions in the group). Not run as is: :func:`load_sparse` makes a runnable layer of it."""

    def __init__(self, in_features: int, out_features: int, n: int, m: int, bias: bool, dtype=torch.float32):
        super().__init__()
        if in_features % m:
            raise TicketlabError(f"an N:M layer needs in_features ({in_features}) to be a multiple of {m}")
        self.in_features, self.out_features, self.n, self.m = in_features, out_features, n, m
        width = in_features // m * n
        self.register_buffer("weight_values", torch.zeros(out_features, width, dtype=dtype))
        self.register_buffer("weight_indices", torch.zeros(out_features, width, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, keep: torch.Tensor, n: int = 2, m: int = 4, name: str = "weight"
    ) -> NMCompressedLinear:
        """Compress ``linear.weight`` under ``keep``, which must keep at most ``n`` of every ``m``."""
        if keep.shape[-1] % m:
            raise TicketlabError(f"{name!r} has {keep.shape[-1]} inputs, not a multiple of {m}: not {n}:{m}")
        groups = keep.reshape(-1, m)
        counts = groups.sum(dim=1, dtype=torch.int32)
        if bool((counts > n).any()):
            first = int(torch.nonzero(counts > n)[0])
            row, group = divmod(first, keep.shape[-1] // m)
            raise TicketlabError(
                f"the mask of {name!r} is not {n}:{m}: group {group} of row {row} keeps "
                f"{int(counts[first])} of {m} (prune with --method nm --sparsity {1 - n / m:g})"
            )
        layer = cls(
            linear.in_features, linear.out_features, n, m, linear.bias is not None, linear.weight.dtype
        )
        # Kept positions first, in order (a stable sort of "pruned?"), then padding from the pruned.
        positions = torch.sort((~groups).to(torch.uint8), dim=1, stable=True).indices[:, :n]
        weight = (linear.weight.detach().cpu() * keep).reshape(-1, m)
        layer.weight_values = weight.gather(1, positions).reshape(linear.out_features, -1).contiguous()
        layer.weight_indices = positions.to(torch.uint8).reshape(linear.out_features, -1).contiguous()
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def dense_weight(self) -> torch.Tensor:
        values = self.weight_values.reshape(-1, self.n)
        dense = torch.zeros(values.shape[0], self.m, dtype=values.dtype, device=values.device)
        # Padding entries carry a zero value, so scattering them onto a kept position adds nothing.
        dense.scatter_add_(1, self.weight_indices.reshape(-1, self.n).long(), values)
        return dense.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TicketlabError("an N:M compressed layer is storage only: load the model with load_sparse()")


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return linear


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _linear_at(model: nn.Module, path: str) -> nn.Linear:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise TicketlabError(f"the model has no module {path!r}") from None
    if not isinstance(module, nn.Linear):
        raise TicketlabError(
            f"{path!r} is a {type(module).__name__}, not an nn.Linear: it cannot be made sparse"
        )
    return module


def sparsify(
    model: nn.Module, keep: Mapping[str, torch.Tensor], sparse_format: str, *, n: int = 2, m: int = 4
) -> dict[str, dict[str, int]]:
    """Replace, in place, the ``nn.Linear`` at each module path of ``keep`` by its sparse layout
    under those keep-bits; returns each layer's sizes (what :func:`load_sparse` rebuilds from)."""
    if sparse_format not in SPARSE_FORMATS:
        raise TicketlabError(
            f"unknown sparse format {sparse_format!r} (choose from {', '.join(SPARSE_FORMATS)})"
        )
    layers: dict[str, dict[str, int]] = {}
    for path, bits in keep.items():
        linear = _linear_at(model, path)
        if sparse_format == "csr":
            if linear.weight.dtype != torch.float32:
                raise TicketlabError(f"CSR export needs float32 weights; {path!r} is {linear.weight.dtype}")
            layer = CsrLinear.from_linear(linear, bits)
            sizes = {"nnz": int(layer.weight_values.numel())}
        else:
            layer = NMCompressedLinear.from_linear(linear, bits, n, m, name=f"{path}.weight")
            sizes = {"n": n, "m": m}
        layers[path] = {"in": linear.in_features, "out": linear.out_features, **sizes}
        _set_submodule(model, path, layer)
    return layers


def save_sparse(
    model: nn.Module,
    directory: str | os.PathLike,
    sparse_format: str,
    layers: Mapping[str, Mapping[str, int]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model made by :func:`sparsify`: config, weights, and the header (last)."""
    from safetensors.torch import save_model

    directory = Path(directory)
    model.config.save_pretrained(directory)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_model(model, tmp, metadata={"format": "pt"}))
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sparse_format": sparse_format,
        "model_class": type(model).__name__,
        "layers": {path: dict(sizes) for path, sizes in layers.items()},
        **(extra or {}),
    }
    write_json(directory / HEADER_NAME, header)
    return directory


def read_sparse_header(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / HEADER_NAME
    if not path.exists():
        raise TicketlabError(f"{directory} is not a sparse ticketlab model (no {HEADER_NAME})")
    header = read_json(path)
    if header.get("format") != FORMAT_NAME:
        raise TicketlabError(f"{path}: unknown format {header.get('format')!r}")
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise TicketlabError(
            f"{path}: format version {header['format_version']} is newer than this ticketlab"
        )
    if header.get("sparse_format") not in SPARSE_FORMATS:
        raise TicketlabError(f"{path}: unknown sparse format {header.get('sparse_format')!r}")
    return header


def _semi_structured(layer: NMCompressedLinear) -> nn.Linear:
    """A linear layer whose weight is torch's 2:4 semi-structured tensor (on the layer's GPU)."""
    from torch.sparse import to_sparse_semi_structured

    weight = layer.dense_weight()
    dtype = weight.dtype
    try:
        sparse = to_sparse_semi_structured(weight)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TicketlabError(
            f"torch cannot make a {tuple(weight.shape)} {dtype} weight 2:4 sparse: {first_line}"
        ) from error
    return _linear_from(sparse, layer.bias)


def load_sparse(
    directory: str | os.PathLike,
    *,
    dense: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """Rebuild a model written by :func:`save_sparse`, in eval mode.

    ``csr`` folders load with :class:`CsrLinear` layers (CPU). ``2:4`` folders load onto a CUDA
    GPU (``device``, default ``cuda``) in ``dtype`` with semi-structured weights; without a GPU
    that is refused, and ``dense=True`` gives the masked dense model instead (on the CPU, float32
    as stored). ``dense=True`` works for ``csr`` folders too.
    """
    header = read_sparse_header(directory)
    sparse_format = header["sparse_format"]
    if sparse_format == "2:4" and not dense:
        device = torch.device(device or "cuda")
        if device.type != "cuda" or not torch.cuda.is_available():
            raise TicketlabError(
                f"{directory}: 2:4 semi-structured weights run only on a CUDA GPU "
                "(torch.sparse.to_sparse_semi_structured) and none is available; load with dense=True "
                "for the masked dense model, or use the csr format on a CPU"
            )
    model = model_from_header(directory, header.get("model_class"))
    for path, sizes in header["layers"].items():
        bias = _linear_at(model, path).bias is not None
        if sparse_format == "csr":
            layer: nn.Module = CsrLinear(sizes["in"], sizes["out"], sizes["nnz"], bias)
        else:
            layer = NMCompressedLinear(sizes["in"], sizes["out"], sizes["n"], sizes["m"], bias)
        _set_submodule(model, path, layer)
    load_weights_strict(model, Path(directory) / WEIGHTS_NAME)
    if sparse_format == "2:4" and not dense:
        model.to(device=device, dtype=dtype)  # the uint8 positions stay uint8
    for path in header["layers"]:
        layer = model.get_submodule(path)
        if sparse_format == "csr":
            try:
                layer.weight_csr(check=True)
            except RuntimeError as error:
                raise TicketlabError(
                    f"{directory}: corrupt CSR weight {path!r} ({str(error).splitlines()[0]})"
                ) from error
        if dense:
            _set_submodule(model, path, _linear_from(layer.dense_weight(), layer.bias))
        elif sparse_format == "2:4":
            _set_submodule(model, path, _semi_structured(layer))
    model.ticketlab_sparse = header
    model.eval()
    return model
