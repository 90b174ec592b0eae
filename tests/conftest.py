"""Shared fixtures: tiny models built from configs, and the real-data tier's ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ticketlab.models.tiny import tiny_model

SHARED = os.environ.get("TICKETLAB_SHARED")
# Tests never reach the network: a forgotten --data-dir fails at once instead of retrying the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the test when the real-data tier is off."""
    if not SHARED:
        pytest.skip("real-data tier: TICKETLAB_SHARED is not set")
    path = Path(SHARED, *parts)
    if not path.exists():
        pytest.skip(f"real-data tier: {path} is missing")
    return path


@pytest.fixture(autouse=True)
def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def bert():
    return tiny_model("bert", seed=0)


@pytest.fixture
def bert_dir(tmp_path, bert):
    path = tmp_path / "tiny-bert"
    bert.save_pretrained(path)
    return path


@pytest.fixture
def roberta_dir(tmp_path):
    path = tmp_path / "tiny-roberta"
    tiny_model("roberta", seed=0).save_pretrained(path)
    return path
