"""The contract every training method fulfils, and the registry that finds methods by name.

A method is one file in ``embedkit/methods/``: a pydantic schema for its parameters, the text columns it
trains on, and a ``build_loss`` that returns an ``nn.Module`` loss in the sentence-transformers convention
(``loss(features, labels) -> Tensor``). A loss that subclasses :class:`embedkit.losses.objective.ComposedLoss`
(views + main loss; set ``composable = True``) gets GradCache, gathering, Matryoshka and objective terms from the
framework; :meth:`Method.refusals` says at validation which of them the method cannot honour.
Optional hooks add trainer callbacks, a batch sampler or a dataset
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
    # What the framework may compose onto the method's loss (embedkit.losses.objective). A method whose loss
    # is a ComposedLoss sets ``composable``; the others refuse training.mini_batch_size, matryoshka_dims and
    # objective terms at validation.
    composable: ClassVar[bool] = False
    matryoshka: ClassVar[bool] = True  # the main loss is a function of embeddings that may be truncated

    @classmethod
    def has_positives(cls, params: Any) -> bool:
        """Whether each row gives an (anchor, positive) pair of views (what alignment and CWCL need)."""
        return True

    @classmethod
    def refusals(cls, recipe: Recipe, params: Any) -> list[tuple[tuple, str]]:
        """(recipe key path, reason) for each cross-cutting option the recipe sets that this method cannot
        honour; :func:`embedkit.recipe.load_recipe` turns them into ``file:line: key: reason`` errors."""
        from embedkit.losses.terms import term_info

        t, out = recipe.training, []
        terms = recipe.objective.terms if recipe.objective is not None else []
        if not cls.composable:
            why = f"method {cls.name!r} does not compose its loss (embedkit.losses.objective.ComposedLoss)"
            if t.mini_batch_size:
                out.append((("training", "mini_batch_size"), f"{why}; remove the key"))
            if t.matryoshka_dims:
                out.append((("training", "matryoshka_dims"), f"{why}; remove the key"))
            if recipe.objective is not None:
                out.append((("objective",), f"{why}; remove the section"))
            return out
        if t.matryoshka_dims:
            if not cls.matryoshka:
                out.append((("training", "matryoshka_dims"),
                            f"method {cls.name!r} needs the full embedding (its loss reads every dimension)"))
            elif recipe.model.pooling == "cls" and recipe.model.mlp_only_train:
                out.append((("training", "matryoshka_dims"),
                            "a training-only MLP head (model.mlp_only_train) maps the full embedding; truncated "
                            "prefixes cannot go through it: set model.mlp_only_train: false or drop matryoshka_dims"))
        for i, term in enumerate(terms):
            if term_info(term.name).needs == "pairs" and not cls.has_positives(params):
                out.append((("objective", "terms", i, "name"),
                            f"term {term.name!r} needs an (anchor, positive) pair per row; method {cls.name!r} "
                            "gives none" + cls.positives_hint()))
        return out

    @classmethod
    def objective_problems(cls, recipe: Recipe) -> list[tuple[tuple, Any]]:
        """Each ``objective.terms`` entry checked against its term's schema: (key path, message) for an unknown
        term name, (entry path, ``ValidationError`` with ``title_schema`` set to the schema) for bad keys."""
        from pydantic import ValidationError

        from embedkit.losses.terms import term_info

        out: list[tuple[tuple, Any]] = []
        for i, entry in enumerate(recipe.objective.terms if recipe.objective is not None else []):
            prefix = ("objective", "terms", i)
            try:
                info = term_info(entry.name)
            except KeyError as err:
                out.append((prefix + ("name",), err.args[0]))
                continue
            try:
                info.params.model_validate(entry.model_dump())
            except ValidationError as err:
                err.title_schema = info.params
                out.append((prefix, err))
        return out

    @classmethod
    def positives_hint(cls) -> str:
        return ""

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
    from embedkit.modeling import initializer_range

    model = method.ctx.model
    return ProjectionHead(model.get_embedding_dimension(), initializer_range(model)).to(model.device)


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
