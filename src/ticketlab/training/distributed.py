"""The processes of one job (``torchrun`` / ``accelerate launch``): which one this is, and the few
collective operations the pipelines need (one decision or one mask, sent from the first process).

Outside a multi-process launch every function is a no-op on one process, so library code calls
them unconditionally.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def needs_cpu_backend() -> bool:
    """A multi-process launch on a machine without a GPU (or other accelerator) must run DDP over
    gloo, which Accelerate does only when asked for the CPU."""
    has_device = (
        torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    )
    return launched_processes() > 1 and not has_device


def process_state() -> Any:
    """Accelerate's ``PartialState`` (it joins the process group of a launch, once per process)."""
    from accelerate import PartialState

    return PartialState(cpu=needs_cpu_backend())


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside a multi-process launch."""
    if launched_processes() <= 1:
        return 0, 1
    state = process_state()
    return state.process_index, state.num_processes


def broadcast_from_first(value: T) -> T:
    """``value`` as the first process has it, on every process (any picklable object: the
    processes of one job trust each other)."""
    if launched_processes() <= 1:
        return value
    import torch.distributed as dist

    process_state()
    payload = [value]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]


def barrier() -> None:
    if launched_processes() > 1:
        process_state().wait_for_everyone()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes (in place, and returned); unchanged on one process."""
    if launched_processes() > 1:
        import torch.distributed as dist

        process_state()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(parameters: Any) -> None:
    """Replace each parameter's gradient by its mean over the processes: every process then holds
    the same bits, so the same optimizer step keeps their parameters equal (data parallelism
    without a DDP wrapper, for parameters that are not a module's own weights, such as mask scores)."""
    world = launched_processes()
    if world <= 1:
        return
    for param in parameters:
        if param.grad is not None:
            all_reduce_sum(param.grad).div_(world)
