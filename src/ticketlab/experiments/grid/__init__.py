"""The ticket grid: tickets from several methods x sparsities x tasks x seeds, with the full model.

One spec (YAML or JSON) describes the grid; every cell is a fine-tuning run in its own folder and a
finished cell is skipped on rerun. Tickets are made once and shared by the cells that use them:

- ``full``: the dense pre-trained model (the reference every ticket is compared with);
- ``omp``: one-shot magnitude pruning of the pre-trained weights (task-independent);
- ``random``: random pruning, ``matched`` per matrix to the OMP ticket of the same sparsity
  (default) or uniform over the scope; one ticket per seed;
- ``imp``: iterative magnitude pruning on each task (one IMP run per seed; its levels' fine-tuning
  results are the cells, as in BERT-Tickets);
- ``permuted`` / ``random-init``: BERT-Tickets' controls, the OMP ticket's mask on pre-trained
  weights with whole layers permuted, or on randomly initialised weights.
- ``super-winning`` / ``super-random`` / ``super-losing``: structured super tickets (heads and FFN
  layers), scored on the fine-tuned model of the grid's ``full`` cell of the same task and seed; the
  cell's "sparsity" is the fraction of heads pruned (``super_levels``, default: the sparsities),
  with round(p x ``super_ffn_ratio`` x layers) FFN layers; results.json has the weight sparsity.
- ``allwin-good`` / ``allwin-random`` / ``allwin-bad``: all tickets winning's subnetworks at fixed
  sizes (no 0.9 stopping rule: the grid compares methods at the same sizes). Iterative importance
  pruning of the same fine-tuned model, re-scored on dev each step, through every level p
  (``allwin_levels``, default: the sparsities): floor(p x heads) heads and round(p x
  ``allwin_ffn_ratio`` x layers) FFN layers; random and bad of the same size drawn with the seed.
- ``tamt``: task-agnostic mask training (TAMT) on pre-training text, one mask per sparsity
  (task-independent, like OMP), trained as the ``tamt`` section says on the grid's scope and scheme.

With a ``pretrain_loss`` section, every unstructured ticket's MLM and distillation loss on held-out
text is measured once and stored beside its mask (``<mask>.pretrain_loss.json``), for the report's
plot of pre-training loss against downstream score.

Transfer: ``transfer_from`` names source tasks whose IMP tickets (at each sparsity) are also
fine-tuned on every other task of the grid (method ``imp@<source>``). The source ``mlm`` is IMP on
the masked-LM objective (text and training from ``mlm_text``, ``mlm_eval_text``, ``mlm_recipe``):
its task-agnostic ticket is fine-tuned on every task (``imp@mlm``).
"""

from ticketlab.experiments.grid.layout import Cell, GridStep
from ticketlab.experiments.grid.methods import GridMethod, method_of, register
from ticketlab.experiments.grid.plan import (
    finetune_spec_for,
    imp_level_for,
    imp_spec_for,
    plan_cells,
    plan_steps,
    pretrain_loss_path,
    result_cells,
    tamt_spec_for,
    ticket_cells,
    ticket_files,
    ticket_path,
)
from ticketlab.experiments.grid.records import (
    UNDEFINED_AS_ZERO,
    collect_pretrain_losses,
    collect_records,
    main_metric_of,
)
from ticketlab.experiments.grid.run import GridRunner, open_grid
from ticketlab.experiments.grid.spec import GridSpec, grid_method_names

__all__ = [
    "UNDEFINED_AS_ZERO",
    "Cell",
    "GridMethod",
    "GridRunner",
    "GridSpec",
    "GridStep",
    "collect_pretrain_losses",
    "collect_records",
    "finetune_spec_for",
    "grid_method_names",
    "imp_level_for",
    "imp_spec_for",
    "main_metric_of",
    "method_of",
    "open_grid",
    "plan_cells",
    "plan_steps",
    "pretrain_loss_path",
    "register",
    "result_cells",
    "tamt_spec_for",
    "ticket_cells",
    "ticket_files",
    "ticket_path",
]
