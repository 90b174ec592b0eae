"""IMP as ``ticketlab imp`` runs it: on a downstream task through fine-tuning, or on the MLM
objective (``experiments/imp_mlm.py``). One entry point above both, so neither imports the other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketlab.experiments.imp import MLM_TASK, ImpSpec, check_recipe, finetune_functions, run_imp
from ticketlab.experiments.imp_mlm import run_imp_on_mlm


def run_imp_on_task(
    spec: ImpSpec,
    out: str | Path,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """IMP on a GLUE task or SQuAD with ticketlab's fine-tuning, or on MLM (``ticketlab imp``)."""
    spec.validate()
    if spec.task == MLM_TASK:
        return run_imp_on_mlm(spec, out, cache_dir=cache_dir, quiet=quiet, echo=echo)
    check_recipe(spec.recipe)
    build_model, train = finetune_functions(
        spec.model,
        spec.task,
        spec.data_dir,
        spec.recipe,
        seed=spec.seed,
        cache_dir=cache_dir,
        quiet=quiet,
        horizon_factor=spec.horizon_factor,
    )
    return run_imp(spec, out, build_model, train, echo=echo)
