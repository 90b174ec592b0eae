"""Building an MLM head for an encoder that has none: train its transform with the encoder frozen.

The decoder is the (frozen) word-embedding matrix, so only the dense transform, its LayerNorm and
the output bias learn: a few hundred steps are enough for a usable head. The encoder runs once per
batch without gradients, and logits are computed only at the MLM targets (15% of the tokens),
which keeps the vocabulary-sized matmul, the expensive part, small.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ticketlab.data.text import TextBlocks
from ticketlab.errors import TicketlabError
from ticketlab.masks.fingerprint import combined, tensor_digest
from ticketlab.models.adapters import EncoderAdapter
from ticketlab.models.mlm_head import MlmHead, word_embeddings
from ticketlab.training.objectives import MlmMasking, mlm_loss


def encoder_digest(encoder: nn.Module) -> str:
    """A digest of the encoder's prunable weights (which head belongs to which model)."""
    adapter = EncoderAdapter(encoder)
    return combined({n: tensor_digest(w) for n, w in adapter.prunable_weights("encoder+embeddings").items()})


@torch.no_grad()
def _target_features(
    encoder: nn.Module, text: TextBlocks, masking: MlmMasking, seed: int, batch_size: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states at the MLM targets of the whole text ``[T, H]`` and their labels ``[T]``.

    The encoder is frozen, so one pass suffices: every head step then costs only the head itself.
    """
    from tqdm.auto import tqdm

    device = next(encoder.parameters()).device
    features, labels = [], []
    for start, ids, attention in tqdm(
        text.batches(batch_size), desc="encoding text for the MLM head", disable=not progress, leave=False
    ):
        ids, attention = ids.to(device), attention.to(device)
        corrupted, target_labels = masking(ids, seed=seed, keys=range(start, start + ids.shape[0]))
        hidden = encoder(input_ids=corrupted, attention_mask=attention).last_hidden_state
        targets = target_labels != -100
        features.append(hidden[targets])
        labels.append(target_labels[targets])
    return torch.cat(features), torch.cat(labels)


def train_mlm_head(
    encoder: nn.Module,
    text: TextBlocks,
    steps: int,
    masking: MlmMasking,
    *,
    targets_per_step: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[MlmHead, dict[str, Any]]:
    """A new head for ``encoder`` trained for ``steps`` minibatches of MLM targets of ``text``.

    The text is corrupted once (seeded) and encoded once; ``batch_size`` is only the encoding batch.
    Returns the head and the record of how it was built.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise TicketlabError(f"MLM head training needs at least one step, got {steps}")
    if len(text) == 0:
        raise TicketlabError("MLM head training needs text")
    device = next(encoder.parameters()).device
    start = time.perf_counter()
    was_training = encoder.training
    encoder.eval()
    features, labels = _target_features(encoder, text, masking, seed, batch_size, progress)
    encoder.train(was_training)
    if labels.numel() == 0:
        raise TicketlabError("the text has no MLM targets to train a head on")
    head = MlmHead.for_encoder(encoder).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    decoder = word_embeddings(encoder).weight.detach()
    order_generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=order_generator)
    position = 0
    losses: list[float] = []
    for step in tqdm(range(steps), desc="training MLM head", disable=not progress, leave=False):
        if position >= labels.numel():
            order = torch.randperm(labels.numel(), generator=order_generator)
            position = 0
        rows = order[position : position + targets_per_step].to(device)
        position += targets_per_step
        loss = mlm_loss(head(features[rows], decoder), labels[rows])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TicketlabError(f"MLM head training diverged (loss {value}) at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(value)
    head.eval()
    tail = losses[-max(1, min(20, len(losses))) :]
    record = {
        "built": True,
        "steps": steps,
        "targets_per_step": targets_per_step,
        "num_targets": int(labels.numel()),
        "lr": lr,
        "seed": seed,
        "text": text.source,
        "num_sequences": len(text),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "wall_time_s": time.perf_counter() - start,
        "encoder_digest": encoder_digest(encoder),
        "note": "decoder tied to the word embeddings; transform and bias trained with the encoder frozen",
    }
    return head, record
