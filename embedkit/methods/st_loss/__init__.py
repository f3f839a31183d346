"""``st-loss``: any sentence-transformers loss by its class name, with its keyword arguments, through embedkit's
recipe path (validation, resume, torchrun, evaluation, overlap report, card).

Recipe::

    method:
      name: st-loss
      loss: GISTEmbedLoss          # a class of sentence_transformers.sentence_transformer.losses
      kwargs: {temperature: 0.01}  # its keyword arguments, checked against its signature before any model loads
      guide: sentence-transformers/all-MiniLM-L6-v2   # the models the loss needs (GIST: guide), checked as model.name

The columns come from the loss's documented inputs (:data:`SHAPES`). A loss whose arithmetic is a function of the
embeddings (``compute_loss_from_embeddings``) is run as a :class:`~embedkit.losses.objective.ComposedLoss`, so
GradCache, Matryoshka and objective terms compose with it; the others are run as sentence-transformers builds them
and those options are refused at validation. See docs/st-loss.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from embedkit.methods.base import Method, MethodParams, register
from embedkit.methods.st_loss.signature import SIMILARITY_FUNCTIONS, loss_names, signature


@dataclass(frozen=True)
class Shape:
    """A loss's documented inputs: the text columns (and any number of further ones), the label column."""

    roles: tuple[str, ...]
    repeat: str | None = None  # any number of further text columns {repeat}_1 ... {repeat}_k
    max_repeat: int | None = None  # the most further columns the loss reads (GIST: one negative)
    label: str | None = None  # the label column (read as a float); sentence-transformers hands it to the loss
    label_meaning: str = ""
    pairs: bool = False  # each row is an (anchor, positive) pair: pair terms (alignment, CWCL) apply
    in_batch: bool = False  # each anchor is contrasted with the rest of the batch
    composable: bool = False  # compute_loss_from_embeddings(embeddings, labels) is the whole loss
    min_repeat: int = 0  # the fewest further columns the loss reads (MarginMSE: one negative)
    # The labels a teacher model computes at setup (method.teacher): "embeddings" of the first column, or
    # "scores" of the first column with each other column (sentence-transformers expects them precomputed).
    teacher: str | None = None


IN_BATCH = Shape(("anchor", "positive"), repeat="negative", pairs=True, in_batch=True, composable=True)
SCORED = Shape(("sentence1", "sentence2"), label="score", label_meaning="a gold similarity", composable=True)
BINARY = Shape(("sentence1", "sentence2"), label="label", label_meaning="1 (similar) or 0 (dissimilar)",
               composable=True)
CLASSES = Shape(("sentence",), label="label", label_meaning="a class id (a number)", composable=True)

# Loss class → its inputs (sentence-transformers' loss overview). A loss absent from the table is refused.
SHAPES: dict[str, Shape] = {
    "MultipleNegativesRankingLoss": IN_BATCH,
    "MultipleNegativesSymmetricRankingLoss": IN_BATCH,
    "CachedMultipleNegativesRankingLoss": Shape(("anchor", "positive"), repeat="negative", pairs=True, in_batch=True),
    "CachedMultipleNegativesSymmetricRankingLoss": Shape(("anchor", "positive"), pairs=True, in_batch=True),
    "GISTEmbedLoss": Shape(("anchor", "positive"), repeat="negative", max_repeat=1, pairs=True, in_batch=True),
    "CachedGISTEmbedLoss": Shape(("anchor", "positive"), repeat="negative", max_repeat=1, pairs=True, in_batch=True),
    "MegaBatchMarginLoss": Shape(("anchor", "positive"), pairs=True, in_batch=True),
    "ContrastiveTensionLossInBatchNegatives": Shape(("anchor", "positive"), pairs=True, in_batch=True),
    "CoSENTLoss": SCORED,
    "AnglELoss": SCORED,
    "CosineSimilarityLoss": SCORED,
    "ContrastiveLoss": BINARY,
    "OnlineContrastiveLoss": BINARY,
    "TripletLoss": Shape(("anchor", "positive", "negative"), pairs=True, composable=True),
    "BatchAllTripletLoss": CLASSES,
    "BatchHardTripletLoss": CLASSES,
    "BatchHardSoftMarginTripletLoss": CLASSES,
    "BatchSemiHardTripletLoss": CLASSES,
    # Distillation: the label column is computed by method.teacher when training starts.
    "MSELoss": Shape(("sentence",), repeat="translation", teacher="embeddings"),
    "EmbedDistillLoss": Shape(("sentence",), repeat="translation", teacher="embeddings"),
    "MarginMSELoss": Shape(("query", "positive"), repeat="negative", min_repeat=1, pairs=True, composable=True,
                           teacher="scores"),
    "DistillKLDivLoss": Shape(("query", "positive"), repeat="negative", min_repeat=1, pairs=True, composable=True,
                              teacher="scores"),
}

# Losses refused by name, with the reason.
REFUSED: dict[str, str] = {
    "MatryoshkaLoss": "set training.matryoshka_dims (and matryoshka_weights) instead: embedkit applies Matryoshka "
                      "to any composable loss",
    "Matryoshka2dLoss": "set training.matryoshka_dims instead (embedkit has no layer-wise part)",
    "AdaptiveLayerLoss": "it wraps another loss object, which a recipe cannot name yet",
    "ContrastiveTensionLoss": "it needs its own data loader (ContrastiveTensionDataLoader); use "
                              "ContrastiveTensionLossInBatchNegatives on (anchor, positive) rows",
    "DenoisingAutoEncoderLoss": "it needs (noised, original) rows and a decoder model; not supported",
    "SoftmaxLoss": "it trains a classifier head on integer labels (NLI); not supported",
    "GlobalOrthogonalRegularizationLoss": "it is a regulariser added to another loss, not a loss on its own",
}

# Parameters that take a model: given as method.<name> (a model reference), not in kwargs.
MODEL_PARAMS = ("guide", "teacher")


class STLossParams(MethodParams):
    loss: str = Field(description="a loss class of sentence_transformers.sentence_transformer.losses")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="the loss's keyword arguments (its signature; model is embedkit's)")
    guide: str | None = Field(None, description="the guide model of GISTEmbedLoss / CachedGISTEmbedLoss (a model "
                              "folder, a packaged model or a Hub id)")
    teacher: str | None = Field(None, description="the teacher that computes the labels of MSELoss, "
                                "EmbedDistillLoss, MarginMSELoss, DistillKLDivLoss when training starts")

    @field_validator("loss")
    @classmethod
    def _known(cls, name: str) -> str:
        names = loss_names()
        if not names:
            raise ValueError("sentence-transformers is not installed (pip install sentence-transformers)")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown sentence-transformers loss {name!r}; {hint}expected one of: {', '.join(names)}")
        if name in REFUSED:
            raise ValueError(f"{name} is not supported by st-loss: {REFUSED[name]}")
        if name not in SHAPES:
            raise ValueError(f"{name}: its input columns are not known to embedkit; supported: "
                             f"{', '.join(sorted(SHAPES))}")
        return name


@register
class STLoss(Method):
    """A sentence-transformers loss by name; :meth:`bind` gives the subclass whose columns are that loss's."""

    name = "st-loss"
    params_cls = STLossParams
    column_roles = ("anchor", "positive")
    paper = "sentence-transformers losses (Reimers and Gurevych, EMNLP 2019, arXiv:1908.10084)"
    citation = """@inproceedings{reimers-2019-sentence-bert,
  title = {Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks},
  author = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Empirical Methods in Natural Language Processing (EMNLP)},
  year = {2019},
  url = {https://arxiv.org/abs/1908.10084}
}"""
    shape: Shape = IN_BATCH
    loss_name: str = ""

    @classmethod
    def bind(cls, params: Any) -> type[Method]:
        shape = SHAPES[params.loss]
        attrs: dict[str, Any] = {
            "shape": shape, "loss_name": params.loss, "column_roles": shape.roles, "repeat_role": shape.repeat,
            "label_role": shape.label, "in_batch_negatives": shape.in_batch, "composable": shape.composable,
        }
        if shape.teacher:  # only then: a multi-task source may not transform its rows
            attrs["prepare_dataset"] = _add_teacher_labels
        return type(f"STLoss[{params.loss}]", (cls,), attrs)

    @classmethod
    def has_positives(cls, params: Any) -> bool:
        return SHAPES[params.loss].pairs

    @classmethod
    def positives_hint(cls) -> str:
        return f" ({cls.loss_name} reads {', '.join(cls.roles())})" if cls.loss_name else ""

    @classmethod
    def column_problem(cls, columns: list[str]) -> str | None:
        problem = super().column_problem(columns)
        extra = len(columns) - len(cls.column_roles) - (1 if cls.label_role else 0)
        if problem is None and extra < cls.shape.min_repeat:
            return (f"{cls.loss_name} takes {', '.join(cls.column_roles)} and at least {cls.shape.min_repeat} "
                    f"{cls.repeat_role} column(s); the data gives {len(columns)} ({', '.join(map(str, columns))}): "
                    "select them with data.train.columns")
        if problem is None and cls.shape.max_repeat is not None:
            if extra > cls.shape.max_repeat:
                return (f"{cls.loss_name} takes {', '.join(cls.column_roles)} and at most {cls.shape.max_repeat} "
                        f"{cls.repeat_role} column(s); the data gives {len(columns)} ({', '.join(map(str, columns))}):"
                        " select them with data.train.columns")
        return problem

    @classmethod
    def model_refs(cls, params: Any) -> list[tuple[tuple, str]]:
        return [(("method", key), getattr(params, key)) for key in MODEL_PARAMS
                if getattr(params, key, None) is not None]

    @staticmethod
    def models_needed(loss: str) -> tuple[str, ...]:
        """The models a loss needs besides the one trained: its constructor's ``guide``, and a teacher where the
        labels are the teacher's (:attr:`Shape.teacher`)."""
        sig = signature(loss)
        return tuple(k for k in MODEL_PARAMS if k in sig.params or (k == "teacher" and SHAPES[loss].teacher))

    @classmethod
    def refusals(cls, recipe: Any, params: Any) -> list[tuple[tuple, str]]:
        out: list[tuple[tuple, str]] = []
        sig = signature(params.loss)
        settable = [p for p in sig.params if p != "model" and p not in MODEL_PARAMS]
        for key, value in params.kwargs.items():
            where = ("method", "kwargs", key)
            if key == "model":
                out.append((where, "embedkit passes the model being trained; remove the key"))
            elif key in MODEL_PARAMS and key in sig.params:
                out.append((where, f"a model is named in method.{key} (checked and loaded like model.name); move it "
                                   "there"))
            elif key not in sig.params:
                out.append((where, f"{params.loss} has no parameter {key!r}; expected one of: "
                                   f"{', '.join(settable) or '(none)'}"))
            elif key == "similarity_fct" and value not in SIMILARITY_FUNCTIONS:
                out.append((where, f"expected the name of a similarity function of sentence_transformers.util: "
                                   f"{', '.join(SIMILARITY_FUNCTIONS)}"))
            elif sig.params[key].enum and value not in sig.params[key].members:
                out.append((where, f"expected a member of {sig.params[key].enum}: "
                                   f"{', '.join(sig.params[key].members)}"))
            elif sig.params[key].choices and value not in sig.params[key].choices:
                out.append((where, f"expected one of: {', '.join(map(repr, sig.params[key].choices))} (got {value!r})"))
            elif key in OBJECT_PARAMS:
                out.append((where, f"{key} takes a Python object, which a recipe cannot give; leave its default"))
        models = cls.models_needed(params.loss)
        for name, param in sig.params.items():
            if name != "model" and name not in MODEL_PARAMS and param.required and name not in params.kwargs:
                out.append((("method", "kwargs"), f"{params.loss} needs the keyword argument {name!r}"))
        for key in MODEL_PARAMS:
            given = getattr(params, key, None) is not None
            if key in models and not given:
                what = " (it computes the labels when training starts)" if key == "teacher" else ""
                out.append((("method", key), f"{params.loss} needs a {key} model{what}: set method.{key} (a model "
                                             "folder, a packaged model or a Hub id)"))
            elif given and key not in models:
                out.append((("method", key), f"{params.loss} takes no {key} model; remove the key"))
        t = recipe.training
        if t.mini_batch_size and "mini_batch_size" in sig.params:
            out.append((("training", "mini_batch_size"),
                        f"{params.loss} runs its own GradCache: set method.kwargs.mini_batch_size instead"))
        if cls.shape.composable:
            return out + super().refusals(recipe, params)
        why = (f"{params.loss} is run as sentence-transformers builds it (its loss is not a function of the "
               "embeddings alone), so embedkit cannot compose onto it")
        for key, value in ((("training", "mini_batch_size"), t.mini_batch_size and "mini_batch_size" not in sig.params),
                           (("training", "matryoshka_dims"), t.matryoshka_dims), (("objective",), recipe.objective)):
            if value:
                out.append((key, f"{why}; remove the {'section' if key == ('objective',) else 'key'}"))
        return out

    def build_loss(self):
        from embedkit.methods.st_loss.loss import build_st_loss

        return build_st_loss(self)


def _add_teacher_labels(self: STLoss, dataset: Any) -> Any:
    """The label column a distillation loss reads, computed by ``method.teacher`` (see
    :func:`embedkit.methods.st_loss.loss.teacher_labels`)."""
    from embedkit.methods.st_loss.loss import teacher_labels

    return teacher_labels(self, dataset)


# Parameters whose value is a Python object (a module or a function) other than the named ones handled above.
OBJECT_PARAMS = ("loss_fct", "cos_score_transformation", "loss")
