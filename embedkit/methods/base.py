"""The contract every training method fulfils, and the registry that finds methods by name.

A method is one file in ``embedkit/methods/``: a pydantic schema for its parameters, the text columns it
trains on, and a ``build_loss`` that returns an ``nn.Module`` loss in the sentence-transformers convention
(``loss(features, labels) -> Tensor``). Optional hooks add trainer callbacks, a batch sampler or a dataset
transform. Torch is imported only inside the hooks, so recipes validate without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from embedkit.recipe import Recipe

_REGISTRY: dict[str, type[Method]] = {}


class MethodParams(BaseModel):
    """Base for a method's parameter schema: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class TrainContext:
    """What a method may look at while it builds its parts."""

    recipe: Recipe
    model: SentenceTransformer
    params: Any
    world_size: int = 1
    rank: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class; subclasses set the class attributes and implement :meth:`build_loss`."""

    @classmethod
    def roles(cls) -> tuple[str, ...]:
        """Names of the dataset columns, in order: the text columns, then the label column if any."""
        return cls.column_roles + ((cls.label_role,) if cls.label_role else ())

    @classmethod
    def column_types(cls) -> tuple[str, ...]:
        """The type of each column of :meth:`roles`: ``text`` for the text columns, ``score`` (a finite number,
        read as float) for the label column; data readers check and convert by it."""
        return ("text",) * len(cls.column_roles) + (("score",) if cls.label_role else ())

    name: ClassVar[str]
    params_cls: ClassVar[type[MethodParams]] = MethodParams
    column_roles: ClassVar[tuple[str, ...]] = ("text",)
    label_role: ClassVar[str | None] = None  # a numeric column after the text columns (e.g. a gold score)
    in_batch_negatives: ClassVar[bool] = True  # the loss contrasts each anchor with the rest of the batch
    paper: ClassVar[str] = ""
    citation: ClassVar[str] = ""

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.params = ctx.params

    def build_loss(self) -> torch.nn.Module:
        raise NotImplementedError

    def callbacks(self, loss: torch.nn.Module) -> list:
        """Extra ``transformers.TrainerCallback`` objects (e.g. a momentum update)."""
        return []

    def batch_sampler(self) -> Any:
        """A ``DefaultBatchSampler`` subclass or factory, or ``None`` for the trainer's default."""
        return None

    def prepare_dataset(self, dataset: Any) -> Any:
        """Transform the ``datasets.Dataset`` of role-named columns before training (default: as is)."""
        return dataset


def training_head(method: Method) -> torch.nn.Module | None:
    """SimCSE's MLP over the pooled vector when it exists at training time only (``pooling: cls`` with
    ``mlp_only_train``), else ``None``. Several methods share it (the loss owns it; it is not saved)."""
    cfg = method.ctx.recipe.model
    if cfg.pooling != "cls" or not cfg.mlp_only_train:
        return None
    from embedkit.losses.common import ProjectionHead

    return ProjectionHead(method.ctx.model.get_embedding_dimension()).to(method.ctx.model.device)


ROW_ID_COLUMN = "label"  # the collator hands this column to the loss as `labels`: the dataset row ids


def add_row_ids(dataset: Any) -> Any:
    """Add the dataset row ids as the label column, so the loss can key each row's augmentation."""
    if ROW_ID_COLUMN in dataset.column_names:
        raise ValueError(f"the training data already has a {ROW_ID_COLUMN!r} column")
    return dataset.add_column(ROW_ID_COLUMN, list(range(len(dataset))))


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to recipes under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls
