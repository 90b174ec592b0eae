"""Callbacks of the training loop: mask enforcement and the JSONL log of the curve."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ticketlab.masks import MaskEnforcer, UnstructuredMask, apply_mask
from ticketlab.training.loop import Callback, EvalRecord, TrainResult, TrainState
from ticketlab.training.metrics import json_safe


class MaskEnforcement(Callback):
    """Keep a mask's pruned weights at exactly zero through training.

    Give either an existing :class:`MaskEnforcer` (made with :func:`apply_mask` before training,
    so that the fingerprint is checked on the pre-trained weights and the pruned weights start at
    zero) or a mask to apply at the start. The enforcer's post-step hook goes on the loop's own
    optimizer; the hooks are removed at the end (the weights stay as they are).
    """

    def __init__(
        self,
        enforcer: MaskEnforcer | None = None,
        *,
        mask: UnstructuredMask | None = None,
        allow_fingerprint_mismatch: bool = False,
    ):
        if (enforcer is None) == (mask is None):
            raise ValueError("give exactly one of enforcer and mask")
        self.enforcer = enforcer
        self.mask = mask
        self.allow_fingerprint_mismatch = allow_fingerprint_mismatch

    def on_train_begin(self, state: TrainState) -> None:
        if self.enforcer is None:
            self.enforcer = apply_mask(
                state.unwrapped_model, self.mask, allow_fingerprint_mismatch=self.allow_fingerprint_mismatch
            )
        self.enforcer.attach(state.optimizer)
        self.enforcer.enforce()  # the model may have moved to another device since the mask was applied

    def on_train_end(self, state: TrainState, result: TrainResult) -> None:
        self.enforcer.enforce()
        self.enforcer.remove()

    def on_train_error(self, state: TrainState, error: BaseException) -> None:
        if self.enforcer is not None:
            self.enforcer.remove()


class JsonlLogger(Callback):
    """Append the curve to a JSONL file: one line per ``every`` steps (mean loss over them, learning
    rate) and per evaluation, framed by ``train_begin`` and ``train_end`` lines.

    The file is a live log: each line is written whole and flushed, and a run that died has no
    ``train_end`` line. Only the main process writes.
    """

    def __init__(self, path: str | os.PathLike, every: int = 10, extra: dict[str, Any] | None = None):
        self.path = Path(path)
        self.every = max(1, int(every))
        self.extra = extra or {}
        self._handle = None
        self._losses: list[float] = []

    def _write(self, state: TrainState, record: dict[str, Any]) -> None:
        if self._handle is not None and state.is_main_process:
            self._handle.write(json.dumps(json_safe(record)) + "\n")
            self._handle.flush()

    def on_train_begin(self, state: TrainState) -> None:
        if state.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (a live log, closed at the end)
        self._write(
            state,
            {
                "event": "train_begin",
                "total_steps": state.total_steps,
                "steps_per_epoch": state.steps_per_epoch,
                "num_processes": state.accelerator.num_processes,
                "mixed_precision": str(state.accelerator.mixed_precision),
                **self.extra,
            },
        )

    def on_step_end(self, state: TrainState) -> None:
        self._losses.append(state.loss)
        if state.step % self.every == 0 or state.step == state.total_steps:
            self._write(
                state,
                {
                    "event": "train",
                    "step": state.step,
                    "epoch": round(state.epoch, 4),
                    "loss": sum(self._losses) / len(self._losses),
                    "lr": state.lr,
                    "examples_seen": state.examples_seen,
                },
            )
            self._losses.clear()

    def on_evaluate(self, state: TrainState, record: EvalRecord, is_best: bool) -> None:
        self._write(state, {"event": "eval", **record.to_dict(), "is_best": is_best})

    def on_train_end(self, state: TrainState, result: TrainResult) -> None:
        self._write(
            state,
            {
                "event": "train_end",
                "steps": result.steps,
                "train_seconds": result.train_seconds,
                "train_examples_per_second": result.examples_per_second,
            },
        )
        self.close()

    def on_train_error(self, state: TrainState, error: BaseException) -> None:
        message = str(error) or type(error).__name__
        self._write(state, {"event": "error", "step": state.step, "error": message})
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class KeepBestWeights(Callback):
    """Keep a copy of the weights at the best evaluation and put them back at the end of training,
    so the model leaves :func:`train` as it was at its best evaluation (the best validation epoch)."""

    def __init__(self) -> None:
        self.best_state: dict[str, Any] | None = None

    def on_evaluate(self, state: TrainState, record: EvalRecord, is_best: bool) -> None:
        if is_best:
            model = state.unwrapped_model
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_end(self, state: TrainState, result: TrainResult) -> None:
        if self.best_state is not None:
            state.unwrapped_model.load_state_dict(self.best_state)


class EarlyStopping(Callback):
    """Stop after ``patience`` evaluations in a row without a new best main metric."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError("patience must be at least 1")
        self.patience = patience
        self.since_best = 0

    def on_evaluate(self, state: TrainState, record: EvalRecord, is_best: bool) -> None:
        self.since_best = 0 if is_best else self.since_best + 1
        if self.since_best >= self.patience:
            state.should_stop = True
