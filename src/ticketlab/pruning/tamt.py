"""Learned masks (TAMT): real-valued scores per weight, exact top-k in the forward pass, STE backward.

Every masked matrix ``W`` gets a score tensor ``S`` of its shape. The forward pass uses
``W * keep(S)``, where ``keep`` prunes exactly ``k = floor(n * sparsity)`` of the lowest scores, per
matrix (``per-matrix``) or over the whole scope (``global``), recomputed whenever the scores
change: the count is exact at every step (the original TAMT refreshed its threshold only every
100-1000 steps and drifted in between). The backward pass is the straight-through estimator,
``dL/dS = dL/dW_eff * W``. The weights stay frozen.

The masked weight is installed with ``torch.nn.utils.parametrize`` on the ``nn.Linear`` /
``nn.Embedding`` modules that own the weights, so it does not depend on the attention backend
(eager, SDPA, flash): whoever reads ``module.weight`` gets the masked weight. Tied modules (an MLM
decoder sharing the word-embedding matrix) are masked alike. :meth:`LearnedMask.dense` switches
the masking off, so the dense teacher of distillation runs on the same weights without a copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ticketlab.errors import TicketlabError
from ticketlab.masks.fingerprint import ALGORITHM, combined, kept_digests, tensor_digest
from ticketlab.masks.provenance import Provenance, TensorInfo
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models.adapters import EncoderAdapter
from ticketlab.pruning.selection import SCHEMES, lowest_k_mask, num_to_prune, validate_sparsity

DEFAULT_SCORE_SCALE = 0.01  # "c": kept entries start at 2c, pruned ones at 0 (TAMT)


def keep_lowest_k_pruned(flat_scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Keep-bits with exactly ``k`` of the lowest scores (over all the flat tensors) pruned.

    The same bits as :func:`ticketlab.pruning.lowest_k_mask` (ties at the threshold: first ones,
    in tensor order then index order, are pruned first), computed without leaving the device and
    without Python loops over ties, so it can run at every training step.
    """
    if k == 0:
        return [torch.ones_like(s, dtype=torch.bool) for s in flat_scores]
    whole = flat_scores[0] if len(flat_scores) == 1 else torch.cat(flat_scores)
    threshold = torch.kthvalue(whole, k).values
    at_or_below = whole <= threshold
    surplus = int(at_or_below.sum()) - k  # entries equal to the threshold that must stay
    if surplus == 0:  # the usual case (distinct scores, or all tied entries pruned): no tie-break
        pruned = at_or_below
    else:
        ties = whole == threshold
        needed = int(ties.sum()) - surplus
        pruned = (whole < threshold) | (ties & (torch.cumsum(ties, 0, dtype=torch.int32) <= needed))
    return list(torch.split(~pruned, [s.numel() for s in flat_scores]))


def keep_bits(scores: Mapping[str, torch.Tensor], sparsity: float, scheme: str) -> dict[str, torch.Tensor]:
    """Keep-bits of ``scores`` at ``sparsity`` (per matrix or global), as ``lowest_k_mask`` gives.

    Scores on the CPU go through :func:`ticketlab.pruning.lowest_k_mask` itself (a sampled bracket
    and one chunked pass: 70 ms for MiniLM-L6's 22.5M scores on one core, against 550-700 ms for
    one ``kthvalue`` per matrix, which copies and partitions each matrix); on an accelerator, one
    ``kthvalue`` per matrix on the device (:func:`keep_lowest_k_pruned`).
    """
    if scheme not in SCHEMES:
        raise TicketlabError(f"unknown scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if all(score.device.type == "cpu" for score in scores.values()):
        return lowest_k_mask({n: s.detach() for n, s in scores.items()}, sparsity, scheme)
    return keep_bits_on_device(scores, sparsity, scheme)


def keep_bits_on_device(
    scores: Mapping[str, torch.Tensor], sparsity: float, scheme: str
) -> dict[str, torch.Tensor]:
    """:func:`keep_bits` without leaving the scores' device: one ``kthvalue`` per matrix (or one
    over all, globally), as :func:`keep_lowest_k_pruned` computes it."""
    names = list(scores)
    flats = [scores[n].detach().reshape(-1).float() for n in names]
    if scheme == "global":
        keeps = keep_lowest_k_pruned(flats, num_to_prune(sum(f.numel() for f in flats), sparsity))
    else:
        keeps = [keep_lowest_k_pruned([f], num_to_prune(f.numel(), sparsity))[0] for f in flats]
    return {n: keep.reshape(scores[n].shape) for n, keep in zip(names, keeps)}


class _StraightThroughMask(torch.autograd.Function):
    """``weight * keep`` forward; the score receives ``grad * weight`` (STE), the weight nothing."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, score: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        # The bool keep-bits viewed as uint8 (no copy): a uint8 operand is widened inside the
        # vectorised multiply, while a bool one takes a slower casting path and .to(dtype) would
        # write a full-size float copy of the mask at every step.
        return weight * keep.view(torch.uint8)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return None, (grad * weight).to(torch.float32), None


def masked_weight(weight: torch.Tensor, score: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The effective weight ``weight * keep`` with the straight-through gradient to ``score``."""
    return _StraightThroughMask.apply(weight, score, keep)


class _ScoreMaskParametrization(nn.Module):
    """The parametrization installed on a module's ``weight``: asks the owner for the current mask."""

    def __init__(self, owner: LearnedMask, name: str):
        super().__init__()
        # A plain attribute, not a submodule: the owner must not become part of the model's tree.
        object.__setattr__(self, "_owner", owner)
        self.matrix_name = name

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self._owner.effective_weight(self.matrix_name, weight)


def _key(name: str) -> str:
    return name.replace(".", "/")  # ParameterDict keys cannot contain dots


class LearnedMask(nn.Module):
    """Scores over a model's matrices in ``scope``; installs the exact top-k mask on the model.

    Typical use::

        learned = LearnedMask(model, init_mask, sparsity=0.7, scheme="per-matrix")
        with learned.attached():                     # model.weight reads are now masked
            optimizer = torch.optim.AdamW(learned.parameters(), lr=2e-5, weight_decay=0.01)
            loss = objective(model); loss.backward(); optimizer.step()
        mask = learned.to_mask(provenance)           # top-k of the final scores
    """

    def __init__(
        self,
        model: nn.Module,
        init_mask: UnstructuredMask,
        sparsity: float,
        scheme: str = "per-matrix",
        score_scale: float = DEFAULT_SCORE_SCALE,
    ):
        super().__init__()
        if scheme not in SCHEMES:
            raise TicketlabError(f"unknown scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
        self.sparsity = validate_sparsity(sparsity)
        self.scheme = scheme
        object.__setattr__(self, "model", model)  # not a submodule: .parameters() are the scores only
        adapter = EncoderAdapter(model)
        self.names: list[str] = list(init_mask.tensors)
        self.info = dict(init_mask.info)
        self.weights: dict[str, nn.Parameter] = {n: adapter.parameter(n) for n in self.names}
        self.scores = nn.ParameterDict()
        for name in self.names:
            weight = self.weights[name]
            bits = init_mask.tensors[name].to(weight.device)
            if tuple(bits.shape) != tuple(weight.shape):
                raise TicketlabError(
                    f"initial mask of {name!r} has shape {tuple(bits.shape)}, not {tuple(weight.shape)}"
                )
            self.scores[_key(name)] = nn.Parameter((bits.float() * 2.0 * score_scale).to(weight.device))
        self.enabled = True
        self._cache_key: tuple[int, ...] | None = None
        self._keep: dict[str, torch.Tensor] = {}
        self._installed: list[tuple[nn.Module, nn.Module]] = []
        self._requires_grad: dict[nn.Parameter, bool] = {}

    # -- the mask -----------------------------------------------------------------------------
    def score(self, name: str) -> nn.Parameter:
        return self.scores[_key(name)]

    def current_keep(self) -> dict[str, torch.Tensor]:
        """Keep-bits of the current scores (recomputed only when a score tensor changed)."""
        key = tuple(p._version for p in self.scores.values())
        if key != self._cache_key:
            self._keep = keep_bits({n: self.score(n) for n in self.names}, self.sparsity, self.scheme)
            self._cache_key = key
        return self._keep

    def effective_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return masked_weight(weight, self.score(name), self.current_keep()[name])

    @contextlib.contextmanager
    def dense(self) -> Iterator[None]:
        """Within this block the model runs with its dense weights (the distillation teacher)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    # -- installing on the model --------------------------------------------------------------
    def _owners(self, name: str) -> list[nn.Module]:
        """Modules whose ``weight`` is this parameter (the owner, plus tied decoders)."""
        weight = self.weights[name]
        owners = []
        for module in self.model.modules():
            if parametrize.is_parametrized(module, "weight"):
                continue
            if module._parameters.get("weight") is weight:
                owners.append(module)
        return owners

    def attach(self) -> LearnedMask:
        """Freeze the model's weights and mask every matrix in scope through a parametrization."""
        if self._installed:
            return self
        for parameter in self.model.parameters():
            self._requires_grad[parameter] = parameter.requires_grad
            parameter.requires_grad_(False)
        for name in self.names:
            owners = self._owners(name)
            if not owners:
                raise TicketlabError(f"no module of the model owns the weight {name!r}")
            parametrization = _ScoreMaskParametrization(self, name)
            for module in owners:
                parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)
                self._installed.append((module, parametrization))
        return self

    def detach(self) -> None:
        """Remove the parametrizations: the model's weights are the dense originals again, and
        trainable as before :meth:`attach`."""
        for module, _ in self._installed:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        self._installed.clear()
        for parameter, requires_grad in self._requires_grad.items():
            parameter.requires_grad_(requires_grad)
        self._requires_grad.clear()

    @contextlib.contextmanager
    def attached(self) -> Iterator[LearnedMask]:
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    # -- the result ---------------------------------------------------------------------------
    def to_mask(self, provenance: Provenance) -> UnstructuredMask:
        """The top-k of the current scores as a mask, fingerprinted against the dense weights."""
        keep = {n: bits.detach().cpu().clone() for n, bits in self.current_keep().items()}
        info = {n: self.info.get(n, TensorInfo(shape=tuple(keep[n].shape))) for n in self.names}
        mask = UnstructuredMask(keep, provenance, info)
        # The weights are read from the parameters themselves (the parametrization's "original"),
        # so this works with the mask attached or not.
        weights = {n: self.weights[n].detach() for n in self.names}
        mask.provenance.fingerprint = {
            "algorithm": ALGORITHM,
            "kept": kept_digests(weights, keep),
            "model": combined({n: tensor_digest(w) for n, w in weights.items()}),
        }
        return mask
