"""The ``st-loss`` method's loss: a sentence-transformers loss built from the recipe, run either as a
:class:`~embedkit.losses.objective.ComposedLoss` (its ``compute_loss_from_embeddings`` on the views, so GradCache,
Matryoshka and objective terms apply) or as sentence-transformers builds it."""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers import util
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer import losses as st_losses
from torch import Tensor, nn

from embedkit.losses.common import frozen_model
from embedkit.losses.objective import ComposedLoss, ViewBatch
from embedkit.methods.st_loss.signature import SIMILARITY_FUNCTIONS, signature


def loss_kwargs(params: Any, gather_across_devices: bool) -> dict[str, Any]:
    """The loss's keyword arguments as Python values: a similarity function's or an enum member's name resolved
    (validation checked them); ``gather_across_devices`` from ``training`` unless the recipe sets it."""
    sig = signature(params.loss)
    out: dict[str, Any] = {}
    for key, value in params.kwargs.items():
        param = sig.params[key]
        if key == "similarity_fct" and value in SIMILARITY_FUNCTIONS:
            value = getattr(util, value)
        elif param.enum:
            value = getattr(getattr(st_losses, param.enum), value)
        out[key] = value
    if "gather_across_devices" in sig.params and "gather_across_devices" not in out:
        out["gather_across_devices"] = gather_across_devices
    return out


def _keep_out_of_state(module: nn.Module, name: str) -> None:
    """Keep ``module.<name>`` as a plain attribute, not a submodule: it is neither trained nor saved with the
    loss's state (the model being trained is saved by the trainer, a guide is reloaded from the recipe)."""
    sub = module._modules.pop(name, None)
    if sub is not None:
        object.__setattr__(module, name, sub)


class STComposedLoss(ComposedLoss):
    """A sentence-transformers loss whose arithmetic is ``compute_loss_from_embeddings(embeddings, labels)``,
    composed by embedkit: the views are the dataset's text columns, embedded by sentence-transformers'
    ``embed_columns`` (its own forward pass, so the plain loss equals sentence-transformers' loss on the same
    batch), and the main loss is the wrapped loss's ``compute_loss_from_embeddings``. GradCache
    (``training.mini_batch_size``), Matryoshka (``training.matryoshka_dims``) and objective terms apply
    (:mod:`embedkit.losses.objective`). The formula and the paper are those of the wrapped loss (its docstring and
    ``citation``); a subclass named after it is made per loss so the model card names it.

    Args:
        model: the SentenceTransformer being trained.
        st_loss: the sentence-transformers loss, built on ``model``.
        pairs: each row is an (anchor, positive) pair (pair terms apply).
    """

    def __init__(self, model: nn.Module, st_loss: nn.Module, pairs: bool) -> None:
        super().__init__(model, None, bool(getattr(st_loss, "gather_across_devices", False)), None)
        _keep_out_of_state(st_loss, "model")
        self.st_loss = st_loss  # a submodule: parameters it owns (a projection) are trained and checkpointed
        self.pairs = pairs

    @property
    def citation(self) -> str | None:
        return getattr(self.st_loss, "citation", None)

    def get_config_dict(self) -> dict[str, Any]:
        """As the wrapped loss reports itself, and what embedkit composed onto it."""
        own = self.st_loss.get_config_dict() if hasattr(self.st_loss, "get_config_dict") else {}
        return {**own, **super().get_config_dict()}

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> ViewBatch:
        return ViewBatch(list(features), labels, pair=(0, 1) if self.pairs else None)

    def encode(self, columns: list[dict[str, Tensor]]) -> list[Tensor]:
        return embed_columns(self.model, columns)

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        return self.st_loss.compute_loss_from_embeddings(views, batch.labels)


def teacher_labels(method: Any, dataset: Any) -> Any:
    """``dataset`` with the ``label`` column a distillation loss reads, computed by ``method.teacher`` as
    sentence-transformers' distillation examples precompute it:

    * embeddings (``MSELoss``, ``EmbedDistillLoss``): the teacher's embedding of the first column (every further
      column, e.g. a translation, is trained towards it);
    * scores (``MarginMSELoss``, ``DistillKLDivLoss``): ``[s(q, p), s(q, n_1), …, s(q, n_k)]`` with the teacher's
      embeddings and the loss's ``similarity_fct`` (default ``pairwise_dot_score``); MarginMSELoss turns them into
      the margins ``s(q, p) − s(q, n_j)`` itself.
    """
    params, student = method.params, method.ctx.model
    teacher = frozen_model(params.teacher, student)
    columns = dataset.column_names
    texts = [list(dataset[c]) for c in columns]
    with torch.no_grad():
        if method.shape.teacher == "embeddings":
            labels = teacher.encode(texts[0], convert_to_tensor=True, show_progress_bar=False)
        else:
            fct = loss_kwargs(params, False).get("similarity_fct", util.pairwise_dot_score)
            emb = [teacher.encode(t, convert_to_tensor=True, show_progress_bar=False) for t in texts]
            labels = torch.stack([fct(emb[0], other) for other in emb[1:]], dim=1)
    del teacher
    return dataset.add_column("label", labels.float().cpu().tolist())


def build_st_loss(method: Any) -> nn.Module:
    """The loss of an ``st-loss`` method (its bound class names the loss and its shape)."""
    ctx, params = method.ctx, method.params
    model = ctx.model
    cls = getattr(st_losses, params.loss)
    kwargs = loss_kwargs(params, ctx.recipe.training.gather_across_devices)
    models = {key[-1]: frozen_model(name, model) for key, name in type(method).model_refs(params)
              if key[-1] in signature(params.loss).params}  # a guide; a teacher has labelled the rows already
    st_loss = cls(model, **models, **kwargs)
    for key in models:
        _keep_out_of_state(st_loss, key)
    if not method.shape.composable:
        return st_loss
    named = type(params.loss, (STComposedLoss,), {"__doc__": STComposedLoss.__doc__})
    return named(model, st_loss, method.shape.pairs)
