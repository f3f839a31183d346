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

from pydantic import BaseModel, ConfigDict, ValidationError

from embedkit.data.stream import add_row_ids as stream_row_ids
from embedkit.losses.terms import term_info

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from embedkit.data.sources import TrainData
    from embedkit.recipe import Recipe

_REGISTRY: dict[str, type[Method]] = {}


class MethodParams(BaseModel):
    """Base for a method's parameter schema: unknown keys are errors, and so is an infinite or NaN number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    def roles(cls, n_columns: int | None = None) -> tuple[str, ...]:
        """Names of the dataset columns, in order: the text columns, then the label column if any.

        A method with a :attr:`repeat_role` takes any number of further text columns after
        :attr:`column_roles`, named ``{repeat_role}_1`` … ``{repeat_role}_k`` (sentence-transformers'
        ``mine_hard_negatives`` n-tuple naming); ``n_columns`` (the columns the data gives) says how many.
        Without it the fixed roles come back (k = 0)."""
        text = cls.column_roles
        if cls.repeat_role and n_columns is not None:
            extra = n_columns - len(cls.column_roles) - (1 if cls.label_role else 0)
            text += tuple(f"{cls.repeat_role}_{i}" for i in range(1, extra + 1))
        return text + ((cls.label_role,) if cls.label_role else ())

    @classmethod
    def column_types(cls, n_columns: int | None = None) -> tuple[str, ...]:
        """The type of each column of :meth:`roles`: ``text`` for the text columns, ``score`` (a finite number,
        read as float) for the label column; data readers check and convert by it."""
        roles = cls.roles(n_columns)
        return ("text",) * (len(roles) - (1 if cls.label_role else 0)) + (("score",) if cls.label_role else ())

    @classmethod
    def column_problem(cls, columns: list[str]) -> str | None:
        """Why the data's ``columns`` (names as read, in order) do not fit the method, or ``None``.

        The message says what was expected and how to select columns; callers prefix the file or key."""
        fixed = cls.roles()
        if not cls.repeat_role:
            if len(columns) == len(fixed):
                return None
            return (f"method {cls.name!r} needs {len(fixed)} column(s) ({', '.join(fixed)}), the data gives "
                    f"{len(columns)} ({', '.join(map(str, columns))}); select them with data.train.columns")
        extra = columns[len(cls.column_roles):len(columns) - (1 if cls.label_role else 0)]
        if len(columns) >= len(fixed):
            labels = [c for c in extra if str(c).lower() in ("label", "labels", "score")]
            if not labels:
                return None
            return (f"column {labels[0]!r} would be read as a {cls.repeat_role} text; method {cls.name!r} takes "
                    f"{', '.join(cls.column_roles)}, then {cls.repeat_role} texts only: select the text columns "
                    "with data.train.columns")
        return (f"method {cls.name!r} needs at least {len(fixed)} columns ({', '.join(cls.column_roles)}, then any "
                f"number of {cls.repeat_role} columns {cls.repeat_role}_1 … {cls.repeat_role}_k), the data gives "
                f"{len(columns)} ({', '.join(map(str, columns))}); select them with data.train.columns")

    @classmethod
    def prompt_roles(cls) -> tuple[str, ...]:
        """The keys ``model.prompt_columns`` may use: the text roles, and :attr:`repeat_role` for all its columns."""
        return cls.column_roles + ((cls.repeat_role,) if cls.repeat_role else ())

    @classmethod
    def prompt_columns(cls, recipe: Recipe) -> dict[str, str]:
        """Role → prompt name that training applies: ``model.prompt_columns``, else :attr:`default_prompt_columns`
        when ``model.prompts`` holds every prompt it names, else none."""
        cfg = recipe.model
        if cfg.prompt_columns is not None:
            return dict(cfg.prompt_columns)
        prompts = cfg.prompts or {}
        if cls.default_prompt_columns and set(cls.default_prompt_columns.values()) <= set(prompts):
            return dict(cls.default_prompt_columns)
        return {}

    @classmethod
    def training_prompts(cls, recipe: Recipe, columns: list[str]) -> dict[str, str]:
        """Dataset column → prompt text, the ``prompts`` argument of sentence-transformers' trainer (its data
        collator prepends each column's prompt as ``SentenceTransformer.encode(prompt=...)`` does)."""
        mapping, prompts = cls.prompt_columns(recipe), recipe.model.prompts or {}
        out = {}
        for column in columns:
            role = column
            if cls.repeat_role and column.startswith(f"{cls.repeat_role}_") and column not in cls.column_roles:
                role = cls.repeat_role
            if role in mapping:
                out[column] = prompts[mapping[role]]
        return out

    name: ClassVar[str]
    params_cls: ClassVar[type[MethodParams]] = MethodParams
    column_roles: ClassVar[tuple[str, ...]] = ("text",)
    label_role: ClassVar[str | None] = None  # a numeric column after the text columns (e.g. a gold score)
    # A text role that follows column_roles any number of times (≥ 0), as {role}_1 … {role}_k (see roles()).
    repeat_role: ClassVar[str | None] = None
    # Role → prompt name applied in training when model.prompt_columns is not set and model.prompts has them all.
    default_prompt_columns: ClassVar[dict[str, str]] = {}
    in_batch_negatives: ClassVar[bool] = True  # the loss contrasts each anchor with the rest of the batch
    paper: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    # What the framework may compose onto the method's loss (embedkit.losses.objective). A method whose loss
    # is a ComposedLoss sets ``composable``; the others refuse training.mini_batch_size, matryoshka_dims and
    # objective terms at validation.
    composable: ClassVar[bool] = False
    matryoshka: ClassVar[bool] = True  # the main loss is a function of embeddings that may be truncated
    # Whether the method trains on a stream of rows (data.train.streaming): it reads each row once, in order, and
    # never by index (no batch sampler, no pass over the whole set before training that a stream cannot give).
    streams: ClassVar[bool] = False
    # Whether data.train.path may name a folder, which the method's read_train_file reads (label-aware: MR/SUBJ).
    reads_folders: ClassVar[bool] = False

    @classmethod
    def bind(cls, params: Any) -> type[Method]:
        """The class that trains with these (validated) parameters: ``cls`` itself, or for a method whose columns
        depend on its parameters (``st-loss``: the loss's inputs) a subclass with :attr:`column_roles` etc. set.
        Called on every path that reads the columns (validation, training setup, multi-task sources)."""
        return cls

    @classmethod
    def model_refs(cls, params: Any) -> list[tuple[tuple, str]]:
        """(recipe key path, model reference) of each model besides ``model.name`` the method loads (st-loss's guide
        or teacher, DebCSE's reference encoder); validation checks each as it checks ``model.name``. Default: none."""
        return []

    @classmethod
    def has_positives(cls, params: Any) -> bool:
        """Whether each row gives an (anchor, positive) pair of views (what alignment and CWCL need)."""
        return True

    @classmethod
    def refusals(cls, recipe: Recipe, params: Any) -> list[tuple[tuple, str]]:
        """(recipe key path, reason) for each cross-cutting option the recipe sets that this method cannot
        honour; :func:`embedkit.recipe.load_recipe` turns them into ``file:line: key: reason`` errors."""

        t, out = recipe.training, cls.stream_refusals(recipe, params)
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
    def stream_refusals(cls, recipe: Recipe, params: Any) -> list[tuple[tuple, str]]:
        """With ``data.train.streaming``: (key path, reason) for the method, if it needs random access to its rows,
        and for each option that needs random access or the set's length. A method adds its own options."""
        src, t = recipe.data.train, recipe.training
        if isinstance(src, list) or not src.streaming:
            return []
        if not cls.streams:
            able = ", ".join(sorted(name for name, m in _REGISTRY.items() if m.streams))
            return [(("data", "train", "streaming"), f"method {cls.name!r} reads its rows by index (a batch sampler, "
                     f"a pass over every row before training, or rows it builds in memory); a stream serves the "
                     f"methods that need no random access: {able}")]
        out = []
        if t.max_steps <= 0:
            out.append((("training", "max_steps"), "a stream has no length, so training.epochs cannot be counted: "
                        "set training.max_steps (> 0)"))
        if t.group_by_length:
            out.append((("training", "group_by_length"), "grouping by length samples batches by index; a stream is "
                        "read in order: remove the key"))
        if t.dataloader_workers:
            out.append((("training", "dataloader_workers"), "a stream is read by one process (rank 0 hands each "
                        "process its slice of the global batch), in order, so that --resume continues at the exact "
                        "row: set 0"))
        if src.mine is not None:
            out.append((("data", "train", "mine"), "mining ranks every row against the whole set; a stream is "
                        "read once, in order: mine first (embedkit data mine) or train without streaming"))
        return out

    @classmethod
    def data_refusals(cls, recipe: Recipe, columns: list[str]) -> list[tuple[tuple, str]]:
        """(recipe key path, reason) for each method option that the training data leaves without effect, e.g. a
        hard-negative weight on rows without a negative. ``columns``: the data's columns as read, in order (with
        ``data.train.mine``: the anchor, positive and mined negative columns). Default: none."""
        return []

    @classmethod
    def prompt_problems(cls, recipe: Recipe) -> list[tuple[tuple, str]]:
        """(key path, reason) for each ``model.prompt_columns`` entry that names a column the method does not
        have or a prompt ``model.prompts`` does not hold, and for prompts that training would not apply."""
        cfg, out = recipe.model, []
        prompts, mapping = cfg.prompts or {}, cfg.prompt_columns
        if mapping is None:
            if prompts and not cls.prompt_columns(recipe):
                hint = (f" (its default, {cls.default_prompt_columns}, needs prompts named "
                        f"{', '.join(sorted(set(cls.default_prompt_columns.values())))})"
                        if cls.default_prompt_columns else "")
                out.append((("model", "prompts"),
                            f"method {cls.name!r} has no default mapping of its columns to these prompts{hint}: set "
                            f"model.prompt_columns (column → prompt name; columns: {', '.join(cls.prompt_roles())}), "
                            "or model.prompt_columns: {} to save the prompts with the model without training on them"))
            return out
        for role, name in mapping.items():
            if role not in cls.prompt_roles():
                out.append((("model", "prompt_columns", role),
                            f"method {cls.name!r} has no column {role!r}; expected one of: "
                            f"{', '.join(cls.prompt_roles())}"))
            elif name not in prompts:
                have = f"model.prompts has {', '.join(sorted(prompts))}" if prompts else "model.prompts is not set"
                out.append((("model", "prompt_columns", role), f"unknown prompt name {name!r}; {have}"))
        return out

    @classmethod
    def objective_problems(cls, recipe: Recipe) -> list[tuple[tuple, Any]]:
        """Each ``objective.terms`` entry checked against its term's schema: (key path, message) for an unknown
        term name, (entry path, ``ValidationError`` with ``title_schema`` set to the schema) for bad keys."""

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

    @classmethod
    def rows_problem(cls, data: TrainData, params: Any) -> str | None:
        """Why the training rows of a local file (columns in :meth:`roles` order, as training reads them) cannot
        train this method, or ``None``; validation refuses it, naming the file."""
        return None

    @classmethod
    def read_train_file(cls, path: str, recipe: Recipe, notes: list[str]) -> TrainData | None:
        """The training rows, in :meth:`roles` order, of a method that builds them itself from the local file
        ``data.train.path`` (``ccp``: a file of documents → sentence pairs), or ``None`` (the default): the file
        is read by ``data.train.format`` and checked against :meth:`roles`. Raises ``DataError`` naming the file
        and line; ``notes`` collects what validation says once every check passed."""
        return None

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
    """Add the dataset row ids as the label column, so the loss can key each row's augmentation (a stream: its
    position in the unshuffled rows, :func:`embedkit.data.stream.add_row_ids`)."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):  # data.train.streaming
        return stream_row_ids(dataset)
    if ROW_ID_COLUMN in dataset.column_names:
        raise ValueError(f"the training data already has a {ROW_ID_COLUMN!r} column")
    return dataset.add_column(ROW_ID_COLUMN, list(range(len(dataset))))


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to recipes under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls
