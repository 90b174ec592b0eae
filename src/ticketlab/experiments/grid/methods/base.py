"""What a grid method is, and the registry the grid finds its methods in.

A grid method is a strategy object: its name (as written in a grid's ``methods``), which cells it
plans, where its ticket lives, which step makes it (and which steps that one needs), how the step is
made, whether its tickets have a pre-training loss. The grid's spec, plan and runner ask the
registry and never test a method's name, so a new method is one new module in this package (found
when the package is first asked) or, outside ticketlab, an entry point in the group
``ticketlab.grid_methods`` naming a module that registers its methods.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.layout import Cell, GridStep

# The grid's spec sits above its methods (it asks them to validate it): to them it is ``GridSpec``
# by duck typing, the fields and helpers documented on ``ticketlab.experiments.grid.GridSpec``.
GridSpec = Any


class GridRunner(Protocol):
    """What a method may use of the runner that makes its steps (``grid.run.GridRunner``)."""

    spec: Any
    root: Path
    cache_dir: str | None
    quiet: bool
    echo: Callable[[str], None]
    computed: Counter[str]  # steps made, by kind: the grid's summary counts them
    checked_imp_runs: set[Path]

    def pretrained(self) -> Any: ...
    def place(self, step: GridStep) -> None: ...
    def run_step(self, step: GridStep) -> Any: ...
    def run_cell(self, cell: Cell) -> dict[str, Any]: ...


ENTRY_POINT_GROUP = "ticketlab.grid_methods"


class GridMethod:
    """A way of making the tickets of a grid's cells. Subclasses set ``name`` and override what
    differs from the defaults (one ticket per cell at every sparsity, fine-tuned in ``cells/``)."""

    name: str = ""
    help: str = ""
    # Where it comes in lists of methods (error messages, the docs): lower first.
    order: int = 100
    # Whether its tickets get a pre-training loss (not for masks on other weights than the
    # pre-trained ones, nor for structured masks scored on a fine-tuned model).
    has_pretrain_loss: bool = True
    # Whether it scores the fine-tuned weights of the grid's full cell (which then keeps them).
    needs_full_model_weights: bool = False
    # Whether its steps work inside their folder in place (IMP's levels, TAMT's checkpoints) rather
    # than being published whole: in a store, their folder is made before they start.
    works_in_place: bool = False
    # Whether a grid names it in ``methods`` (transfer is asked for by ``transfer_from``).
    named_in_methods: bool = True
    # Whether a ticket made from other weights than the source model's is expected (the controls).
    allows_fingerprint_mismatch: bool = False

    # Its own settings (a dataclass), read from the grid's ``method_settings: {name: {...}}``;
    # None: it has none there (the built-in methods read the grid's own fields and sections).
    settings_type: type | None = None

    def settings(self, spec: GridSpec) -> Any:
        """The method's settings in ``spec``, parsed into ``settings_type`` (defaults when absent)."""
        given = spec.method_settings.get(self.name)
        if self.settings_type is None:
            if given:
                raise TicketlabError(
                    f"method_settings.{self.name}: grid method {self.name!r} takes no settings"
                )
            return None
        from ticketlab.specs import from_mapping

        return from_mapping(self.settings_type, given or {}, f"method_settings.{self.name}")

    # -- which cells ----------------------------------------------------------------------------
    def matches(self, name: str) -> bool:
        """Whether ``name`` (an entry of a grid's methods, or a cell's method) is this method's."""
        return name == self.name

    def active(self, spec: GridSpec) -> bool:
        """Whether the grid runs this method."""
        return self.name in spec.methods

    def validate(self, spec: GridSpec) -> None:
        """Refuse a grid whose settings this method cannot run, before anything runs."""

    def levels(self, spec: GridSpec) -> list[float]:
        """The column values of the method's cells (sparsities; fractions of heads if structured)."""
        return list(spec.sparsities)

    def cells(self, spec: GridSpec, task: str, seed: int) -> list[Cell]:
        """The fine-tuning cells the grid runs for ``task`` and ``seed``."""
        return [Cell(task, self.name, level, seed) for level in self.levels(spec)]

    def ticket_cells(self, spec: GridSpec, task: str, seed: int) -> list[Cell]:
        """The cells with a ticket of this method and a result (the planned cells by default)."""
        return self.cells(spec, task, seed)

    def result_cells(self, spec: GridSpec, task: str, seed: int) -> list[Cell]:
        """Every cell with a result to report (the ticket cells by default)."""
        return self.ticket_cells(spec, task, seed)

    def results_file(self, spec: GridSpec, root: Path, cell: Cell) -> Path:
        """The results.json of a cell's fine-tuning run."""
        from ticketlab.experiments.grid.layout import cell_key

        return root / cell_key(cell) / "results.json"

    # -- the ticket and its step ----------------------------------------------------------------
    def ticket_path(self, spec: GridSpec, root: Path, cell: Cell) -> Path | None:
        """Where the mask of a cell's ticket is (or will be); None when there is none."""
        return None

    def ticket_step(self, spec: GridSpec, cell: Cell) -> GridStep | None:
        """The step that makes the ticket of ``cell`` (None when there is none)."""
        return None

    def file_step(self, spec: GridSpec, made_for: Cell, inputs: tuple[str, ...] = ()) -> GridStep:
        """The step of a ticket that is one mask file at ``ticket_path(made_for)`` (``made_for``:
        what it is shared by, e.g. every task and seed: ``Cell("", name, sparsity, 0)``)."""
        return GridStep(self.name, str(self.ticket_path(spec, Path("."), made_for)), inputs, cell=made_for)

    def input_steps(self, spec: GridSpec, step: GridStep) -> list[GridStep]:
        """The steps of ``step.inputs`` that this method plans itself (added to the plan first)."""
        return []

    def extra_steps(self, spec: GridSpec) -> list[GridStep]:
        """Steps the method needs besides its tickets' (IMP runs of transfer sources)."""
        return []

    def cell_inputs(self, spec: GridSpec, cell: Cell) -> tuple[str, ...]:
        """Keys of this method's steps that another method's ``cell`` needs (IMP's level 0, which
        the full cell takes over)."""
        return ()

    def ticket_of(self, runner: GridRunner, cell: Cell) -> Path | None:
        """The mask file of ``cell``'s ticket, its step made first if it is not finished."""
        step = self.ticket_step(runner.spec, cell)
        if step is None:
            return None
        runner.run_step(step)
        return self.ticket_path(runner.spec, runner.root, cell)

    def determinants(self, spec: GridSpec, step: GridStep) -> dict[str, Any]:
        """Everything that determines the output of one of its steps besides the steps it needs
        (hashed into the step's name in the store): override to add what else does. Settings at
        their defaults stay out, so a setting added later renames no step."""
        from dataclasses import asdict

        from ticketlab.experiments.store import non_default_fields

        settings = self.settings(spec)
        return {
            "method": self.name,
            "model": spec.model,
            "scope": spec.scope,
            "scheme": spec.scheme,
            "made_for": asdict(step.cell),
            "settings": non_default_fields(settings) if settings is not None else None,
        }

    def make(self, runner: GridRunner, step: GridStep) -> Any:
        """Make (or finish, or read back) a step of this method's."""
        raise TicketlabError(f"grid method {self.name!r} plans no steps of its own")

    def step_done(self, runner: GridRunner, step: GridStep) -> bool:
        """Whether one of this method's steps is finished (by anyone), making nothing."""
        return (runner.root / step.key).is_file()

    def step_claims(self, runner: GridRunner, step: GridStep) -> list[tuple[Path, str]]:
        """The (step store, step name) pairs whose live claims mean someone works on ``step``."""
        path = runner.root / step.key
        return [(path.parent, path.name)]

    # -- its cells' fine-tuning -----------------------------------------------------------------
    def prepare_model(self, runner: GridRunner, cell: Cell, record: dict[str, Any]) -> Any:
        """The model a cell fine-tunes, when not the task's model built from the pre-trained one
        (the controls); what was done goes into ``record`` (results.json)."""
        return None

    def reuse_result(self, runner: GridRunner, cell: Cell, finetune_spec: Any, tmp: Path) -> Any:
        """A cell's result that one of this method's steps already holds, copied into ``tmp``
        (IMP's level 0 is the full model's cell); None when it holds none."""
        return None


# -- the registry ---------------------------------------------------------------------------------
_METHODS: dict[str, GridMethod] = {}
_discovered = False


def register(method: GridMethod) -> GridMethod:
    """Add a method to the registry (a method module calls this when imported)."""
    if not method.name:
        raise TicketlabError(f"{type(method).__name__} has no name")
    if method.name in _METHODS and type(_METHODS[method.name]) is not type(method):
        raise TicketlabError(f"two grid methods are called {method.name!r}")
    _METHODS[method.name] = method
    return method


def _discover() -> None:
    """Import every method module of this package and of installed plugins, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = __name__.rsplit(".", 1)[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "base":
            importlib.import_module(f"{package}.{module.name}")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def registered() -> list[GridMethod]:
    """Every registered method, in the order they were registered."""
    _discover()
    return sorted(_METHODS.values(), key=lambda m: m.order)  # stable: equal orders as registered


def method_names() -> tuple[str, ...]:
    return tuple(m.name for m in registered())


def method_of(name: str) -> GridMethod:
    """The method a grid's method entry (or a cell's method, such as ``imp@mrpc``) belongs to."""
    for method in registered():
        if method.matches(name):
            return method
    raise TicketlabError(f"unknown grid method {name!r} (choose from {', '.join(method_names())})")


def active_methods(spec: GridSpec) -> list[GridMethod]:
    """The methods a grid runs, the full model first, then in the order of its ``methods``, then
    those it runs without naming them (transfer)."""
    from ticketlab.experiments.grid.layout import FULL_MODEL

    named = [method_of(name) for name in dict.fromkeys(spec.methods)]
    named.sort(key=lambda m: m.name != FULL_MODEL)  # stable: the rest keep their order
    implied = [m for m in registered() if m not in named and m.active(spec)]
    return named + implied


def methods_where(attribute: str) -> Iterable[str]:
    """The names of the registered methods with a true ``attribute`` (e.g. ``needs_full_model_weights``)."""
    return tuple(m.name for m in registered() if getattr(m, attribute))
