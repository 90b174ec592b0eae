"""A process that runs ``run_tamt`` on a tiny model (for the two-rank test, also under torchrun).

``python -m tests.tamt_worker SETUP OUT RECORD_DIR [SLEEP]``: SETUP holds the model and text the test made
(``tests.pretrain_fixtures.tiny_pretraining_setup``); each rank writes what it ended with (the
results run_tamt returned it, whose ``mask_digest`` is the digest of that rank's own mask bits,
and the losses it was given after each step).
"""

import json
import os
import sys
import time
from pathlib import Path

from ticketlab.experiments.tamt import TamtSpec, run_tamt


def spec_for(setup: Path) -> TamtSpec:
    # mlm+kd: both token means (targets, real tokens) are normalised over the global batch. No
    # dropout: then two processes compute what one does, up to float rounding.
    return TamtSpec(
        model=str(setup / "model"),
        objective="mlm+kd",
        sparsity=0.5,
        text=str(setup / "t.txt"),
        steps=6,
        batch_size=4,
        max_length=16,
        lr=2e-2,
        save_at=(3,),
        checkpoint_every=2,
        dropout=False,
        seed=1,
    )


def run(setup: Path, out: Path, sleep: float = 0.0) -> dict:
    """The run's results, with the loss of every step as this process saw it (``step_losses``);
    ``sleep`` seconds after each step leave a window for a ``kill -9``."""
    losses = []

    def on_step(_step, found):
        losses.append(found)
        time.sleep(sleep)

    results = run_tamt(spec_for(setup), out, progress=False, on_step=on_step)
    return dict(results, step_losses=losses)


def main(setup: str, out: str, record: str, sleep: str = "0") -> None:
    results = run(Path(setup), Path(out), float(sleep))
    rank = int(os.environ.get("RANK", "0"))
    Path(record, f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:5])
