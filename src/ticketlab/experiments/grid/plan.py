"""The grid's plan: its cells, where each ticket lives, and the specs of the runs it is made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ticketlab.analysis.aggregate import FULL_MODEL
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.spec import (
    ALLWIN_METHODS,
    CONTROLS,
    NO_PRETRAIN_LOSS,
    STRUCTURED_METHODS,
    SUPER_METHODS,
    Cell,
    GridSpec,
)
from ticketlab.experiments.imp import MLM_TASK, ImpSpec, level_name
from ticketlab.experiments.tamt import TamtSpec


def plan_cells(spec: GridSpec) -> list[Cell]:
    """Every non-IMP fine-tuning run the grid needs (IMP cells come from IMP runs)."""
    cells = []
    for task in spec.tasks:
        for seed in spec.seeds:
            if FULL_MODEL in spec.methods:
                cells.append(Cell(task, FULL_MODEL, 0.0, seed))
            for method in spec.methods:
                if method in (FULL_MODEL, "imp"):
                    continue
                cells += [Cell(task, method, s, seed) for s in spec.levels_of(method)]
            for source in spec.transfer_from:
                if source != task:
                    cells += [Cell(task, f"imp@{source}", s, seed) for s in spec.sparsities]
    return cells


def ticket_cells(spec: GridSpec) -> list[Cell]:
    """Every (task, method, sparsity, seed) with a result: the planned cells and IMP's levels."""
    cells = plan_cells(spec)
    if "imp" in spec.methods:
        cells += [
            Cell(task, "imp", sparsity, seed)
            for task in spec.tasks
            for seed in spec.seeds
            for sparsity in spec.sparsities
        ]
    return cells


def result_cells(spec: GridSpec) -> list[Cell]:
    """Every cell with a result to report: the ticket cells, and IMP at **every** level of its runs
    (fine-tuned anyway as the IMP search, so the table has IMP's whole curve, as BERT-Tickets')."""
    cells = ticket_cells(spec)
    if "imp" in spec.methods:
        extra = [lv for lv in spec.levels() if not any(abs(lv - s) < 1e-9 for s in spec.sparsities)]
        cells += [
            Cell(task, "imp", level, seed) for task in spec.tasks for seed in spec.seeds for level in extra
        ]
    return cells


def ticket_path(spec: GridSpec, root: Path, cell: Cell) -> Path | None:
    """Where the mask of a cell's ticket is (or will be); None for the full model."""
    tickets = root / "tickets"
    if cell.method == FULL_MODEL:
        return None
    if cell.method in ("omp", *CONTROLS):
        return tickets / f"omp-{cell.sparsity:.2f}.safetensors"
    if cell.method == "random":
        return tickets / f"random-{cell.sparsity:.2f}-seed{cell.seed}.safetensors"
    if cell.method == "tamt":
        return tickets / f"tamt-{cell.sparsity:.2f}" / "mask.safetensors"
    if cell.method == "imp" or cell.method.startswith("imp@"):
        source = cell.task if cell.method == "imp" else cell.method.split("@", 1)[1]
        level = level_name(imp_level_for(spec, cell.sparsity))
        return root / "imp" / source / f"seed{cell.seed}" / level / "mask.safetensors"
    if cell.method in STRUCTURED_METHODS:
        from ticketlab.experiments.super_tickets import mask_file_name

        folder = structured_masks_dir(root, cell.method, cell.task, cell.seed)
        kind = SUPER_METHODS.get(cell.method) or ALLWIN_METHODS[cell.method]
        return folder / mask_file_name(kind, cell.sparsity)
    raise TicketlabError(f"unknown grid method {cell.method!r}")


def structured_masks_dir(root: Path, method: str, task: str, seed: int) -> Path:
    """The folder of a structured method's masks for ``task`` and ``seed``, which appears only when
    finished: ``tickets/super/<task>/seed<S>/masks`` (the scores and ``masks.json`` beside it) or
    ``tickets/allwin/<task>/seed<S>/masks`` (``masks.json`` inside, the pruning steps beside it)."""
    from ticketlab.experiments.super_tickets import MASKS_DIR

    family = "super" if method in SUPER_METHODS else "allwin"
    return root / "tickets" / family / task / f"seed{seed}" / MASKS_DIR


def finetune_spec_for(spec: GridSpec, task: str, seed: int, **extra: Any):
    """The grid's fine-tuning run of ``task`` with ``seed`` (``extra``: mask, save_model, ...)."""
    from ticketlab.experiments.finetune import FinetuneSpec

    return FinetuneSpec(
        model=spec.model, task=task, data_dir=spec.data_dir, seed=seed, **extra, **spec.recipe_for(task)
    )


def pretrain_loss_path(mask_path: Path) -> Path:
    """The pre-training losses of a ticket, beside its mask: ``<mask>.pretrain_loss.json``."""
    return mask_path.with_name(mask_path.name.removesuffix(".safetensors") + ".pretrain_loss.json")


def tamt_spec_for(spec: GridSpec, sparsity: float) -> TamtSpec:
    """The TAMT run of the grid's ``tamt`` ticket at ``sparsity`` (the grid's model, scope, scheme)."""
    if spec.tamt is None:
        raise TicketlabError("the grid has no tamt section")
    return TamtSpec(
        model=spec.model, sparsity=sparsity, scope=spec.scope, scheme=spec.scheme, **asdict(spec.tamt)
    )


def imp_spec_for(spec: GridSpec, task: str, seed: int) -> ImpSpec:
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


def imp_level_for(spec: GridSpec, sparsity: float) -> int:
    return 1 + next(i for i, lv in enumerate(spec.levels()) if abs(lv - sparsity) < 1e-9)


def ticket_files(spec: GridSpec, root: Path) -> list[Path]:
    """Every ticket mask of the grid that exists, once each (OMP, random, TAMT, IMP levels)."""
    paths = {ticket_path(spec, root, cell) for cell in ticket_cells(spec)}
    return sorted(p for p in paths if p is not None and p.exists())


# -- the step graph -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridStep:
    """One node of a grid's step graph: the kind of work, where its output lives (``key``, relative
    to the grid's folder) and the keys of the steps it needs. A cell step carries its cell."""

    kind: str
    key: str
    inputs: tuple[str, ...] = ()
    cell: Cell | None = None


def _relative(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def imp_run_key(task: str, seed: int) -> str:
    return f"imp/{task}/seed{seed}"


def cell_key(cell: Cell) -> str:
    return f"cells/{cell.task}/{cell.name}"


def ticket_step(spec: GridSpec, cell: Cell) -> GridStep | None:
    """The step that makes the ticket of ``cell`` (None for the full model)."""
    root = Path(".")
    method = cell.method
    if method == FULL_MODEL:
        return None
    if method in ("omp", *CONTROLS):
        omp = Cell("", "omp", cell.sparsity, 0)
        return GridStep("omp", _relative(root, ticket_path(spec, root, omp)), cell=omp)
    if method == "random":
        drawn = Cell("", "random", cell.sparsity, cell.seed)
        inputs = (ticket_step(spec, Cell("", "omp", cell.sparsity, 0)).key,)
        key = _relative(root, ticket_path(spec, root, drawn))
        return GridStep("random", key, inputs if spec.random_variant == "matched" else (), cell=drawn)
    if method == "tamt":
        return GridStep("tamt", f"tickets/tamt-{cell.sparsity:.2f}", cell=Cell("", "tamt", cell.sparsity, 0))
    if method == "imp" or method.startswith("imp@"):
        source = cell.task if method == "imp" else method.split("@", 1)[1]
        return GridStep("imp", imp_run_key(source, cell.seed), cell=Cell(source, "imp", 0.0, cell.seed))
    if method in STRUCTURED_METHODS:
        family = "super" if method in SUPER_METHODS else "allwin"
        full = cell_key(Cell(cell.task, FULL_MODEL, 0.0, cell.seed))
        key = _relative(root, structured_masks_dir(root, method, cell.task, cell.seed).parent)
        return GridStep(family, key, (full,), cell=Cell(cell.task, method, 0.0, cell.seed))
    raise TicketlabError(f"unknown grid method {method!r}")


def plan_steps(spec: GridSpec) -> list[GridStep]:
    """Every step of the grid, each once, every step after the steps it needs: IMP runs, tickets,
    fine-tuning cells, then the pre-training losses of the tickets. The full model's cell needs the
    task's IMP run of its seed when the grid has one (it may take over IMP's level 0)."""
    steps: dict[str, GridStep] = {}

    def add(step: GridStep | None) -> None:
        if step is not None and step.key not in steps:
            steps[step.key] = step

    runs_imp = "imp" in spec.methods
    for task in spec.tasks:
        if runs_imp or task in spec.transfer_from:
            for seed in spec.seeds:
                add(GridStep("imp", imp_run_key(task, seed), cell=Cell(task, "imp", 0.0, seed)))
    for source in spec.transfer_from:
        if source not in spec.tasks:
            for seed in spec.seeds:
                add(GridStep("imp", imp_run_key(source, seed), cell=Cell(source, "imp", 0.0, seed)))
    for cell in plan_cells(spec):
        ticket = ticket_step(spec, cell)
        if ticket is not None:
            if ticket.kind == "random" and ticket.inputs:  # matched random needs OMP's ticket
                add(ticket_step(spec, Cell(cell.task, "omp", cell.sparsity, 0)))
            if ticket.kind in ("super", "allwin"):
                add(_cell_step(spec, Cell(cell.task, FULL_MODEL, 0.0, cell.seed)))
            add(ticket)
        add(_cell_step(spec, cell))
    if spec.pretrain_loss is not None:
        for cell in ticket_cells(spec):
            ticket = ticket_step(spec, cell)
            if cell.method in NO_PRETRAIN_LOSS or ticket is None:
                continue
            mask = ticket_path(spec, Path("."), cell)
            add(GridStep("pretrain_loss", str(pretrain_loss_path(mask)), (ticket.key,), cell=cell))
    return list(steps.values())


def _cell_step(spec: GridSpec, cell: Cell) -> GridStep:
    ticket = ticket_step(spec, cell)
    inputs = (ticket.key,) if ticket is not None else ()
    if cell.method == FULL_MODEL and "imp" in spec.methods:
        inputs += (imp_run_key(cell.task, cell.seed),)
    return GridStep("cell", cell_key(cell), inputs, cell=cell)
