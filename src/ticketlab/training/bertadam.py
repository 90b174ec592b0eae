"""BERT's Adam ("BertAdam"): the optimizer the original BERT, BERT-Tickets and TAMT code train with.

It differs from ``torch.optim.AdamW`` in three ways, and for TAMT's mask scores the differences
decide the result (docs/tamt.md):

- **No bias correction.** The step is ``m / (sqrt(v) + eps)`` with the raw moving averages
  (for a steady gradient much larger than ``eps`` that is about 3x ``lr`` at the first step and up
  to 6.5x near the tenth, falling to 1x over a few thousand steps).
- **epsilon 1e-6** (torch: 1e-8). TAMT's score gradients are tiny (median |g| 1e-7 to 1e-6 on
  MiniLM-L6), so with 1e-8 ``m / sqrt(v)`` is about ``sign(g)`` for every score: sign descent.
  With 1e-6 the step keeps the size of the gradient.
- **Each tensor's gradient is clipped to L2 norm** ``max_grad_norm`` (1.0) before the moments,
  one tensor at a time (not one global norm).

Weight decay is decoupled as in the original: ``weight_decay * p`` is added to the update before
the learning-rate multiply, ``p -= lr * (m / (sqrt(v) + eps) + weight_decay * p)``.

The learning rate is the group's ``lr`` at the time of the step: a schedule (TAMT: linear decay
to zero over the run) is the training loop's ``LambdaLR``, not part of the optimizer (the
original multiplied it in from its own step counter; the arithmetic is the same).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ticketlab.errors import TicketlabError

DEFAULT_EPS = 1e-6
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_MAX_GRAD_NORM = 1.0


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, epsilon 1e-6, per-tensor gradient clipping, decoupled decay.

    ``params`` and the keyword arguments as ``torch.optim.AdamW`` (``max_grad_norm <= 0`` or None:
    no clipping). The state per parameter is ``step``, ``exp_avg`` and ``exp_avg_sq`` (the names
    AdamW uses, so checkpoints of either store the same keys).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 2e-5,
        betas: tuple[float, float] = DEFAULT_BETAS,
        eps: float = DEFAULT_EPS,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = DEFAULT_MAX_GRAD_NORM,
    ):
        if not lr >= 0.0:
            raise TicketlabError(f"BertAdam learning rate must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise TicketlabError(f"BertAdam betas must be in [0, 1), got {tuple(betas)}")
        if not eps >= 0.0:
            raise TicketlabError(f"BertAdam epsilon must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise TicketlabError(f"BertAdam weight decay must be >= 0, got {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient (clipping its gradient in place)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]  # (a list after a JSON round trip of the state)
            max_norm = group["max_grad_norm"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TicketlabError("BertAdam does not support sparse gradients")
                if max_norm is not None and max_norm > 0:
                    # torch's clipping (scale max_norm / (norm + 1e-6) when above): one tensor alone.
                    torch.nn.utils.clip_grad_norm_([p], max_norm, foreach=False)
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                # m / (sqrt(v) + eps), no bias correction: the same arithmetic as the expression,
                # in one temporary instead of three full-size ones per tensor and step.
                update = torch.sqrt(exp_avg_sq)
                update.add_(group["eps"])
                torch.div(exp_avg, update, out=update)
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss
