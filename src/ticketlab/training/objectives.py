"""Pre-training objectives: BERT's masked-LM corruption and loss, and hidden-state distillation.

MLM masking is seeded per *sequence* (a generator seeded from ``(seed, key)`` for each row), so
the same sequence gets the same corruption in every run, for every ticket and at any batch size:
MLM losses of different tickets on the same text are directly comparable. Draws happen on the
CPU, so the corruption is also the same on any device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ticketlab.errors import TicketlabError

IGNORE_INDEX = -100
KD_LOSSES: tuple[str, ...] = ("mse", "cosine")


@dataclass(frozen=True)
class MlmMasking:
    """BERT's corruption: ``probability`` of the non-special tokens are chosen as targets; of those
    ``mask_fraction`` become ``[MASK]``, ``random_fraction`` a uniformly random vocabulary token, the
    rest stay unchanged."""

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int | None = None, **overrides) -> MlmMasking:
        if tokenizer.mask_token_id is None:
            raise TicketlabError(f"tokenizer {type(tokenizer).__name__} has no mask token; MLM needs one")
        return cls(
            mask_token_id=int(tokenizer.mask_token_id),
            vocab_size=int(vocab_size or len(tokenizer)),
            special_ids=tuple(sorted(int(i) for i in tokenizer.all_special_ids)),
            **overrides,
        )

    def special_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True at special tokens (CLS, SEP, PAD, UNK, MASK): never chosen as targets."""
        return torch.isin(input_ids, torch.tensor(self.special_ids, dtype=input_ids.dtype))

    def __call__(
        self, input_ids: torch.Tensor, seed: int, keys: Iterable[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(corrupted input_ids, labels)`` for a ``[B, L]`` batch; labels are ``-100`` off target.

        ``keys`` names each row (e.g. its block index in the text): row ``i`` is corrupted with a
        generator seeded from ``(seed, keys[i])`` alone.
        """
        cpu_ids = input_ids.detach().cpu()
        keys = list(keys)
        if len(keys) != cpu_ids.shape[0]:
            raise ValueError(f"{len(keys)} keys for {cpu_ids.shape[0]} rows")
        special = self.special_mask(cpu_ids)
        length = cpu_ids.shape[1]
        chosen_p, replace_p, random_tok = [], [], []
        for key in keys:
            generator = row_generator(seed, key)
            chosen_p.append(torch.rand(length, generator=generator))
            replace_p.append(torch.rand(length, generator=generator))
            random_tok.append(torch.randint(self.vocab_size, (length,), generator=generator))
        chosen = (torch.stack(chosen_p) < self.probability) & ~special
        replace_p = torch.stack(replace_p)
        to_mask = chosen & (replace_p < self.mask_fraction)
        to_random = (
            chosen
            & (replace_p >= self.mask_fraction)
            & (replace_p < self.mask_fraction + self.random_fraction)
        )
        corrupted = cpu_ids.clone()
        corrupted[to_mask] = self.mask_token_id
        corrupted[to_random] = torch.stack(random_tok)[to_random]
        labels = torch.where(chosen, cpu_ids, torch.full_like(cpu_ids, IGNORE_INDEX))
        return corrupted.to(input_ids.device), labels.to(input_ids.device)


def row_generator(seed: int, key: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, key)`` through numpy's SeedSequence (well mixed)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(key) & 0xFFFFFFFF]).generate_state(
        2, np.uint32
    )
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def mlm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over target positions and their count (``logits`` ``[..., V]``)."""
    targets = labels.reshape(-1)
    count = int((targets != IGNORE_INDEX).sum())
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total, count


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the target positions."""
    total, count = mlm_loss_sum(logits, labels)
    return total / max(count, 1)


def _check_kind(kind: str) -> None:
    if kind not in KD_LOSSES:
        raise TicketlabError(f"unknown distillation loss {kind!r} (choose from {', '.join(KD_LOSSES)})")


def kd_token_losses(
    student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor], kind: str = "mse"
) -> torch.Tensor:
    """Per-token distillation loss ``[B, L]``, averaged over the transformer layers.

    ``*_hidden`` are the models' ``hidden_states`` (embedding output first, then one per layer);
    the embedding output is skipped. ``mse``: mean squared difference over the hidden dimension;
    ``cosine``: 1 - cosine similarity of the two hidden vectors.
    """
    _check_kind(kind)
    if len(student_hidden) != len(teacher_hidden):
        raise TicketlabError(
            f"student has {len(student_hidden)} hidden states, teacher {len(teacher_hidden)}"
        )
    if len(student_hidden) < 2:
        raise TicketlabError("distillation needs the hidden states of at least one transformer layer")
    per_layer = []
    for student, teacher in zip(student_hidden[1:], teacher_hidden[1:]):
        student, teacher = student.float(), teacher.float()
        if kind == "mse":
            per_layer.append((student - teacher).pow(2).mean(dim=-1))
        else:
            per_layer.append(1.0 - F.cosine_similarity(student, teacher, dim=-1))
    return torch.stack(per_layer).mean(dim=0)


def kd_loss_sum(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    kind: str = "mse",
) -> tuple[torch.Tensor, int]:
    """Summed per-token distillation loss over the real (non-padding) tokens, and their count."""
    per_token = kd_token_losses(student_hidden, teacher_hidden, kind)
    real = attention_mask.to(per_token.device).bool()
    return per_token[real].sum(), int(real.sum())


def kd_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    kind: str = "mse",
) -> torch.Tensor:
    """Token-mean (padding excluded) of the layer-averaged distillation loss.

    Every layer is averaged over the same tokens, so this equals the mean over layers of each
    layer's token-mean loss (TAMT: MSE for evaluation, cosine distance for training).
    """
    total, count = kd_loss_sum(student_hidden, teacher_hidden, attention_mask, kind)
    return total / max(count, 1)
