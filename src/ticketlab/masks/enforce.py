"""Putting a mask on a live model and keeping it there while any optimizer trains it.

Two mechanisms, both cheap: a gradient hook zeroes the gradient of pruned weights (so Adam's
moments for them stay zero), and an optimizer post-step hook re-zeroes the pruned weights (so
decoupled weight decay, momentum or any other update cannot move them). Parameters keep their
names: a checkpoint saved afterwards loads into a plain model. Unlike ``torch.nn.utils.prune`` there
is no reparametrisation and no extra multiply in the forward pass.

Both zero by multiplying in place with a 0/1 keep mask held as ``uint8``: one byte per masked
weight, and as fast as a mask in the parameter's own dtype (5.6 against 5.1 ms for MiniLM-L6's
10.6M encoder weights on one core; 4 bytes per weight in float32), because a uint8 operand is
widened inside the vectorised multiply. Slower forms measured alike: a ``bool`` keep mask (10.4 ms:
bool operands take a slower casting path), ``masked_fill_`` (34.5 ms: it branches per element,
so its cost grows with the sparsity; this made short-sequence fine-tuning steps, CoLA at batch 16,
25-30% slower than dense), ``torch.where(..., out=param)`` (35.5 ms), and converting a bool mask
chunk by chunk (18.5 ms).

In whole training steps the two multiplies are the whole cost: MiniLM-L6 at 32 x 128 tokens, one
thread, the masked step's CPU time is the dense step's within noise (paired ratio 0.98), and
the profiler finds 30 ms in the gradient hooks and 11 ms re-zeroing, 0.7% of a 6 s step. Zeroing
the gradients once after ``backward()`` instead of in per-tensor hooks measured the same (0.99),
so the hooks stay: they cost nothing measurable inside backward and work in any loop. An earlier
wall-time ratio of 1.10 on two threads did not reproduce in CPU time; most likely the load of a
shared machine (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.profiler import record_function

from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.masks.fingerprint import BLAKE2B, tensor_digest
from ticketlab.masks.structured import StructuredMask
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models.adapters import EncoderAdapter

# Roles that a model may lack without the mask being wrong for it (RoBERTa task models drop the pooler).
OPTIONAL_ROLES = ("pooler",)


@dataclass
class FitReport:
    """What :func:`check_mask_fits` found: matrices to mask, and those skipped with the reason."""

    names: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def check_mask_fits(
    model: nn.Module, mask: UnstructuredMask, *, allow_fingerprint_mismatch: bool = False
) -> FitReport:
    """Raise :class:`MaskMismatchError` naming the first matrix whose name, shape or weights differ."""
    if isinstance(mask, StructuredMask):
        raise TicketlabError(
            "a structured mask is applied with head/FFN gates; to apply it as weight bits, "
            "expand it first with StructuredMask.to_unstructured(adapter)"
        )
    adapter = EncoderAdapter(model)
    report = FitReport()
    recorded = mask.provenance.fingerprint or {}
    digests = recorded.get("kept", {})
    # Check with the algorithm the mask was written with (BLAKE2b for masks from before XXH3).
    algorithm = recorded.get("algorithm", BLAKE2B)
    for name, bits in mask.tensors.items():
        try:
            weight = adapter.parameter(name)
        except AttributeError:
            if mask.info[name].role in OPTIONAL_ROLES:
                report.skipped[name] = f"the model has no {mask.info[name].role}"
                continue
            source = mask.provenance.source_model or "another model"
            raise MaskMismatchError(
                f"mask matrix {name!r} does not exist in this {type(model).__name__} "
                f"(the mask was made for {source})"
            ) from None
        if mask.info[name].role in OPTIONAL_ROLES and adapter.full_name(name) in getattr(
            model, "ticketlab_untrained", frozenset()
        ):
            report.skipped[name] = (
                f"the model's {mask.info[name].role} was not pre-trained (randomly initialised)"
            )
            continue
        if tuple(weight.shape) != tuple(bits.shape):
            raise MaskMismatchError(
                f"mask matrix {name!r} has shape {tuple(bits.shape)}, the model's has {tuple(weight.shape)}"
            )
        if name in digests and not allow_fingerprint_mismatch:
            found = tensor_digest(weight, bits, algorithm)
            if found != digests[name]:
                raise MaskMismatchError(
                    f"the kept weights of {name!r} differ from those of the mask's source model "
                    f"({mask.provenance.source_model}); pass allow_fingerprint_mismatch=True "
                    "(--allow-fingerprint-mismatch) to apply it anyway, e.g. to fine-tuned weights"
                )
        report.names.append(name)
    return report


class MaskEnforcer:
    """Holds an unstructured mask on a model: pruned weights are exactly zero after every step.

    Typical use::

        enforcer = apply_mask(model, mask)
        optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.01)
        enforcer.attach(optimizer)      # re-zeroes after every optimizer.step()

    Call :meth:`remove` to detach the hooks (the weights stay as they are).
    """

    def __init__(self, model: nn.Module, mask: UnstructuredMask, *, allow_fingerprint_mismatch: bool = False):
        self.model = model
        self.mask = mask
        self.report = check_mask_fits(model, mask, allow_fingerprint_mismatch=allow_fingerprint_mismatch)
        adapter = EncoderAdapter(model)
        self.parameters: dict[str, nn.Parameter] = {n: adapter.parameter(n) for n in self.report.names}
        # Only matrices with something pruned need hooks. uint8, not the parameter's dtype: one byte
        # per weight at the speed of a float mask (see the module's docstring).
        self._keep: dict[str, torch.Tensor] = {
            n: mask.tensors[n].to(device=p.device, dtype=torch.uint8)
            for n, p in self.parameters.items()
            if not bool(mask.tensors[n].all())
        }
        self._handles: list = []
        self._install_gradient_hooks()
        self.enforce()

    def _keep_like(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        keep = self._keep[name]
        # The model moved (accelerator.prepare) after the mask was applied; a change of dtype
        # needs nothing, a uint8 operand multiplies into any floating dtype.
        if keep.device != tensor.device:
            keep = self._keep[name] = keep.to(device=tensor.device)
        return keep

    def keep_mask_bytes(self) -> int:
        """Memory the enforcer holds for its keep masks (one byte per weight of a masked matrix)."""
        return sum(keep.numel() * keep.element_size() for keep in self._keep.values())

    def _install_gradient_hooks(self) -> None:
        for name in self._keep:
            param = self.parameters[name]

            # After the gradient is accumulated into .grad, zero its pruned entries in place: no new
            # tensor per step, and clipping and Adam's moments see the sparse network's gradient.
            def zero_pruned_gradient(param: torch.Tensor, name: str = name) -> None:
                if param.grad is not None:
                    with record_function("ticketlab.mask_gradient"):  # named in profiles
                        param.grad.mul_(self._keep_like(name, param.grad))

            self._handles.append(param.register_post_accumulate_grad_hook(zero_pruned_gradient))

    @torch.no_grad()
    def enforce(self) -> None:
        """Set every pruned weight to exactly zero (finite weights: a NaN stays NaN, and the
        training loop's NaN guard stops the run)."""
        with record_function("ticketlab.rezero_weights"):
            for name in self._keep:
                param = self.parameters[name]
                param.mul_(self._keep_like(name, param))

    def attach(self, optimizer: torch.optim.Optimizer) -> MaskEnforcer:
        """Re-zero the pruned weights after every ``optimizer.step()``."""
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.enforce()))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> MaskEnforcer:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_mask(
    model: nn.Module,
    mask: UnstructuredMask,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    allow_fingerprint_mismatch: bool = False,
) -> MaskEnforcer:
    """Check that ``mask`` fits ``model``, zero the pruned weights, and keep them zero from now on."""
    enforcer = MaskEnforcer(model, mask, allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    if optimizer is not None:
        enforcer.attach(optimizer)
    return enforcer
