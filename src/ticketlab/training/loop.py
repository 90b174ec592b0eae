"""One small training loop on Accelerate, extended by callbacks.

``train(model, train_dataloader, evaluate, config, callbacks=...)`` runs AdamW (no weight decay on
1-D parameters: biases and LayerNorm weights) with a linear decay after an optional warm-up,
gradient clipping, evaluation every N steps and at each epoch end (and always on the final
model), best/final metric tracking, and a stop with a clear error on a NaN or infinite loss.
Everything else (mask enforcement, JSONL logging, ...) is a :class:`Callback`.

The same code runs on one CPU, on one GPU with mixed precision and on several processes with
DDP: ``accelerate launch`` sets the environment that ``Accelerator()`` reads. The loop trains
``model`` in place; it is reused by fine-tuning, IMP, mask training and structured tickets
(``loss_fn(model, batch)`` says how a batch becomes a loss; the default is the model's own ``.loss``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.training.metrics import is_better
from ticketlab.training.settings import check_settings, setting

LR_SCHEDULES = ("linear", "constant")
EvaluateFn = Callable[[nn.Module, Any], dict[str, float]]
LossFn = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


class NonFiniteLossError(TicketlabError):
    """The training loss became NaN or infinite; the run stopped."""


@dataclass
class TrainConfig:
    """The optimisation recipe of one training run."""

    lr: float = setting("lr", 2e-5, note="AdamW's")
    epochs: int = setting("epochs", 3)
    max_steps: int | None = field(
        default=None, metadata={"help": "stop after this many optimizer steps (overrides epochs)"}
    )
    weight_decay: float = setting("weight_decay", 0.01, note="AdamW's, not on biases and LayerNorm weights")
    warmup_ratio: float = setting("warmup_ratio", 0.0, note="before the linear decay")
    lr_schedule: str = field(
        default="linear",
        metadata={"help": "linear (warm-up, then decay to 0) or constant (mask training: budgets nest)"},
    )
    schedule_start: int = field(
        default=0,
        metadata={
            "help": "optimizer steps already taken (a resumed run): the schedule continues from there, "
            "over a horizon of schedule_start + the steps of this call"
        },
    )
    max_grad_norm: float | None = setting("max_grad_norm", 1.0, note="None: no clipping")
    eval_every: int | None = setting("eval_every", None, note="and at each epoch end; None: epoch ends only")
    eval_at_epoch_end: bool = field(default=True, metadata={"help": "evaluate at the end of each epoch"})
    seed: int = setting("seed", 0, note="of Python, NumPy and torch: dropout, shuffling")
    main_metric: str | None = field(
        default=None, metadata={"help": "metric that picks the best evaluation (default: the first one)"}
    )
    greater_is_better: bool = field(default=True, metadata={"help": "whether a larger main metric is better"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar"})
    horizon_factor: int = field(
        default=1,
        metadata={
            "help": "linear schedule: its horizon (and warm-up) is this many times the run's steps, so "
            "the rate ends at lr x (1 - 1/factor) (BERT-Tickets' IMP: a fresh schedule per level over "
            "all levels' steps)"
        },
    )

    def validate(self) -> None:
        check_settings(self)  # lr, epochs, weight decay, warm-up, clipping, eval interval, seed
        if self.max_steps is not None and self.max_steps < 1:
            raise TicketlabError(f"max steps must be at least 1, got {self.max_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TicketlabError(
                f"unknown learning-rate schedule {self.lr_schedule!r} (choose from {', '.join(LR_SCHEDULES)})"
            )
        if self.schedule_start < 0:
            raise TicketlabError(f"schedule start must be >= 0, got {self.schedule_start}")
        if self.horizon_factor < 1:
            raise TicketlabError(f"schedule horizon factor must be at least 1, got {self.horizon_factor}")


@dataclass
class EvalRecord:
    """One evaluation: the step and (fractional) epoch it came at, and the metrics."""

    step: int
    epoch: float
    metrics: dict[str, float]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "metrics": self.metrics, "seconds": self.seconds}


@dataclass
class TrainState:
    """What callbacks see: the live objects and the counters of the run."""

    config: TrainConfig
    accelerator: Any
    model: nn.Module  # as prepared by Accelerate (possibly DDP-wrapped)
    optimizer: torch.optim.Optimizer  # the plain torch optimizer (hooks go here)
    scheduler: Any = None
    step: int = 0
    epoch: float = 0.0
    steps_per_epoch: int = 0
    total_steps: int = 0
    loss: float | None = None
    lr: float = 0.0
    examples_seen: int = 0
    train_seconds: float = 0.0
    history: list[EvalRecord] = field(default_factory=list)
    best: EvalRecord | None = None
    main_metric: str | None = None
    should_stop: bool = False

    @property
    def is_main_process(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)


@dataclass
class TrainResult:
    """The outcome of :func:`train`: evaluations, best and final, and throughput."""

    history: list[EvalRecord]
    best: EvalRecord | None
    final: EvalRecord | None
    main_metric: str | None
    steps: int
    epochs: float
    train_examples: int
    train_seconds: float
    eval_seconds: float
    wall_seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds > 0 else float("nan")


class Callback:
    """Hooks into :func:`train`; override what you need. ``state`` is shared and mutable
    (set ``state.should_stop = True`` to end the run after the current step)."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_evaluate(self, state: TrainState, record: EvalRecord, is_best: bool) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState, result: TrainResult) -> None: ...

    def on_train_error(self, state: TrainState, error: BaseException) -> None:
        """The run failed (a NaN loss, an interrupt, ...); release what the callback holds."""


def default_accelerator() -> Any:
    """``Accelerator()`` as configured by ``accelerate launch`` (or its environment variables).

    One exception: on a machine with no GPU (or other accelerator), a multi-process launch
    (``torchrun --nproc_per_node 2 -m ticketlab ...``) gets ``cpu=True``, which is what makes
    Accelerate use DDP over gloo; without it each process would train alone.
    """
    from accelerate import Accelerator

    from ticketlab.training.distributed import needs_cpu_backend

    return Accelerator(cpu=True) if needs_cpu_backend() else Accelerator()


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (ndim >= 2), none on biases and LayerNorm weights (1-D)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`, with torch's fused kernel where it has one.

    The fused kernel does the same update in one pass over all parameters; the default
    per-tensor loop on CPU costs several times more (about 0.7-1 s of CPU per step for a
    22M-parameter MiniLM, more than the forward and backward passes of a batch of short
    sentences). ``transformers.Trainer`` also defaults to the fused AdamW.
    """
    groups = parameter_groups(model, config.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except RuntimeError:  # a parameter on a device (or of a dtype) without the fused kernel
        return torch.optim.AdamW(groups, lr=config.lr)


def default_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The loss a Hugging Face model computes itself when the batch has ``labels``."""
    return model(**batch).loss


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        batch = next(iter(batch.values()))
    if isinstance(batch, list | tuple):
        batch = batch[0]
    return int(batch.shape[0])


def train(
    model: nn.Module,
    train_dataloader: torch.utils.data.DataLoader,
    evaluate: EvaluateFn | None = None,
    config: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    accelerator: Any = None,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainResult:
    """Train ``model`` in place and return the evaluations.

    ``evaluate(model, accelerator) -> {metric: value}`` is called in eval mode under the schedule
    of ``config`` (every ``eval_every`` steps, at epoch ends, and on the final model). In a
    multi-process run it must return the same metrics on every process (gather the predictions,
    e.g. with ``accelerator.gather_for_metrics``).

    ``optimizer`` replaces :func:`make_optimizer`'s AdamW (``config.weight_decay`` then does
    nothing): for training other parameters than the model's own weights, such as mask scores.
    ``train_dataloader`` may be any re-iterable with a length (one epoch), not only a DataLoader;
    such an object is not sharded across processes.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    config = config or TrainConfig()
    config.validate()
    loss_fn = loss_fn or default_loss
    accelerator = accelerator or default_accelerator()
    wall_start = time.perf_counter()
    set_seed(config.seed)

    optimizer = optimizer or make_optimizer(model, config)
    prepared_model, prepared_optimizer, loader = accelerator.prepare(model, optimizer, train_dataloader)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise TicketlabError("the training data has no batches")
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    # The scheduler is stepped here once per optimizer step, not prepared by Accelerate (which
    # would step it once per process); its horizon is this process's step count.
    if config.lr_schedule == "constant":
        scheduler = get_constant_schedule(optimizer)
    else:
        horizon = (config.schedule_start + total_steps) * config.horizon_factor
        scheduler = get_linear_schedule_with_warmup(
            optimizer, math.ceil(config.warmup_ratio * horizon), horizon
        )
    if config.schedule_start:
        # A resumed run: the schedule's own steps up to where the run stopped (the optimizer's
        # loaded groups hold the base rate as "initial_lr", so the rate is the uninterrupted one).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()"
            for _ in range(config.schedule_start):
                scheduler.step()
    state = TrainState(
        config=config,
        accelerator=accelerator,
        model=prepared_model,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        lr=scheduler.get_last_lr()[0],
        main_metric=config.main_metric,
    )
    eval_seconds = 0.0

    def run_evaluation() -> None:
        nonlocal eval_seconds
        if evaluate is None:
            return
        start = time.perf_counter()
        prepared_model.eval()
        with torch.no_grad():
            metrics = dict(evaluate(prepared_model, accelerator))
        prepared_model.train()
        seconds = time.perf_counter() - start
        eval_seconds += seconds
        record = EvalRecord(step=state.step, epoch=round(state.epoch, 4), metrics=metrics, seconds=seconds)
        if state.main_metric is None and metrics:
            state.main_metric = next(iter(metrics))
        if state.main_metric is not None and state.main_metric not in metrics:
            raise TicketlabError(
                f"the evaluation returned no {state.main_metric!r} (it returned: {', '.join(metrics)})"
            )
        best_value = state.best.metrics[state.main_metric] if state.best else None
        improved = state.best is None or is_better(
            metrics.get(state.main_metric), best_value, config.greater_is_better
        )
        if improved:
            state.best = record
        state.history.append(record)
        for callback in callbacks:
            callback.on_evaluate(state, record, improved)

    bar = tqdm(
        total=total_steps,
        desc="training",
        unit="step",
        disable=config.quiet or not accelerator.is_local_main_process,
    )
    # Gradients left on the parameters by earlier work (a head trained before mask training) must
    # not leak into the first step, which would otherwise add them to its own.
    prepared_optimizer.zero_grad(set_to_none=True)
    prepared_model.train()
    epoch_index = 0
    try:
        for callback in callbacks:
            callback.on_train_begin(state)
        while state.step < total_steps and not state.should_stop:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch_index)
            step_start = time.perf_counter()
            finished_epoch = True
            for batch_number, batch in enumerate(loader, start=1):
                loss = loss_fn(prepared_model, batch)
                # Every process sees the same mean loss, so all stop together on a NaN.
                loss_value = float(accelerator.reduce(loss.detach().float(), reduction="mean").item())
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"the training loss became {loss_value} at step {state.step + 1} "
                        f"(epoch {epoch_index + 1}, learning rate {state.lr:.3g}); the run stopped. "
                        "Lower the learning rate, or check the data and the mask"
                    )
                accelerator.backward(loss)
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(prepared_model.parameters(), config.max_grad_norm)
                prepared_optimizer.step()
                if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped it
                    scheduler.step()
                prepared_optimizer.zero_grad(set_to_none=True)

                state.step += 1
                state.epoch = epoch_index + batch_number / steps_per_epoch
                state.loss = loss_value
                state.lr = scheduler.get_last_lr()[0]
                state.examples_seen += _batch_size(batch) * accelerator.num_processes
                now = time.perf_counter()
                state.train_seconds += now - step_start
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                for callback in callbacks:
                    callback.on_step_end(state)
                if config.eval_every and state.step % config.eval_every == 0:
                    run_evaluation()
                step_start = time.perf_counter()
                if state.step >= total_steps or state.should_stop:
                    finished_epoch = batch_number == steps_per_epoch
                    break
            if finished_epoch:
                epoch_index += 1
                for callback in callbacks:
                    callback.on_epoch_end(state)
                already = state.history and state.history[-1].step == state.step
                if config.eval_at_epoch_end and not already:
                    run_evaluation()
        if evaluate is not None and not (state.history and state.history[-1].step == state.step):
            run_evaluation()  # the final model is always evaluated
    except BaseException as error:
        for callback in callbacks:
            callback.on_train_error(state, error)
        raise
    finally:
        bar.close()

    result = TrainResult(
        history=state.history,
        best=state.best,
        final=state.history[-1] if state.history else None,
        main_metric=state.main_metric,
        steps=state.step,
        epochs=state.epoch,
        train_examples=state.examples_seen,
        train_seconds=state.train_seconds,
        eval_seconds=eval_seconds,
        wall_seconds=time.perf_counter() - wall_start,
    )
    for callback in callbacks:
        callback.on_train_end(state, result)
    return result
