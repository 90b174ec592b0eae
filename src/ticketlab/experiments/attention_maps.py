"""Every head's attention maps on a fixed, seeded sample of inputs (``ticketlab attention-maps``).

The model runs with transformers' eager attention (``attn_implementation="eager"``: the SDPA
kernels do not return attention probabilities, and v5 warns and returns none for
``output_attentions=True``). A structured mask goes on through ticketlab's gates
(:func:`ticketlab.masks.apply_structured_mask`): a gated head still computes its attention map,
but its output is zero, so the maps of the *later* layers are those of the pruned model.

Each map is cut to its input's length (special tokens included); padding never enters a map,
because the padded keys get zero probability and the padded rows are cut off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ticketlab.data.attention_maps import AttentionMaps
from ticketlab.errors import TicketlabError

Input = tuple[str, str | None]  # one text, or a sentence pair


def sample_inputs(
    *,
    task: str | None = None,
    text: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "dev",
    num_examples: int = 20,
    seed: int = 0,
) -> list[Input]:
    """``num_examples`` inputs drawn without replacement (seeded) from a GLUE task's split or the
    lines of a text file, in the order drawn."""
    from ticketlab.data.glue import load_glue_examples
    from ticketlab.data.text import read_text_lines

    if (task is None) == (text is None):
        raise TicketlabError("give exactly one of a task and a text file")
    if num_examples < 1:
        raise TicketlabError(f"the number of examples must be at least 1, got {num_examples}")
    if text is not None:
        pool: list[Input] = [(line, None) for line in read_text_lines(text)]
    else:
        examples = load_glue_examples(task, split, data_dir)
        pairs = examples.text_b or [None] * len(examples)
        pool = list(zip(examples.text_a, pairs))
    if not pool:
        raise TicketlabError(f"no inputs in {text or task}")
    count = min(num_examples, len(pool))
    chosen = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[i] for i in chosen.tolist()]


@torch.no_grad()
def extract_attention_maps(
    model_name: str,
    inputs: Sequence[Input],
    *,
    mask: str | os.PathLike | None = None,
    max_length: int = 128,
    batch_size: int = 16,
    info: dict[str, Any] | None = None,
) -> AttentionMaps:
    """The attention maps of every head of ``model_name`` (optionally through a structured mask)
    on ``inputs``: one ``[layers, heads, n, n]`` array per input."""
    from ticketlab.masks import StructuredMask, apply_structured_mask, load_mask
    from ticketlab.models import load_encoder, load_tokenizer

    model = load_encoder(model_name, attn_implementation="eager")
    tokenizer = load_tokenizer(model_name)
    gates = None
    if mask is not None:
        loaded = load_mask(mask)
        if not isinstance(loaded, StructuredMask):
            raise TicketlabError(f"{mask} is not a structured (head/FFN) mask")
        gates = apply_structured_mask(model, loaded)
    maps, examples = [], []
    try:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            firsts = [a for a, _ in chunk]
            seconds = [b for _, b in chunk]
            encoded = tokenizer(
                firsts,
                seconds if any(s is not None for s in seconds) else None,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            outputs = model(**encoded, output_attentions=True)
            if not outputs.attentions:
                raise TicketlabError(f"{model_name} returned no attention probabilities")
            stacked = torch.stack(outputs.attentions, dim=1)  # [batch, layers, heads, n, n]
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            for row, length in enumerate(lengths):
                ids = encoded["input_ids"][row, :length].tolist()
                maps.append(stacked[row, :, :, :length, :length].float().numpy().copy())
                examples.append(
                    {
                        "text": chunk[row][0],
                        **({"text_b": chunk[row][1]} if chunk[row][1] is not None else {}),
                        "tokens": tokenizer.convert_ids_to_tokens(ids),
                    }
                )
    finally:
        if gates is not None:
            gates.remove()
    if not maps:
        raise TicketlabError("no inputs to compute attention maps on")
    details = {"model": str(model_name), "mask": None if mask is None else str(mask), **(info or {})}
    return AttentionMaps(maps, examples, details)


def write_attention_maps(
    model_name: str,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    text: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "dev",
    num_examples: int = 20,
    seed: int = 0,
    mask: str | os.PathLike | None = None,
    max_length: int = 128,
) -> AttentionMaps:
    """Sample the inputs, compute the maps and write the folder ``out``."""
    inputs = sample_inputs(
        task=task, text=text, data_dir=data_dir, split=split, num_examples=num_examples, seed=seed
    )
    source = {"task": task, "split": split} if task is not None else {"text": str(text)}
    maps = extract_attention_maps(
        model_name,
        inputs,
        mask=mask,
        max_length=max_length,
        info={"source": source, "seed": seed, "max_length": max_length},
    )
    maps.save(Path(out))
    return maps
