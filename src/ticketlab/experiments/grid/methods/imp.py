"""``imp`` and ``imp@<source>``: iterative magnitude pruning with rewinding (BERT-Tickets).

One IMP run per task and seed (``imp/<task>/seed<S>``, levels ``level_00`` (the full model) ..
``level_<L>``); its levels' fine-tuning results are the ``imp`` cells, at every level, as in
BERT-Tickets. ``imp@<source>``: the source task's IMP tickets (or the MLM objective's, source
``mlm``) fine-tuned on each other task of the grid (``transfer_from``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.layout import FULL_MODEL, Cell, GridStep
from ticketlab.experiments.grid.methods.base import GridMethod, register
from ticketlab.experiments.imp import MLM_TASK, ImpSpec, level_name
from ticketlab.experiments.steps import DONE


def imp_run_key(task: str, seed: int) -> str:
    return f"imp/{task}/seed{seed}"


def imp_run_step(task: str, seed: int) -> GridStep:
    return GridStep("imp", imp_run_key(task, seed), cell=Cell(task, "imp", 0.0, seed))


def imp_spec_for(spec, task: str, seed: int) -> ImpSpec:
    """The grid's IMP run on ``task`` (or ``mlm``) with ``seed``."""
    if task == MLM_TASK:
        data = {"recipe": dict(spec.mlm_recipe), "text": spec.mlm_text, "eval_text": spec.mlm_eval_text}
    else:
        data = {"recipe": spec.recipe_for(task), "data_dir": spec.data_dir}
    return ImpSpec(
        model=spec.model,
        task=task,
        levels=spec.levels(),
        head=spec.imp_head,
        scope=spec.scope,
        scheme=spec.scheme,
        seed=seed,
        **data,
    )


def imp_level_for(spec, sparsity: float) -> int:
    return 1 + next(i for i, lv in enumerate(spec.levels()) if abs(lv - sparsity) < 1e-9)


def uses_imp(spec) -> bool:
    return "imp" in spec.methods or bool(spec.transfer_from)


class IterativeMagnitude(GridMethod):
    name = "imp"
    help = "iterative magnitude pruning with rewinding on each task (one IMP run per seed)"
    order = 30
    works_in_place = True  # a run directory of levels, each a published step, that may grow

    def validate(self, spec) -> None:
        _validate_levels(spec)

    def cells(self, spec, task: str, seed: int) -> list[Cell]:
        return []  # IMP fine-tunes its levels itself: they are its cells

    def ticket_cells(self, spec, task: str, seed: int) -> list[Cell]:
        return [Cell(task, self.name, s, seed) for s in spec.sparsities]

    def result_cells(self, spec, task: str, seed: int) -> list[Cell]:
        # Every level of the run (fine-tuned anyway as the search): IMP's whole curve in the table.
        extra = [lv for lv in spec.levels() if not any(abs(lv - s) < 1e-9 for s in spec.sparsities)]
        return self.ticket_cells(spec, task, seed) + [Cell(task, self.name, lv, seed) for lv in extra]

    def results_file(self, spec, root: Path, cell: Cell) -> Path:
        return self.ticket_path(spec, root, cell).parent / "results.json"

    def source_of(self, cell: Cell) -> str:
        return cell.task

    def ticket_path(self, spec, root: Path, cell: Cell) -> Path:
        level = level_name(imp_level_for(spec, cell.sparsity))
        return root / imp_run_key(self.source_of(cell), cell.seed) / level / "mask.safetensors"

    def ticket_step(self, spec, cell: Cell) -> GridStep:
        return imp_run_step(self.source_of(cell), cell.seed)

    def extra_steps(self, spec) -> list[GridStep]:
        # The runs come first: the full cells may take over their level 0.
        return [imp_run_step(task, seed) for task in spec.tasks for seed in spec.seeds]

    def cell_inputs(self, spec, cell: Cell) -> tuple[str, ...]:
        return (imp_run_key(cell.task, cell.seed),) if cell.method == FULL_MODEL else ()

    def make(self, runner, step: GridStep) -> Path:
        from ticketlab.experiments.imp_dispatch import run_imp_on_task

        task, seed = step.cell.task, step.cell.seed
        out = runner.root / step.key
        checked = runner.checked_imp_runs
        if out in checked:
            return out
        spec = imp_spec_for(runner.spec, task, seed)
        levels = [level_name(i) for i in range(len(spec.levels) + 1)]
        done_before = sum((out / name / DONE).is_file() for name in levels)
        if done_before < len(levels):
            runner.echo(f"IMP on {task}, seed {seed}: levels {', '.join(f'{lv:.0%}' for lv in spec.levels)}")
        # Always through IMP itself: it verifies its levels, and grows a run whose levels were added.
        run_imp_on_task(spec, out, cache_dir=runner.cache_dir, quiet=runner.quiet, echo=runner.echo)
        runner.computed["imp level"] += sum((out / name / DONE).is_file() for name in levels) - done_before
        checked.add(out)
        return out

    def determinants(self, spec, step: GridStep) -> dict[str, Any]:
        from ticketlab.experiments.store import non_default_fields

        run = non_default_fields(imp_spec_for(spec, step.cell.task, step.cell.seed))
        run.pop("levels", None)  # a run grows by levels in place (``ImpSpec.growable_fields``)
        return {"method": "imp", "imp": run}

    def step_done(self, runner, step: GridStep) -> bool:
        path = runner.root / step.key
        levels = len(imp_spec_for(runner.spec, step.cell.task, step.cell.seed).levels) + 1
        return all((path / level_name(i) / DONE).is_file() for i in range(levels))

    def step_claims(self, runner, step: GridStep) -> list[tuple[Path, str]]:
        path = runner.root / step.key
        return [(path, c.name[1:].removesuffix(".claim")) for c in path.glob(".level_*.claim")]

    def reuse_result(self, runner, cell: Cell, finetune_spec: Any, tmp: Path) -> Any:
        """The full model's cell when the task's IMP run of the same seed already fine-tuned
        ``finetune_spec`` as its level 0 (the grid's IMP recipe is the cell recipe): its files, with
        ``reused_from`` in results.json, instead of the same fine-tuning run again."""
        import shutil

        from ticketlab.experiments.finetune import LOG_FILE, RESULTS_FILE, SPEC_FILE, same_finished_run
        from ticketlab.io import read_json, write_json

        if cell.method != FULL_MODEL:
            return None
        level = runner.root / imp_run_key(cell.task, cell.seed) / level_name(0)
        if not same_finished_run(level, finetune_spec):
            return None
        for path in [level / SPEC_FILE, level / LOG_FILE, *level.glob("*_predictions.tsv")]:
            if path.exists():
                shutil.copyfile(path, tmp / path.name)
        results = read_json(level / RESULTS_FILE)
        results["reused_from"] = str(level.relative_to(runner.root))
        write_json(tmp / RESULTS_FILE, results)
        runner.echo(
            f"fine-tune {cell.task}: full at 0%, seed {cell.seed}: the same run as IMP's level 0, reused"
        )
        return results


class TransferredImp(IterativeMagnitude):
    """``imp@<source>``: not named in ``methods``; the grid runs it for each of ``transfer_from``."""

    name = "imp@"
    help = "the IMP tickets of a source task (transfer_from; mlm: IMP on the MLM objective) on the others"
    order = 31
    named_in_methods = False

    def matches(self, name: str) -> bool:
        return name.startswith(self.name)

    def active(self, spec) -> bool:
        return bool(spec.transfer_from)

    def validate(self, spec) -> None:
        missing = [t for t in spec.transfer_from if t not in spec.tasks and t != MLM_TASK]
        if missing:
            raise TicketlabError(f"transfer source {missing[0]!r} is not one of the grid's tasks (nor mlm)")
        if MLM_TASK in spec.transfer_from:
            from ticketlab.experiments.imp_mlm import check_mlm_recipe

            check_mlm_recipe(spec.mlm_recipe)
        _validate_levels(spec)

    def cells(self, spec, task: str, seed: int) -> list[Cell]:
        return [
            Cell(task, f"{self.name}{source}", s, seed)
            for source in spec.transfer_from
            if source != task
            for s in spec.sparsities
        ]

    def ticket_cells(self, spec, task: str, seed: int) -> list[Cell]:
        return self.cells(spec, task, seed)

    def result_cells(self, spec, task: str, seed: int) -> list[Cell]:
        return self.cells(spec, task, seed)

    def results_file(self, spec, root: Path, cell: Cell) -> Path:
        return GridMethod.results_file(self, spec, root, cell)

    def source_of(self, cell: Cell) -> str:
        return cell.method.removeprefix(self.name)

    def extra_steps(self, spec) -> list[GridStep]:
        return [imp_run_step(source, seed) for source in spec.transfer_from for seed in spec.seeds]

    def cell_inputs(self, spec, cell: Cell) -> tuple[str, ...]:
        return ()  # a source's run is not ordered before the full cells (it may be reused if done)


def _validate_levels(spec) -> None:
    levels = spec.levels()
    off = [s for s in spec.sparsities if not any(abs(s - lv) < 1e-9 for lv in levels)]
    if off:
        raise TicketlabError(f"sparsity {off[0]} is not one of the IMP levels {levels}")


register(IterativeMagnitude())
register(TransferredImp())
