"""A process that runs IMP with a stand-in trainer into a run directory (for the concurrency tests).

``python -m tests.imp_worker OUT [SLEEP [RECORD_DIR]]`` (also under torchrun): deterministic given the level, whichever process
computes it, so runs shared between processes, killed or not, must equal one uninterrupted run.
"""

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

from tests.test_imp import build_model
from ticketlab.experiments.imp import ImpSpec, run_imp
from ticketlab.masks import apply_mask

SPEC = ImpSpec(model="tiny", task="rte", levels=[0.3, 0.5, 0.7, 0.8])


class LevelTrainer:
    """Moves every weight by noise seeded by the level (read from the step's folder name), and
    records a digest of the mask it trained with (per rank, under a multi-process launch)."""

    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep
        self.masks: dict[int, str] = {}

    def __call__(self, model, mask, seed, out):
        level = int(re.search(r"level_(\d+)", out.name).group(1))
        if mask is not None:
            bits = torch.cat([t.flatten() for t in mask.tensors.values()]).numpy().tobytes()
            self.masks[level] = hashlib.sha256(bits).hexdigest()
        enforcer = apply_mask(model, mask) if mask is not None else None
        generator = torch.Generator().manual_seed(seed * 100 + level)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        if enforcer is not None:
            enforcer.enforce()
        (out / "log.jsonl").write_text('{"step": 1}\n')
        time.sleep(self.sleep)  # a window for the other process (and for kill -9) inside the step
        return {"best": {"accuracy": 0.5 + 0.01 * level}}


def main(out: str, sleep: float = 0.0, record: str | None = None) -> None:
    trainer = LevelTrainer(sleep)
    run_imp(SPEC, out, build_model, trainer, echo=lambda _: None)
    if record:  # what this rank trained with, for the multi-process test
        rank = int(os.environ.get("RANK", "0"))
        Path(record, f"rank{rank}.json").write_text(json.dumps(trainer.masks))


if __name__ == "__main__":
    main(
        sys.argv[1],
        float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
        sys.argv[3] if len(sys.argv) > 3 else None,
    )
