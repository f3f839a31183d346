"""Objectives that compose: a method supplies its *views* and its main loss; the cross-cutting pieces are
applied here, the same way for every method.

A method's loss subclasses :class:`ComposedLoss` and implements three small hooks:

* :meth:`ComposedLoss.plan` — from the tokenised batch, the columns the trained encoder embeds (with
  gradient; a column entered twice gives two dropout views) and everything computed *outside* the encoder
  pass without gradient: momentum keys, queue negatives, masks, token targets (a :class:`ViewBatch`);
* :meth:`ComposedLoss.score` — the main loss as a function of the views' embeddings (the encoder's output,
  before any training-only head, which ``score`` applies itself);
* :meth:`ComposedLoss.after` — side effects once the loss is known (enqueue keys, count a step).

Because the main loss is a function of embeddings, :class:`ComposedLoss` can then apply, for every method:

* **GradCache** (``training.mini_batch_size``): sentence-transformers' :class:`CachedLossMixin` embeds the
  columns in mini-batches without a graph, back-propagates the loss to the embeddings, and replays each
  mini-batch with its RNG state; same loss and gradients, the activation memory of one mini-batch. The
  gradients of parameters the loss reaches directly (a training-only head, a vocabulary head, a tied decoder)
  are computed then too, but applied only in the outer backward pass, scaled by its ``grad_output`` like the
  encoder's (fp16's gradient scaler, gradient accumulation): see :class:`_DeferredGradients`.
* **cross-process gathering** (``training.gather_across_devices``): :meth:`ComposedLoss.gather`, the one
  switch every score and term reads.
* **Matryoshka** (``training.matryoshka_dims``): the main loss on each truncated, re-normalised prefix of the
  views (and of the side embeddings: keys, queue negatives), weighted and summed as sentence-transformers'
  ``MatryoshkaLoss`` does (same ``shrink``). The full width is always one of the dimensions
  (:func:`complete_matryoshka` adds it, weight 1, when the list lacks it).
* **extra terms** (``objective.terms``): weighted objective terms on the views (:mod:`embedkit.losses.terms`).

With no term and no Matryoshka dimension the loss is the plain tensor the method always returned (same ops,
same order, bit for bit). Otherwise it is a dict of named, weighted terms that sentence-transformers' trainer
sums for the backward pass and logs one by one (``loss_main``, ``loss_uniformity``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses import CachedLossMixin
from torch import Tensor, nn

from embedkit import distributed
from embedkit.errors import RecipeError
from embedkit.log import log
from embedkit.losses.common import encode_columns, gather
from embedkit.losses.terms import build_term, term_info

MAIN = "loss_main"


@dataclass
class ViewBatch:
    """What a method's :meth:`ComposedLoss.plan` hands to the framework for one batch.

    Attributes:
        columns: tokenised columns the trained encoder embeds, in order (the views).
        labels: the batch labels as the trainer gave them.
        pair: indices into the views of (anchor, positive) for pair terms; ``None``: the method has no
            positive per anchor (e.g. CoSENT's scored pairs).
        positive: positive embeddings computed outside the encoder pass (momentum keys), used instead of
            ``views[pair[1]]`` when set.
        side: embeddings in the views' space that are not views (keys, queue negatives): truncated with the
            views under Matryoshka.
        anchor_features / positive_features: the tokenised texts of the anchors and positives (for a teacher).
        extra: anything else the method's own ``score``/``after`` needs (masks, targets, ...).
    """

    columns: list[dict[str, Tensor]]
    labels: Tensor | None = None
    pair: tuple[int, int] | None = (0, 1)
    positive: Tensor | None = None
    side: dict[str, Tensor] = field(default_factory=dict)
    anchor_features: dict[str, Tensor] | None = None
    positive_features: dict[str, Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def anchors_positives(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(anchors, positives) embeddings of the pair views."""
        if self.pair is None:
            raise ValueError("this method has no (anchor, positive) views")
        a = views[self.pair[0]]
        p = self.positive if self.positive is not None else views[self.pair[1]]
        return a, p.to(a.dtype)


def shrink(x: Tensor, dim: int) -> Tensor:
    """The first ``dim`` coordinates, re-normalised (sentence-transformers' Matryoshka ``shrink``)."""
    if dim > x.shape[-1]:
        raise ValueError(f"training.matryoshka_dims: {dim} is larger than the embedding dimension {x.shape[-1]}")
    return F.normalize(x[..., :dim], p=2, dim=-1)


class ComposedLoss(CachedLossMixin, nn.Module):
    """Base of every embedkit method loss: the method's views and main loss, composed with GradCache,
    gathering, Matryoshka and extra terms (see the module docstring).

    Args:
        model: the SentenceTransformer being trained.
        head: optional training-only MLP (``score`` applies it).
        gather_across_devices: gather in-batch candidates from every process (:meth:`gather`).
        mini_batch_size: GradCache mini-batch; ``None``: one forward pass for the whole batch.
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None, gather_across_devices: bool = True,
                 mini_batch_size: int | None = None) -> None:
        nn.Module.__init__(self)
        self.model = model
        self.head = head
        self.gather_across_devices = gather_across_devices
        self.mini_batch_size = mini_batch_size
        self.matryoshka_dims: list[int] = []
        self.matryoshka_weights: list[float] = []
        self.main_weight = 1.0
        self.terms = nn.ModuleList()
        self._batch: ViewBatch | None = None
        self._components: dict[str, float] = {}
        self._deferred: list[tuple[nn.Parameter, Tensor]] = []

    # The method's hyperparameters (attribute names) that :meth:`get_config_dict` reports.
    config_keys: tuple[str, ...] = ()

    # ---- what a method implements ------------------------------------------------------------------

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        raise NotImplementedError

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        """The main loss from the views' embeddings (before the training-only head)."""
        raise NotImplementedError

    def after(self, batch: ViewBatch) -> None:
        """Side effects after a training forward pass (default: none)."""

    def encode(self, columns: list[dict[str, Tensor]]) -> list[Tensor]:
        """The plain (not cached) encoder pass: every column in one forward pass."""
        return encode_columns(self.model, columns)

    # ---- shared helpers ----------------------------------------------------------------------------

    def gather(self, x: Tensor) -> Tensor:
        """``x`` from every process (with gradient) when ``gather_across_devices`` is on."""
        return gather(x, self.gather_across_devices)

    def own_rows(self, n: int) -> slice:
        """Where this process's ``n`` rows sit among the candidates :meth:`gather` returns: the rule of
        :func:`embedkit.distributed.local_rows` when gathering, else the first ``n``."""
        return distributed.local_rows(n) if self.gather_across_devices else slice(0, n)

    def project(self, x: Tensor) -> Tensor:
        return self.head(x) if self.head is not None else x

    def project_all(self, views: list[Tensor]) -> list[Tensor]:
        """The head over all views at once (one matrix product, as in a single encoder pass)."""
        if self.head is None:
            return list(views)
        return list(torch.split(self.head(torch.cat(views)), [v.shape[0] for v in views]))

    # ---- configuration (the framework calls this after the method built the loss) -----------------------

    def configure(self, mini_batch_size: int | None = None, gather_across_devices: bool = True,
                  matryoshka_dims: list[int] | None = None, matryoshka_weights: list[float] | None = None,
                  terms: list[nn.Module] | None = None, main_weight: float = 1.0) -> ComposedLoss:
        self.mini_batch_size = mini_batch_size
        self.gather_across_devices = gather_across_devices
        self.matryoshka_dims = list(matryoshka_dims or [])
        self.matryoshka_weights = list(matryoshka_weights or [1.0] * len(self.matryoshka_dims))
        if len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError("matryoshka_weights needs one weight per dimension")
        self.main_weight = main_weight
        self.terms = nn.ModuleList(terms or [])
        return self

    def get_config_dict(self) -> dict[str, Any]:
        """The loss's hyperparameters (:attr:`config_keys`) and what the framework composed onto it, as
        sentence-transformers' losses report themselves: its model card lists them under the loss."""
        out: dict[str, Any] = {key: _plain(getattr(self, key)) for key in self.config_keys}
        out["gather_across_devices"] = self.gather_across_devices
        if self.mini_batch_size:
            out["mini_batch_size"] = self.mini_batch_size
        if self.matryoshka_dims:
            out["matryoshka_dims"] = list(self.matryoshka_dims)
            out["matryoshka_weights"] = list(self.matryoshka_weights)
        if self.main_weight != 1.0:
            out["main_weight"] = self.main_weight
        if len(self.terms):
            out["terms"] = [term.get_config_dict() for term in self.terms]
        return out

    def callbacks(self) -> list[Any]:
        """The trainer callbacks the composed terms need (the distill term's step counter)."""
        return [cb for term in self.terms for cb in (term.callbacks() if hasattr(term, "callbacks") else [])]

    @property
    def uses_gradient_cache(self) -> bool:  # type: ignore[override]
        """Whether the backward pass re-embeds mini-batches (sentence-transformers' wrappers check this)."""
        return bool(self.mini_batch_size)

    @property
    def composed(self) -> bool:
        """Whether the loss is a sum of named terms (else the method's plain loss)."""
        return bool(self.terms) or bool(self.matryoshka_dims) or self.main_weight != 1.0

    # ---- the composition --------------------------------------------------------------------------------

    def objective(self, views: list[Tensor], batch: ViewBatch) -> dict[str, Tensor] | Tensor:
        """The method's loss, or the dict of weighted named terms when anything is composed onto it. Views past
        the method's columns are replayed rows (``data.replay``): they go to the terms
        (``batch.extra["replay_views"]``), never to the method's score."""
        if len(views) > len(batch.columns):
            views, batch.extra["replay_views"] = views[:len(batch.columns)], views[len(batch.columns):]
        if not self.composed:
            return self.score(views, batch)
        out: dict[str, Tensor] = {}
        if self.matryoshka_dims:
            for dim, weight in zip(self.matryoshka_dims, self.matryoshka_weights, strict=True):
                small = [shrink(v, dim) for v in views]
                sub = ViewBatch(**{**batch.__dict__, "side": {k: shrink(v, dim) for k, v in batch.side.items()},
                                   "positive": None if batch.positive is None else shrink(batch.positive, dim)})
                out[f"{MAIN}_{dim}"] = self.main_weight * weight * self.score(small, sub)
        else:
            main = self.score(views, batch)
            out[MAIN] = main if self.main_weight == 1.0 else self.main_weight * main
        for term in self.terms:
            out[f"loss_{term.name}"] = term.weight * term(views, batch, self)
        return out

    def forward(self, sentence_features: list[dict[str, Tensor]], labels: Tensor | None = None):
        batch = self.plan(list(sentence_features), labels)
        for term in self.terms:
            term.prepare(batch, self)
        # Replayed rows (the distill term's) are embedded in the same pass as the method's views.
        columns = batch.columns + batch.extra.get("replay_columns", [])
        if self.mini_batch_size:
            self._batch, self._deferred = batch, []
            try:
                total = self.forward_cached(columns, labels)
                deferred, self._deferred = self._deferred, []
            finally:
                self._batch = None
            if deferred:  # the loss's own parameters get their gradient in the outer backward pass
                params, grads = zip(*deferred, strict=True)
                total = _DeferredGradients.apply(total, grads, *params)
            out: Tensor | dict[str, Tensor] = total
            if self.composed:
                out = _around_total(total, self._components)
        else:
            out = self.objective(self.encode(columns), batch)
        if self.model.training:
            self.after(batch)
        return out

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *,
                       with_backward: bool = False) -> Tensor:
        out = self.objective([torch.cat(mbs) for mbs in reps], self._batch)
        if isinstance(out, dict):
            self._components = {k: float(v.detach()) for k, v in out.items()}
            loss = torch.stack(list(out.values())).sum()
        else:
            loss = out
        if with_backward:
            # Gradients to the embeddings (the cache that CachedLossMixin replays) and to every trainable
            # parameter the loss reaches directly; the latter are applied later, scaled by the outer backward's
            # grad_output (a plain loss.backward() here would put them in .grad unscaled: under fp16 the
            # gradient scaler would then divide them by its scale).
            leaves = [r for mbs in reps for r in mbs]
            params = [p for p in self.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
            for rep, grad in zip(leaves, grads, strict=False):
                rep.grad = grad
            self._deferred = [(p, g) for p, g in zip(params, grads[len(leaves):], strict=True) if g is not None]
            loss = loss.detach()
        return loss


class _DeferredGradients(torch.autograd.Function):
    """Identity on the GradCache total whose backward hands the loss's own parameters their gradients,
    computed in :meth:`ComposedLoss.calculate_loss`, times the outer ``grad_output``: exactly what the encoder's
    replayed mini-batches get (sentence-transformers' ``_backward_hook`` scales each by ``grad_output``)."""

    @staticmethod
    def forward(ctx: Any, total: Tensor, grads: tuple[Tensor, ...], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return total.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (grad_output, None, *(g * grad_output.to(g.dtype) for g in ctx.grads))


def _plain(value: Any) -> Any:
    """A hyperparameter as JSON can hold it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _around_total(total: Tensor, components: dict[str, float]) -> dict[str, Tensor]:
    """The named terms for logging around the one gradient-carrying GradCache total: the first term holds
    ``total`` minus the others, so the dict still sums to ``total`` (as sentence-transformers' cached SPLADE)."""
    values = {k: torch.tensor(v, device=total.device, dtype=total.dtype) for k, v in components.items()}
    first = next(iter(values))
    others = sum((v for k, v in values.items() if k != first), start=torch.zeros_like(total))
    values[first] = total - others
    return values


def complete_matryoshka(recipe: Any, width: int | None) -> None:
    """Add the model's full ``width`` first to ``training.matryoshka_dims`` when the list lacks it (weight 1, in
    front of any ``matryoshka_weights``), in the recipe itself, so that the resolved recipe records what trains.

    sentence-transformers' ``MatryoshkaLoss`` trains exactly the dimensions listed and only warns that, without
    the full width, "the full model dimension won't be trained"; its examples list it first
    (``[768, 512, 256, 128, 64]``). embedkit's dims mean the main loss *also* on the prefixes, so a list that
    omits the width gets it, and the log says so. A list that holds it is left as it is."""
    t = recipe.training
    dims = t.matryoshka_dims
    if not dims or width is None or width in dims or any(d > width for d in dims):  # too large: compose refuses
        return
    weights = None if t.matryoshka_weights is None else [1.0, *t.matryoshka_weights]
    recipe.training = t.model_copy(update={"matryoshka_dims": [width, *dims], "matryoshka_weights": weights})
    log(f"training.matryoshka_dims {dims} lacks the model's full width {width}: added first (weight 1), so the "
        f"full embedding trains too; the run uses and records {recipe.training.matryoshka_dims}")


def compose(loss: nn.Module, recipe: Any, model: nn.Module, replay: Any = None) -> nn.Module:
    """The framework's composition point (:func:`embedkit.training.run.setup` calls it on the method's loss):
    apply the recipe's ``training.mini_batch_size``, ``gather_across_devices``, ``matryoshka_dims`` /
    ``matryoshka_weights`` and ``objective`` terms; ``replay``: the replayed rows of ``data.replay``
    (:class:`embedkit.losses.distill.ReplayRows`), handed to the terms that read them. Validation has already
    refused what a method cannot honour; a loss that is not a :class:`ComposedLoss` is returned as is when nothing
    is asked of it."""

    t, objective = recipe.training, recipe.objective
    if not isinstance(loss, ComposedLoss):
        asked = [k for k, v in (("training.mini_batch_size", t.mini_batch_size),
                                ("training.matryoshka_dims", t.matryoshka_dims), ("objective", objective)) if v]
        if asked:
            raise RecipeError(f"{', '.join(asked)}: the loss of method {recipe.method.name!r} "
                              f"({type(loss).__name__}) is not a ComposedLoss and cannot honour it")
        return loss
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
    for d in t.matryoshka_dims or []:
        if dim is not None and d > dim:
            raise RecipeError(f"training.matryoshka_dims: {d} is larger than the model's embedding dimension {dim}")
    complete_matryoshka(recipe, dim)  # a no-op when setup did it already (on the run's recipe)
    t = recipe.training
    terms = []
    for entry in objective.terms if objective is not None else []:
        params = term_info(entry.name).params.model_validate(entry.model_dump())
        term = build_term(params, model)
        if term_info(entry.name).needs == "replay":
            if replay is None:
                raise RecipeError(f"objective term {entry.name} needs data.replay (rows to hold to the teacher)")
            term.attach(replay)
        terms.append(term)
    return loss.configure(
        mini_batch_size=t.mini_batch_size, gather_across_devices=t.gather_across_devices,
        matryoshka_dims=t.matryoshka_dims, matryoshka_weights=t.matryoshka_weights, terms=terms,
        main_weight=objective.main_weight if objective is not None else 1.0,
    )
