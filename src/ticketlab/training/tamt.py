"""The TAMT training step as components: objective, optimizer, and one step.

Kept independent of any particular loop: :class:`TamtObjective` turns a batch into a loss,
:func:`tamt_loss` seeds it by step, :func:`tamt_optimizer` builds the optimizer over the scores
(the paper's BERT Adam, :class:`ticketlab.training.bertadam.BertAdam`, or torch's AdamW for
comparison), and :func:`tamt_step` does forward, backward and update for a loop of your own. The
driver in ``ticketlab.experiments.tamt`` runs the shared training loop with ``tamt_loss`` as its loss.

Why the optimizer matters: TAMT's score gradients are tiny (``dL/dscore = dL/dW_eff * W``; the
median |g| per matrix is 1e-7 to 1e-6 on MiniLM-L6). AdamW's ``m / (sqrt(v) + 1e-8)`` is then
about ``sign(g)``: every score with a steady sign moves by about ``lr`` per step whatever its
gradient, and with the ``2c`` / ``0`` initialisation many kept and pruned scores cross at the same
step (about ``c / lr``), swapping 7-19% of a matrix's kept weights at once, blind to magnitude.
BertAdam's epsilon 1e-6 keeps the step proportional to the gradient for such scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ticketlab.errors import TicketlabError
from ticketlab.models.mlm_head import MlmHead, word_embeddings
from ticketlab.pruning.tamt import LearnedMask
from ticketlab.training.bertadam import DEFAULT_MAX_GRAD_NORM, BertAdam
from ticketlab.training.distributed import all_reduce_sum, launched_processes
from ticketlab.training.objectives import MlmMasking, kd_loss_sum, mlm_loss_sum

OBJECTIVES: tuple[str, ...] = ("mlm", "kd", "mlm+kd")

# TAMT's settings: MLM lr 5e-5 without weight decay; KD lr 2e-5 with weight decay 0.01 on the
# scores. mlm+kd is not specified by the paper; ticketlab uses the KD settings for it.
DEFAULT_OPTIMIZER: dict[str, dict[str, float]] = {
    "mlm": {"lr": 5e-5, "weight_decay": 0.0},
    "kd": {"lr": 2e-5, "weight_decay": 0.01},
    "mlm+kd": {"lr": 2e-5, "weight_decay": 0.01},
}
# bertadam: BERT's Adam, as the original (no bias correction, epsilon 1e-6, per-tensor clipping),
# with a linear decay to zero over the run. adamw: torch's AdamW at a constant rate, what ticketlab
# ran before (sign descent on TAMT's tiny gradients: see the module docstring).
OPTIMIZERS: tuple[str, ...] = ("bertadam", "adamw")
LR_SCHEDULE: dict[str, str] = {"bertadam": "linear", "adamw": "constant"}


def check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise TicketlabError(f"unknown TAMT optimizer {optimizer!r} (choose from {', '.join(OPTIMIZERS)})")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise TicketlabError(f"unknown TAMT objective {objective!r} (choose from {', '.join(OBJECTIVES)})")


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A seed for everything random in one step (dropout), from ``(seed, step)`` alone: resumable.
    Each further process of a launch (``rank``) draws its own noise for its slice of the batch."""
    entropy = [int(seed) & 0xFFFFFFFF, int(step)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _share_of_global_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """``total / count`` on one process. Under a launch of N processes: this process's share of
    the mean over all processes' terms, times N (the global count summed over the processes), so
    the processes' mean of it (the loop's reported loss, DDP-style averaged gradients) is the
    global batch's mean, as one process with the whole batch computes it."""
    world = launched_processes()
    if world <= 1:
        return total / max(count, 1)
    counted = all_reduce_sum(torch.tensor(float(count), dtype=torch.float64))
    return total * (world / max(float(counted), 1.0))


@dataclass
class TamtObjective:
    """The loss of one batch for the learned mask on ``encoder``.

    ``mlm``: masked-LM loss of the masked encoder (student) through ``head`` (decoder tied to the
    masked word embeddings). ``kd``: token-mean cosine distance (or ``kd_kind``) of the student's
    layer outputs to the dense teacher's, on the clean text. ``mlm+kd``: the sum, both on the
    corrupted text (one student pass). The teacher is the same model with the mask switched off,
    in eval mode (train mode, as the original's teacher, with ``teacher_dropout``); the student
    runs in train mode (dropout) when ``dropout`` is set.
    """

    encoder: nn.Module
    learned: LearnedMask
    objective: str
    head: MlmHead | None = None
    masking: MlmMasking | None = None
    kd_kind: str = "cosine"
    masking_seed: int = 0
    dropout: bool = True
    teacher_dropout: bool = False

    def __post_init__(self) -> None:
        check_objective(self.objective)
        if "mlm" in self.objective and (self.head is None or self.masking is None):
            raise TicketlabError(f"objective {self.objective!r} needs an MLM head and a masking scheme")

    def _teacher_hidden(self, ids: torch.Tensor, attention: torch.Tensor) -> Sequence[torch.Tensor]:
        # The original's teacher ran with dropout on; ticketlab's is deterministic unless asked.
        self.encoder.train(self.teacher_dropout)
        with torch.no_grad(), self.learned.dense():
            return self.encoder(
                input_ids=ids, attention_mask=attention, output_hidden_states=True
            ).hidden_states

    def loss(
        self, ids: torch.Tensor, attention: torch.Tensor, keys: Sequence[int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch loss and its parts; ``keys`` name the rows for the seeded MLM corruption."""
        parts: dict[str, torch.Tensor] = {}
        inputs = ids
        labels = None
        if "mlm" in self.objective:
            inputs, labels = self.masking(ids, seed=self.masking_seed, keys=keys)
        teacher = self._teacher_hidden(inputs, attention) if "kd" in self.objective else None
        self.encoder.train(self.dropout)
        # One masked weight per matrix per step: the tied decoder reuses the embeddings' (cached()
        # must not cover the teacher's pass above, which reads the dense weights).
        with parametrize.cached():
            student = self.encoder(
                input_ids=inputs, attention_mask=attention, output_hidden_states=teacher is not None
            )
            # Token means (kd: real tokens; mlm: targets), over the whole batch of all processes.
            if teacher is not None:
                parts["kd"] = _share_of_global_mean(
                    *kd_loss_sum(student.hidden_states, teacher, attention, self.kd_kind)
                )
            if labels is not None:
                targets = labels != -100
                logits = self.head(student.last_hidden_state[targets], word_embeddings(self.encoder).weight)
                parts["mlm"] = _share_of_global_mean(*mlm_loss_sum(logits, labels[targets]))
        total = sum(parts.values())
        values = {k: v.detach().double() for k, v in parts.items()}
        if launched_processes() > 1:  # reported as the global batch's (the processes' mean)
            values = {k: all_reduce_sum(v) / launched_processes() for k, v in values.items()}
        return total, {k: float(v) for k, v in values.items()}


def tamt_optimizer(
    learned: LearnedMask,
    head: MlmHead | None,
    objective: str,
    lr: float | None = None,
    weight_decay: float | None = None,
    kind: str = "bertadam",
    max_grad_norm: float | None = DEFAULT_MAX_GRAD_NORM,
) -> torch.optim.Optimizer:
    """The optimizer over the scores (with the objective's weight decay) and, for MLM, the head's
    transform and bias (no weight decay): ``bertadam`` (the paper's) or ``adamw`` (torch's, with
    its epsilon 1e-8 and bias correction; ``max_grad_norm`` is BertAdam's per-tensor clipping)."""
    check_optimizer(kind)
    defaults = DEFAULT_OPTIMIZER[objective]
    lr = defaults["lr"] if lr is None else lr
    weight_decay = defaults["weight_decay"] if weight_decay is None else weight_decay
    groups = [{"params": list(learned.parameters()), "weight_decay": weight_decay}]
    if head is not None and "mlm" in objective:
        groups.append({"params": list(head.parameters()), "weight_decay": 0.0})
    if kind == "bertadam":
        return BertAdam(groups, lr=lr, max_grad_norm=max_grad_norm)
    # foreach=False: the same arithmetic on every device count and resume (no grouping by device).
    return torch.optim.AdamW(groups, lr=lr, foreach=False)


def optimizer_record(optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """What the provenance of a mask says about its optimizer (first group: the scores)."""
    group = optimizer.param_groups[0]
    bertadam = isinstance(optimizer, BertAdam)
    return {
        "name": "bertadam" if bertadam else "adamw",
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "weight_decay": group["weight_decay"],
        "max_grad_norm": group["max_grad_norm"] if bertadam else None,  # BertAdam's, per tensor
        "bias_correction": not bertadam,
        "decoupled_weight_decay": "added to the update before the lr multiply"
        if bertadam
        else "torch.optim.AdamW (p -= lr * weight_decay * p)",
    }


def tamt_loss(
    objective: TamtObjective,
    ids: torch.Tensor,
    attention: torch.Tensor,
    keys: Sequence[int],
    seed: int,
    step: int,
    rank: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of step ``step`` (and its parts), with dropout seeded from ``(seed, step)`` alone
    (and the process's ``rank`` under a launch, each drawing its own)."""
    devices = [ids.device.index or 0] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(step_seed(seed, step, rank))
        return objective.loss(ids, attention, keys)


def tamt_step(
    objective: TamtObjective,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    attention: torch.Tensor,
    keys: Sequence[int],
    seed: int,
    step: int,
) -> dict[str, float]:
    """One update of the scores (and head), for a loop of your own (``run_tamt`` runs the shared
    training loop on :func:`tamt_loss`, with the same arithmetic)."""
    loss, parts = tamt_loss(objective, ids, attention, keys, seed, step)
    value = float(loss.detach())
    if not np.isfinite(value):
        raise TicketlabError(f"TAMT loss is {value} at step {step}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": value, **parts}
