"""Running a model over a data loader and gathering its outputs from every process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def gather_outputs(
    model: nn.Module,
    dataloader: Any,
    accelerator: Any,
    names: Sequence[str] = ("logits",),
    *,
    description: str = "evaluating",
    quiet: bool = False,
) -> dict[str, np.ndarray]:
    """``{name: array}`` of the model's outputs over ``dataloader`` (already prepared by the
    accelerator), in data order, as float32, with the padding that evenly sharded batches add
    removed (``gather_for_metrics``)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    bar = tqdm(
        dataloader, desc=description, leave=False, disable=quiet or not accelerator.is_local_main_process
    )
    for batch in bar:
        outputs = model(**batch)
        for name in names:
            gathered = accelerator.gather_for_metrics(outputs[name].detach().float())
            chunks[name].append(gathered.cpu().numpy())
    if was_training:
        model.train()
    return {name: np.concatenate(parts) if parts else np.zeros((0,)) for name, parts in chunks.items()}
