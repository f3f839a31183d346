"""The ``st-loss`` method's loss: a sentence-transformers loss built from the recipe, run either as a
:class:`~embedkit.losses.objective.ComposedLoss` (its ``compute_loss_from_embeddings`` on the views, so GradCache,
Matryoshka and objective terms apply) or as sentence-transformers builds it."""

from __future__ import annotations

from typing import Any

from sentence_transformers import util
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer import losses as st_losses
from torch import Tensor, nn

from embedkit.losses.objective import ComposedLoss, ViewBatch
from embedkit.methods.st_loss.signature import SIMILARITY_FUNCTIONS, signature
from embedkit.model_ref import load_model


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


def build_st_loss(method: Any) -> nn.Module:
    """The loss of an ``st-loss`` method (its bound class names the loss and its shape)."""
    ctx, params = method.ctx, method.params
    model = ctx.model
    cls = getattr(st_losses, params.loss)
    kwargs = loss_kwargs(params, ctx.recipe.training.gather_across_devices)
    models = {}
    for key, name in type(method).model_refs(params):
        other, _ = load_model(name, device=str(model.device))
        other.eval()
        other.requires_grad_(False)  # a guide is never trained (sentence-transformers computes it under no_grad)
        models[key[-1]] = other
    st_loss = cls(model, **models, **kwargs)
    for key in models:
        _keep_out_of_state(st_loss, key)
    if not method.shape.composable:
        return st_loss
    named = type(params.loss, (STComposedLoss,), {"__doc__": STComposedLoss.__doc__})
    return named(model, st_loss, method.shape.pairs)
