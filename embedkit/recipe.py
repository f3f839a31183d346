"""Recipes: a YAML file that is a whole experiment, validated in full before any model loads.

A recipe has five sections, ``model``, ``data``, ``method``, ``training`` and ``output``, plus ``eval``,
a one-line ``description`` and, for a paper recipe, ``target`` (the published numbers it aims at). The
schema below is the single source of truth for keys, types and defaults; :func:`load_recipe` safe-loads the
YAML, applies ``key.sub=value`` overrides, validates with pydantic (unknown keys are errors), validates the
method's own parameters, and reads the local training data so that a malformed row is reported now, not an
hour into training. Every error names the recipe file, the line and key path (or the data file and line) and
what was expected.

Nothing here imports torch: validation of a bad recipe answers in well under a second.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from embedkit.data.textio import decode_utf8
from embedkit.errors import DataError, EmbedkitError, RecipeError


def _recipes_dir() -> Path:
    """Where the shipped recipes are. An installed wheel holds them as package data, ``embedkit/recipes/*.yaml``
    (pyproject.toml maps the top-level ``recipes/`` there, so git keeps one copy); a source checkout or an
    editable install has no such folder in the package and reads the top-level ``recipes/`` next to it."""
    packaged = resources.files("embedkit") / "recipes"
    if isinstance(packaged, Path) and packaged.is_dir():  # a wheel installed on a file system (not zipped)
        return packaged
    return Path(__file__).resolve().parent.parent / "recipes"


RECIPES_DIR = _recipes_dir()


class Section(BaseModel):
    """Base for recipe sections: unknown keys are errors, values are checked on assignment, and no number is
    infinite or NaN (``.inf`` / ``.nan`` in YAML)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Seeds go to numpy's legacy generator (transformers.set_seed -> np.random.seed), which takes 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1
# A loss weight multiplies that loss's gradients. Past 1e6 the float32 gradient norm can overflow (an element of
# 2e19 squares to inf), and clipping by an infinite norm zeroes the update; weights are relative, so nothing is
# lost by scaling them all down.
MAX_WEIGHT = 1e6


def _seed(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        raise PydanticCustomError("seed_range", "expected a seed in 0 .. {high} (the range numpy's random "
                                  "generator takes)", {"high": SEED_MAX})
    return value


def _at_most_max_weight(reason: str) -> AfterValidator:
    def check(value: float) -> float:
        if value > MAX_WEIGHT:
            raise PydanticCustomError("weight_range", "expected at most 1e6: {reason}; weights are relative, so "
                                      "scale them all down", {"reason": reason})
        return value
    return AfterValidator(check)


Seed = Annotated[int, AfterValidator(_seed)]
_GRADIENTS = "a loss weight multiplies its gradients, and their float32 norm can overflow beyond that"
LossWeight = Annotated[float, Field(ge=0), _at_most_max_weight(_GRADIENTS)]
PositiveLossWeight = Annotated[float, Field(gt=0), _at_most_max_weight(_GRADIENTS)]
DevWeight = Annotated[float, Field(gt=0), _at_most_max_weight("the selection score Σ w·metric / Σ w depends "
                                                              "only on their ratios")]


class LoraSection(Section):
    """LoRA (Hu et al. 2021) through ``peft``: only low-rank updates of the named linear layers train."""

    r: int = Field(8, gt=0, description="rank of the update")
    alpha: float = Field(16.0, gt=0, description="scale: the update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] | str = Field(
        "all-linear", description="names of the linear layers to adapt (e.g. [query, value]), or all-linear"
    )
    merge: bool = Field(False, description="write merged full weights (loads without peft) instead of an adapter")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        names = isinstance(value, list) and value and all(isinstance(n, str) and n.strip() for n in value)
        if not (names or value == "all-linear"):
            raise ValueError("expected a non-empty list of module names (e.g. [query, value]), or 'all-linear'")
        return value


EXPERT_EVAL_KINDS = ("sts", "rerank", "retrieval")  # model.experts.eval_routes keys: evaluations by kind


class ExpertsSection(Section):
    """Domain experts with enforced routing (Hallee et al. 2024; docs/experts.md): the feed-forward blocks of the
    chosen encoder layers become one copy per domain (initialised from the pretrained block), everything else is
    shared; a multi-task run trains each source's batches through the expert of the same name."""

    domains: list[str] = Field(min_length=2, description="one expert per domain: the names of the multi-task "
                               "sources (data.train[*].name), each listed once")
    layers: list[int] | Literal["all"] = Field("all", description="encoder layers (0-based) whose feed-forward "
                                               "block becomes experts, or all")
    kind: Literal["ffn"] = Field("ffn", description="ffn: copies of the layer's feed-forward block (its two "
                                 "linear layers: intermediate and output dense; the LayerNorm stays shared)")
    default: str | None = Field(None, description="the saved model's route when encode gets no task (null: "
                                "encode must name one, e.g. encode(texts, task='sts'))")
    eval_routes: dict[Literal["sts", "rerank", "retrieval"], str] = Field(
        default_factory=dict, description="the expert each evaluation kind encodes through: sts (STS-B dev and "
        "the STS suite), rerank (reranking dev and eval.rerank sets), retrieval")

    @field_validator("domains")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(TASK_NAME, name):
                raise ValueError(f"domain {name!r}: expected letters, digits, _ and - (a source's name)")
        if len(set(value)) != len(value):
            raise ValueError("each domain once")
        return value

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or len(set(value)) != len(value) or min(value) < 0):
            raise ValueError("expected a non-empty list of distinct layer indices (0-based), or 'all'")
        return value


class ModelSection(Section):
    name: str = Field(description="HF model id or local path (a sentence-transformers or plain HF folder)")
    revision: str | None = None
    pooling: Literal["cls", "cls_before_pooler", "mean", "first_last_avg"] | None = Field(
        None, description="None keeps a sentence-transformers model's own pooling (plain HF models: cls)"
    )
    mlp_only_train: bool = Field(False, description="with pooling=cls: the MLP head exists at training time only")
    max_seq_length: int = Field(32, gt=0)
    dropout: float | None = Field(0.1, ge=0.0, lt=1.0, description="None keeps the model's own dropout")
    trust_remote_code: bool = False
    prompts: dict[str, str] | None = Field(
        None, description="prompt name → text prepended to the input, e.g. {query: 'query: ', document: 'passage: '}; "
        "saved with the model (SentenceTransformer(path).encode(texts, prompt_name='query') applies it)",
    )
    prompt_columns: dict[str, str] | None = Field(
        None, description="training column → prompt name (e.g. {anchor: query, positive: document, negative: "
        "document}); null: the method's default when model.prompts has its names; {}: no prompt in training",
    )
    lora: LoraSection | None = Field(None, description="train LoRA adapters instead of every weight (needs peft)")
    experts: ExpertsSection | None = Field(None, description="domain experts with enforced routing (multi-task "
                                           "recipes; docs/experts.md)")

    @field_validator("prompts")
    @classmethod
    def _prompt_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and any(not name.strip() for name in value):
            raise ValueError("a prompt name must be a non-empty string")
        return value


# The defaults of pair mining (`embedkit data mine-pairs`, method self-pairs): here, torch-free, for the
# command line and the method schema; embedkit.mining re-exports them.
PAIR_MINING_DEFAULTS: dict[str, Any] = {"k": 4, "threshold": 1.2, "max_surface_similarity": 0.9, "batch_size": 128}


def mine_window(settings: Any) -> tuple[int, int]:
    """The rank window ``[range_min, range_max)`` of mining settings (a :class:`MineSection` or the CLI's
    namespace); ``range_max`` defaults to ``range_min + 10·num_negatives`` (room for the filter to drop
    candidates, as sentence-transformers derives it when a margin is set)."""
    low = settings.range_min
    return low, settings.range_max if settings.range_max is not None else low + 10 * settings.num_negatives


class MineSection(Section):
    """Hard negatives mined with the starting model before training (:func:`embedkit.mining.mine_negatives`;
    ``embedkit data mine`` takes the same keys). The data gives (anchor, positive) rows; the method receives
    ``anchor, positive, negative_1 … negative_k``."""

    num_negatives: int = Field(3, ge=1, description="negatives per row (k)")
    range_min: int = Field(0, ge=0, description="skip the range_min most similar candidates (labelled positives "
                           "of the anchor are removed before ranks are counted)")
    range_max: int | None = Field(None, gt=0, description="candidates ranked below this are never taken "
                                  "(default range_min + 10 * num_negatives)")
    max_score_ratio: float | None = Field(
        0.95, gt=0, le=1, description="drop a candidate scoring above this fraction of the row's positive score "
        "(NV-Retriever TopK-PercPos; null: off)")
    margin: float | None = Field(None, description="also drop a candidate scoring above positive - margin (null: off)")
    sampling_strategy: Literal["top", "random"] = Field("top", description="the k best kept candidates, or k drawn "
                                                        "at random among them (seeded)")
    corpus: str | None = Field(None, description="file of candidate texts (text: one a line; csv/tsv/jsonl: a 'text' "
                               "column; a reranking CSV: its answers); default: the pool of positives")
    candidates: bool | None = Field(None, description="format rerank: add every candidate answer of the file "
                                    "(label 0 too) to the corpus; default true for rerank data")
    seed: Seed | None = Field(None, description="random sampling seed (default: training.seed)")
    batch_size: int = Field(128, gt=0, description="encoding batch size")
    min_rows_kept: float = Field(0.5, ge=0, le=1, description="the share of rows that must keep num_negatives "
                                 "negatives, else mining fails naming why (0: accept any share; no row is always "
                                 "an error)")

    @model_validator(mode="after")
    def _window(self) -> MineSection:
        high = mine_window(self)[1]
        if high <= self.range_min:
            raise ValueError(f"range_max ({high}) must be greater than range_min ({self.range_min})")
        if self.num_negatives > high - self.range_min:
            raise ValueError(f"num_negatives {self.num_negatives} does not fit the rank window [{self.range_min}, "
                             f"{high}) of {high - self.range_min} candidates")
        return self


class MethodSection(BaseModel):
    """``name`` plus the method's own parameters, validated by the method's schema.

    :meth:`validated` builds it from the method's parameters object and keeps that object, so the training
    steps use the one validation made (:func:`embedkit.methods.bound_method`) instead of validating again."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    _params: Any = PrivateAttr(default=None)  # (the fields it was built from, the parameters object)

    @classmethod
    def validated(cls, name: str, params: BaseModel) -> MethodSection:
        section = cls(name=name, **params.model_dump())
        section._params = (section.model_dump(), params)
        return section

    def params(self) -> Any:
        """The parameters object validation made, or ``None`` (built otherwise, or a field changed since)."""
        if self._params is not None and self._params[0] == self.model_dump():
            return self._params[1]
        return None


class TrainSource(Section):
    path: str | None = Field(None, description="local file; may start with {data_dir}")
    format: Literal["auto", "text", "csv", "tsv", "jsonl", "sick", "stsb", "rerank", "hub"] = Field(
        "auto", description="rerank: a reranking CSV (qtext,label,atext) read as (anchor, positive) rows of label 1")
    hub: str | None = Field(None, description="Hub dataset name, used when path is not set")
    config: str | None = None
    data_files: str | None = Field(None, description="file inside the Hub dataset repo to load")
    split: str = "train"
    columns: list[str] | None = Field(None, description="columns to use, in the order the method expects")
    max_samples: int | None = Field(None, gt=0)
    mine: MineSection | None = Field(None, description="mine hard negatives with the starting model (null: off)")
    streaming: bool = Field(False, description="read the rows as a stream (a corpus larger than memory): methods "
                            "that need no random access, with training.max_steps (README: Training on a corpus "
                            "larger than memory)")
    shuffle_buffer: int | None = Field(None, gt=0, description="streaming: rows in the seeded shuffle buffer "
                                       "(default 10000)")

    @model_validator(mode="after")
    def _a_source(self) -> TrainSource:
        if self.path is None and self.hub is None:
            raise ValueError("set 'path' (a local file), 'hub' (a Hub dataset name), or both (path first)")
        if self.shuffle_buffer is not None and not self.streaming:
            raise ValueError("shuffle_buffer is read only with streaming: true (a map-style run shuffles every "
                             "row): remove the key or set streaming: true")
        if self.mine is not None and self.mine.candidates and self.format != "rerank":
            raise ValueError("mine.candidates needs format: rerank (the candidates of a reranking CSV)")
        return self


# The dev metrics each kind of dev set can select checkpoints on; the first is the default.
DEV_METRICS = {"stsb": ("spearman", "pearson"), "rerank": ("map", "mrr@10"),
               "retrieval": ("ndcg@10", "recall@100", "mrr@10")}
# How the logs, reports and model cards name each metric.
METRIC_LABELS = {"spearman": "Spearman", "pearson": "Pearson", "map": "MAP", "mrr@10": "MRR@10",
                 "ndcg@10": "nDCG@10", "recall@100": "Recall@100", "weighted": "weighted score"}
_STSB_DEV = {"path": "{data_dir}/sts/stsbenchmark/sts-dev.csv", "hub": "sentence-transformers/stsb",
             "split": "validation"}


class DevSection(Section):
    """The dev set that selects the checkpoint: STS-B (``kind: stsb``, the default: a local file/folder, else the
    Hub), a reranking file (``rerank``: ``qtext,label,atext``) or a BEIR retrieval folder (``retrieval``)."""

    kind: Literal["stsb", "rerank", "retrieval"] = "stsb"
    path: str | None = Field(None, description="stsb: sts-dev.csv or its folder (default: the data folder's); "
                                               "rerank: the CSV file; retrieval: the BEIR folder")
    hub: str | None = Field(None, description="stsb only: the Hub copy used when a {data_dir} path is absent")
    split: str = Field("validation", description="stsb: the Hub split; retrieval: the qrels split (default dev)")
    metric: str = Field("spearman", description="the metric that selects the checkpoint; stsb: spearman | pearson, "
                                                "rerank: map | mrr@10, retrieval: ndcg@10 | recall@100 | mrr@10")
    split_from_train: float | None = Field(
        None, gt=0, lt=1, description="select on this share of the file at path (a training file: rerank, of its "
                                      "questions; stsb, of its scored pairs), held out of every training source that "
                                      "reads that file")
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the held-out slice (the same for every "
                                                                 "training.seed, so seeds differ only in training)")

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        """Defaults that depend on ``kind``: STS-B's file and Hub copy, the dev split, the first metric."""
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "stsb")
        if kind not in DEV_METRICS:
            return data  # the Literal reports it
        defaults: dict[str, Any] = dict(_STSB_DEV) if kind == "stsb" else {"split": "dev"}
        if data.get("split_from_train") is not None:  # the slice replaces the dev file
            defaults = {k: v for k, v in defaults.items() if k not in ("path", "hub")}
        defaults["metric"] = DEV_METRICS[kind][0]
        return {**defaults, **data}

    @field_validator("metric")
    @classmethod
    def _metric_of_kind(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind in DEV_METRICS and value not in DEV_METRICS[kind]:
            raise ValueError(f"for kind {kind!r} expected one of {', '.join(DEV_METRICS[kind])}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _source(self) -> DevSection:
        if self.split_from_train is not None:
            if self.kind == "retrieval":
                raise ValueError("split_from_train: a held-out slice serves kind rerank or stsb, not retrieval")
            if not self.path or self.hub:
                raise ValueError("split_from_train: path names the local training file to hold the slice out of "
                                 "(and no hub)")
            return self
        if self.kind != "stsb" and self.hub:
            raise ValueError(f"hub: a {self.kind} dev set is read from a local path (hub is for kind stsb)")
        if self.kind != "stsb" and not self.path:
            raise ValueError(f"path: a {self.kind} dev set needs a local path")
        return self


TASK_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,39}$"  # logged as loss_<name>: a short identifier


class TaskSource(TrainSource):
    """One source of a multi-task recipe (``data.train`` a list, docs/multitask.md): the source keys of
    :class:`TrainSource`, its ``name`` (logs: ``loss_<name>``), its own ``method`` block (validated by that
    method's schema) and the ``weight`` of its loss."""

    name: str = Field(pattern=TASK_NAME, description="short identifier of the source (letters, digits, _ and -)")
    method: MethodSection = Field(description="this source's method: name and that method's own parameters")
    weight: PositiveLossWeight = Field(1.0, description="sampler balanced: this source's share of the steps "
                                                 "(w / Σ w); the other samplers: its loss is multiplied by it")


class WeightedDev(DevSection):
    """One dev set of a list ``data.dev``: checkpoints are selected on Σ weight·metric / Σ weight."""

    weight: DevWeight = Field(1.0, description="this dev metric's weight in the selection score")


def _source_kind(value: Any) -> str:
    return "many" if isinstance(value, list) else "one"


TrainSources = Annotated[
    Annotated[TrainSource, Tag("one")] | Annotated[list[TaskSource], Field(min_length=2), Tag("many")],
    Discriminator(_source_kind),
]
DevSets = Annotated[
    Annotated[DevSection, Tag("one")] | Annotated[list[WeightedDev], Field(min_length=1), Tag("many")],
    Discriminator(_source_kind),
]
_UNION_TAGS = ("one", "many")  # the discriminator's tags: not keys of the recipe (error locations drop them)


class ReplaySection(Section):
    """Rows of an earlier data set drawn into every training step at a set share (experience replay,
    docs/continual.md): their texts are embedded with the step's batch and held to a frozen teacher by the
    ``distill`` objective term."""

    path: str | None = Field(None, description="local file of the earlier task's rows; may start with {data_dir}")
    format: Literal["auto", "text", "csv", "tsv", "jsonl", "sick", "stsb"] = "auto"
    hub: str | None = Field(None, description="Hub dataset of the earlier task's rows, read when path is not set "
                            "(or is a {data_dir} path whose file is absent), as data.train.hub")
    config: str | None = None
    data_files: str | None = Field(None, description="file inside the Hub dataset repo to load")
    split: str = "train"
    columns: list[str] | None = Field(None, min_length=1, description="the text columns to replay (default: every "
                                      "column; stsb: sentence1, sentence2; sick: anchor, positive, negative)")
    share: float = Field(gt=0, lt=1, description="replayed rows / all rows of a step; the step keeps its "
                         "training.batch_size new rows and adds round(batch_size · share / (1 − share)) replayed ones")
    max_samples: int | None = Field(None, gt=0, description="replay only the first N rows of the file")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="seed of the replay order (default: "
                                                                   "training.seed)")

    @model_validator(mode="after")
    def _a_source(self) -> ReplaySection:
        if self.path is None and self.hub is None:
            raise ValueError("set 'path' (a local file), 'hub' (a Hub dataset name), or both (path first)")
        return self


def replay_rows_per_step(batch_size: int, share: float) -> int:
    """Replayed rows in a step of ``batch_size`` new rows, so that they are ``share`` of its rows:
    round(batch_size · share / (1 − share))."""
    return round(batch_size * share / (1 - share))


class DataSection(Section):
    train: TrainSources = Field(description="one source, or a list of named sources each with its own method "
                                            "(a multi-task recipe, docs/multitask.md)")
    dev: DevSets | None = Field(default_factory=DevSection, description="one dev set, or a list of weighted ones")
    replay: ReplaySection | None = Field(None, description="rows of an earlier task replayed in every step, held to "
                                         "a frozen teacher by objective term distill (docs/continual.md)")

    @field_validator("train")
    @classmethod
    def _distinct_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            names = [s.name for s in value]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"source names must be distinct; {', '.join(twice)} is given twice")
        return value


def is_multitask(recipe: Recipe) -> bool:
    """Whether ``data.train`` lists several sources (a multi-task recipe)."""
    return isinstance(recipe.data.train, list)


def task_recipes(recipe: Recipe) -> list[tuple[TaskSource, Recipe]]:
    """Each source of a multi-task recipe with the single-source recipe it stands for: the same model, training
    and objective, ``data.train`` = that source, ``method`` = its method, no dev set. Each source's method is
    checked, and builds its loss, against its own view."""
    assert isinstance(recipe.data.train, list)
    out = []
    for src in recipe.data.train:
        single = TrainSource.model_validate(src.model_dump(exclude={"name", "method", "weight"}))
        data = DataSection.model_construct(train=single, dev=None)
        out.append((src, recipe.model_copy(update={"data": data, "method": src.method})))
    return out


# The experiment trackers training.report_to may name: transformers' own integrations (its
# INTEGRATION_TO_CALLBACK; a test checks each is there), with the module each needs (None: not checked here).
TRACKERS: dict[str, str | None] = {
    "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
    "neptune": "neptune", "clearml": "clearml", "dvclive": "dvclive", "trackio": "trackio", "swanlab": "swanlab",
    "azure_ml": "azureml", "codecarbon": "codecarbon", "dagshub": "dagshub", "flyte": "flytekit",
}
_TRACKER_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "tensorboard": "tensorboard"}


def tracker_installed(name: str) -> bool:
    """Whether the module a tracker needs is importable (found, not imported: validation stays torch-free)."""
    module = TRACKERS.get(name)
    return module is None or importlib.util.find_spec(module) is not None or (
        name == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None)


def _trackers(value: Any) -> Any:
    """``auto``, one name or a list of names; every name a transformers integration that is installed."""
    if value == "auto":
        return value
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PydanticCustomError("trackers", "expected 'auto', a tracker name or a list of them (e.g. [tensorboard,"
                                  " mlflow]); [] for none")
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, list(TRACKERS), n=1)
            raise PydanticCustomError("tracker_name", "unknown tracker {name}{hint}; expected one of: {known}",
                                      {"name": repr(name), "known": ", ".join(TRACKERS),
                                       "hint": f" (did you mean {close[0]}?)" if close else ""})
        if not tracker_installed(name):
            raise PydanticCustomError("tracker_missing", "{name} is not installed: pip install {package} (or leave "
                                      "it out of training.report_to)",
                                      {"name": name, "package": _TRACKER_PACKAGES.get(name, name.replace("_", "-"))})
    return list(dict.fromkeys(names))


class TrainingSection(Section):
    batch_size: int = Field(
        64, gt=0, description="the GLOBAL batch: every process takes batch_size / world size rows per step (it must "
        "divide); what the paper's batch size means"
    )
    learning_rate: float = Field(3e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW β1")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW β2 (Contriever: 0.98)")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW eps (Contriever: 1e-6)")
    lr_scheduler: Literal["linear", "constant", "cosine", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    seed: Seed = 42
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="auto: bf16 where the hardware has fast bf16, else fp32"
    )
    eval_steps: int = Field(125, gt=0)
    save_steps: int | None = Field(None, gt=0, description="default: eval_steps")
    save_total_limit: int | None = Field(2, gt=0)
    logging_steps: int = Field(10, gt=0)
    gather_across_devices: bool = Field(True, description="in-batch negatives from every process")
    mini_batch_size: int | None = Field(
        None, gt=0, description="GradCache: each process encodes its share of the batch in mini-batches of this "
        "size (same loss, less memory)"
    )
    matryoshka_dims: list[int] | None = Field(
        None, min_length=1, description="Matryoshka: the main loss also on these truncated, re-normalised prefixes "
        "of the embedding (e.g. [384, 256, 128, 64]); the model's full width is added first (weight 1) when the "
        "list lacks it, and the resolved recipe records it; null: off",
    )
    matryoshka_weights: list[LossWeight] | None = Field(
        None, description="one weight per matryoshka_dims entry (default 1 each; the weighted losses are summed)"
    )
    group_by_length: bool = Field(
        False, description="batches of similar length (less padding); order stays random across batches"
    )
    dataloader_workers: int = Field(0, ge=0)
    drop_last: bool = False
    report_to: Annotated[Any, AfterValidator(_trackers)] = Field(
        "auto", description="experiment trackers (transformers' integrations): a list such as [tensorboard, wandb, "
        "mlflow]; [] for none; auto: tensorboard when installed. TensorBoard writes <output>/logs, MLflow "
        "<output>/mlruns unless MLFLOW_TRACKING_URI is set, wandb <output>/wandb (WANDB_MODE=offline: no network)",
    )

    @field_validator("matryoshka_dims")
    @classmethod
    def _dims(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (any(d <= 0 for d in value) or len(set(value)) != len(value)):
            raise ValueError(f"expected distinct positive dimensions, got {value}")
        return value

    @model_validator(mode="after")
    def _weights(self) -> TrainingSection:
        w = self.matryoshka_weights
        if w is not None and (self.matryoshka_dims is None or len(w) != len(self.matryoshka_dims)):
            raise ValueError("training.matryoshka_weights needs one weight per training.matryoshka_dims entry")
        return self


class TermEntry(BaseModel):
    """One extra objective term: ``name`` (see :mod:`embedkit.losses.terms`), ``weight`` and the term's own
    keys, validated by the term's schema."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    weight: LossWeight = Field(1.0, description="multiplies the term before it is added to the loss")


class ObjectiveSection(Section):
    """Extra objective terms added to the method's loss, each with a weight, logged separately."""

    main_weight: LossWeight = Field(1.0, description="weight of the method's own loss (0: the terms alone)")
    terms: list[TermEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_loss(self) -> ObjectiveSection:
        if self.main_weight == 0 and not self.terms:
            raise ValueError("main_weight 0 with no terms leaves no loss to train")
        return self


class OutputSection(Section):
    dir: str
    push_to_hub: str | None = Field(
        None, pattern=r"^[\w.-]+/[\w.-]+$", description="Hub repo id (namespace/name) to push to after training"
    )
    private: bool = False
    license: str | None = Field(None, description="the model's license (model card, mteb ModelMeta); null: the base "
                                "model's (its card's license, e.g. apache-2.0 for all-MiniLM-L6-v2)")
    keep_checkpoints: Literal["all", "weights", "best", "none"] = Field(
        "weights", description="what the checkpoints keep once the run has finished: all (everything, optimizer "
        "state included), weights (every kept checkpoint's model, without the optimizer, scheduler, RNG and loss "
        "state that only --resume of an unfinished run reads), best (the selected checkpoint's model only), none "
        "(no checkpoints/ folder: the final model is in output.dir)")


class RetrievalEval(Section):
    """A BEIR folder to score after training (nDCG@10, Recall@100, MRR@10)."""

    path: str = Field(description="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); may start with "
                                  "{data_dir}")
    split: str = "test"


class EvalSection(Section):
    before: bool = Field(True, description="evaluate the starting model first")
    suite: Literal["stsb-dev", "sts", "none"] = Field(
        "stsb-dev", description="final evaluation: STS-B dev, the full 7-task STS suite, or none"
    )
    rerank: list[str] = Field(default_factory=list,
                              description="reranking files (qtext,label,atext) to score after training: MAP, MRR@10")
    retrieval: list[RetrievalEval] = Field(default_factory=list,
                                           description="BEIR folders to score after training")
    mteb: list[str] = Field(default_factory=list,
                            description="mteb tasks to run after training (embedkit eval --mteb names; the STS tasks "
                            "from the local data folder); results in <output.dir>/mteb, in the model card")
    max_seq_length: int | None = Field(
        None, gt=0, description="token length the final STS suite encodes at; null: the model's own maximum (e.g. "
                                "512), not model.max_seq_length, as SentEval encodes sentences whole")

    @model_validator(mode="after")
    def _length_needs_suite(self) -> EvalSection:
        if self.max_seq_length is not None and self.suite != "sts":
            raise ValueError(f"max_seq_length applies to the STS suite; eval.suite is {self.suite!r} (set suite: sts)")
        return self


# The STS suite's task names, as embedkit.evaluation reports them (tests check that the two lists agree).
TARGET_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R")
TargetTask = Literal["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R"]
Score = Annotated[float, Field(strict=True, ge=-100, le=100)]  # a YAML number (not a string, not a bool)


class RetrievalTarget(Section):
    """A published retrieval score: the average of ``metric`` over a benchmark's datasets (``benchmark``), which
    ``eval/reproduce.py --beir DIR`` compares with the average over the BEIR folders in ``DIR``."""

    benchmark: str = Field(min_length=1, description="e.g. 'BEIR'")
    metric: Literal["ndcg@10", "recall@100", "mrr@10"] = "ndcg@10"
    avg: Score


class TargetSection(Section):
    """The published numbers a paper recipe aims at: what ``eval/reproduce.py`` compares a run with.

    Scores are Spearman × 100 under the SentEval "all" setting (the suite ``eval.suite: sts`` runs), per task
    and/or their average; ``source`` names the paper table they are quoted from.
    """

    source: str = Field(min_length=1, description="where the numbers are published (paper, table)")
    protocol: str = Field(min_length=1, description="how they were measured, e.g. 'SentEval STS all, Spearman x100'")
    tasks: dict[TargetTask, Score] = Field(default_factory=dict, description="published score per STS task")
    avg: Score | None = Field(None, description="published average over the 7 STS tasks")
    retrieval: RetrievalTarget | None = Field(None, description="a published retrieval average (e.g. BEIR)")

    @field_validator("tasks", "avg", mode="after")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        values = value.values() if isinstance(value, dict) else [value]
        if any(v is not None and not math.isfinite(v) for v in values):
            raise ValueError("expected a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TargetSection:
        if not self.tasks and self.avg is None and self.retrieval is None:
            raise ValueError("give the published STS 'avg', per-task 'tasks', a 'retrieval' average, or several")
        if self.avg is not None and len(self.tasks) == len(TARGET_TASKS):
            mean = sum(self.tasks.values()) / len(self.tasks)
            if abs(mean - self.avg) > 0.006:  # published averages are rounded to 2 decimals
                raise ValueError(f"avg {self.avg} is not the mean of the 7 tasks ({mean:.3f}); check the numbers")
        return self


class Recipe(Section):
    description: str = ""
    model: ModelSection
    data: DataSection
    method: MethodSection
    training: TrainingSection = Field(default_factory=TrainingSection)
    objective: ObjectiveSection | None = Field(None, description="extra objective terms (null: the method's loss)")
    output: OutputSection
    eval: EvalSection = Field(default_factory=EvalSection)
    target: TargetSection | None = Field(None, description="published numbers of a paper recipe (eval/reproduce.py)")

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join(value.split())


def per_device_batch(batch_size: int, world_size: int) -> int:
    """Rows each process takes per step: the global ``training.batch_size`` split evenly over ``world_size``
    processes. Raises ``ValueError`` (the caller adds file and line) when it does not divide."""
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, -(-batch_size // world_size) * world_size
        options = " or ".join(str(b) for b in dict.fromkeys((lower, upper)) if b > 0)
        raise ValueError(
            f"the global batch {batch_size} does not divide over {world_size} processes; expected a multiple of "
            f"{world_size} (e.g. {options})"
        )
    return batch_size // world_size


# ----------------------------------------------------------------------------------------------------------
# Loading, overrides and error messages


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything near this size is not one
MAX_YAML_DEPTH = 32  # nesting levels; recipes use 4 or 5


def _walk_lines(root: yaml.Node | None) -> dict[tuple, int]:
    """Map each key path under a composed YAML node to its 1-based line."""
    lines: dict[tuple, int] = {}
    seen: set[int] = set()  # an aliased node is shared: walk it once, so aliases cannot multiply the work

    def walk(node: yaml.Node, prefix: tuple) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = prefix + (key.value,)
                lines[path] = key.start_mark.line + 1
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,))

    if root is not None:
        walk(root, ())
    return lines


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line, for error messages (empty if not valid YAML)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # linear: an alias is the same node, not a copy
    except (yaml.YAMLError, RecursionError):
        return {}
    return _walk_lines(root)


def _yaml_problem(err: yaml.YAMLError, source: str) -> RecipeError:
    mark = getattr(err, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    return RecipeError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})")


def _check_events(text: str, source: str) -> None:
    """Refuse anchors/aliases and deep nesting from the event stream, before any node is built.

    An alias expands to a copy of what it names, so a few hundred bytes of nested aliases ("billion laughs")
    stand for billions of values; recipes never need them, so none are allowed.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise RecipeError(
                f"{source}:{event.start_mark.line + 1}: YAML anchors and aliases ({sign}{event.anchor}) are not "
                "allowed in recipes; write the values out"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise RecipeError(
                    f"{source}:{event.start_mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_duplicates(root: yaml.Node | None, source: str) -> None:
    """Refuse a key given twice in one mapping (YAML loaders silently keep the last)."""

    def walk(node: yaml.Node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple, int] = {}
            for key, value in node.value:
                path = prefix + (key.value,)
                if isinstance(key, yaml.ScalarNode):
                    ident = (key.tag, key.value)
                    if ident in first:
                        raise RecipeError(
                            f"{source}:{key.start_mark.line + 1}: {'.'.join(map(str, path))}: duplicate key "
                            f"(first at line {first[ident]})"
                        )
                    first[ident] = key.start_mark.line + 1
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, prefix + (i,))

    if root is not None:
        walk(root, ())


def _load_strict(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """:func:`load_yaml` that lets ``yaml.YAMLError`` (text that is not YAML) through."""
    _check_events(text, source)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        _check_duplicates(root, source)
        value = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return value, _walk_lines(root)


def load_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Safe-load a YAML document with the rules recipes follow: no anchors or aliases, at most
    :data:`MAX_YAML_DEPTH` levels, no duplicate keys. Returns ``(value, key path → line)``."""
    try:
        return _load_strict(text, source)
    except yaml.YAMLError as err:
        raise _yaml_problem(err, source) from None


def read_recipe_text(file: Path) -> str:
    """The recipe file's text: at most :data:`MAX_RECIPE_BYTES`, UTF-8 (else one line naming the bad byte)."""

    size = file.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{file}: recipe file is {size:,} bytes; expected at most {MAX_RECIPE_BYTES:,} (1 MiB)")
    with open(file, "rb") as fh:
        data = fh.read(MAX_RECIPE_BYTES + 1)  # the file may have grown since stat
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{file}: recipe file is over {MAX_RECIPE_BYTES:,} bytes; expected at most 1 MiB")
    try:
        return decode_utf8(data, file)
    except DataError as err:
        raise RecipeError(str(err)) from None


def _fields_of(model: type[BaseModel], loc: tuple) -> list[str]:
    """Names of the keys allowed at ``loc`` (for 'unknown key' hints)."""
    current: Any = model
    for n, part in enumerate(loc):
        if isinstance(part, int):
            continue  # an item of a list: the list's model (picked below) stays current
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        candidates = _models_in(field.annotation)
        if not candidates:
            return []
        # A union of one section and a list of sections (data.train, data.dev): the list's when an index follows.
        current = candidates[-1] if n + 1 < len(loc) and isinstance(loc[n + 1], int) else candidates[0]
    return sorted(getattr(current, "model_fields", {}))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names, through ``Annotated``, unions and lists, in order."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    inner = getattr(annotation, "__origin__", None) if hasattr(annotation, "__metadata__") else None
    args = (inner,) if inner is not None else getattr(annotation, "__args__", ())
    return [m for arg in args for m in _models_in(arg)]


class KeyLines(dict):
    """Key path → 1-based line of the recipe file, plus the key paths that overrides set (``overridden``: path →
    where it was given, e.g. ``command line``): an error at such a key blames the override, not the file."""

    def __init__(self, lines: Mapping[tuple, int] = (), overridden: Mapping[tuple, str] | None = None) -> None:
        super().__init__(lines)
        self.overridden: dict[tuple, str] = dict(overridden or {})

    def override_source(self, loc: tuple) -> str | None:
        """Where the value at ``loc`` came from when an override set it (or set a section above it), or when the
        key is not in the file and an override set a key below it; else None."""
        for path, origin in self.overridden.items():
            if loc[: len(path)] == path or (loc not in self and path[: len(loc)] == loc and loc):
                return origin
        return None


def where_of(source: str, lines: Mapping[tuple, int], loc: tuple) -> str:
    """``file:line`` of a key path (the nearest enclosing key's line when the key is a default), or ``command
    line`` (the override's origin) when an override set it."""
    origin = lines.override_source(loc) if isinstance(lines, KeyLines) else None
    if origin is not None:
        return origin
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    return f"{source}:{line}" if line else source


def _did_you_mean(name: str, allowed: list[str], parent: tuple) -> str:
    close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
    return f" (did you mean {'.'.join(map(str, (*parent, close[0])))}?)" if close else ""


def format_validation_error(
    err: ValidationError, source: str, lines: dict[tuple, int], schema: type[BaseModel], prefix: tuple = ()
) -> str:
    """Turn a pydantic error into lines of ``file:line: key.path: what was expected`` (``command line: ...`` for
    a key an override set; an unknown key gets a "did you mean" when one allowed key is close)."""
    out = []
    for item in err.errors():
        loc = prefix + tuple(p for p in item["loc"] if not isinstance(p, str) or not (
            p.startswith("function-") or p == "[key]" or p in _UNION_TAGS))
        key = ".".join(str(p) for p in loc) or "(top level)"
        where = where_of(source, lines, loc)
        if item["type"] == "extra_forbidden":
            allowed = _fields_of(schema, tuple(loc[len(prefix) : -1]))
            guess = _did_you_mean(loc[-1], allowed, loc[:-1]) if loc else ""
            hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
            msg = f"unknown key{guess}{hint}"
        elif item["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{item['msg']} (got {item.get('input')!r})"
        out.append(f"{where}: {key}: {msg}")
    return "\n".join(out)


_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.learning_rate=1e-4`` → (["training", "learning_rate"], 1e-4), the value YAML-typed."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    if not _KEY_PATH.fullmatch(key):
        raise RecipeError(f"override {text!r}: {key!r} is not a dotted key path")
    try:  # an alias, a duplicate key or deep nesting is refused as in a file (RecipeError)
        parsed = _load_strict(value, f"override {text!r}")[0] if value != "" else None
    except yaml.YAMLError:
        parsed = value  # not YAML at all: the plain string
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: Overrides = None, fields: Mapping[str, Any] | None = None) -> dict:
    """Set each override in the raw recipe mapping (creating sections as needed): ``overrides`` first, then
    ``fields`` (see :func:`override_items`)."""
    for keys, value in override_items(overrides) + field_items(fields):
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return raw


# A recipe given to the Python API: a file path, a shipped recipe's name, a mapping of sections or a Recipe.
RecipeInput = str | os.PathLike | Mapping[str, Any] | Recipe
# Overrides: ``["training.max_steps=2"]`` (values YAML-typed, as on the command line) or ``{"training.max_steps": 2}``.
Overrides = Sequence[str] | Mapping[str, Any] | None


def override_items(overrides: Overrides) -> list[tuple[list[str], Any]]:
    """``(key path, value)`` of each override. A list holds ``key.sub=value`` strings (the command line's, values
    YAML-typed); a mapping maps dotted key paths to Python values, set as given. Either way the value replaces
    what the recipe has at that key (a mapping value replaces the whole section)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        items = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not _KEY_PATH.fullmatch(key):
                raise RecipeError(f"override {key!r}: expected a dotted key path such as 'training.max_steps'")
            items.append((key.split("."), _plain(value)))
        return items
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise RecipeError(f"overrides: expected a list of 'key.sub=value' strings or a dict {{'key.sub': value}}, "
                          f"got {type(overrides).__name__} {overrides!r}")
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise RecipeError(f"override {bad[0]!r}: expected a 'key.sub=value' string")
    return [parse_override(text) for text in overrides]


def field_items(fields: Mapping[str, Any] | None) -> list[tuple[list[str], Any]]:
    """``(key path, value)`` of keyword sections: a mapping is walked down to its leaves, so
    ``training={"max_steps": 2}`` sets ``training.max_steps`` and keeps the rest of ``training``; any other value
    (a list, a scalar, ``None``, an empty mapping) is set as given."""
    items: list[tuple[list[str], Any]] = []

    def walk(keys: list[str], value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk([*keys, k], v)
        else:
            items.append((keys, _plain(value)))

    for key, value in (fields or {}).items():
        walk([key], value)
    return items


def _plain(value: Any) -> Any:
    """A Python value as YAML would give it: paths as strings, tuples as lists, mappings as dicts (copied, so the
    caller's objects are never changed)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _numbers(obj: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``3e-5`` as a string; recipes always mean the number."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str) and _NUMBER.match(obj) and ("e" in obj or "E" in obj):
        return float(obj)
    return obj


def resolve_recipe_path(name: str | os.PathLike) -> Path:
    """A recipe file path, or the bare name of a shipped recipe (``quickstart`` → recipes/quickstart.yaml).

    Only a name without a directory part is looked up among the shipped recipes: ``some/dir/quickstart.yaml``
    that does not exist is an error, never silently the shipped quickstart.
    """
    path = Path(name)
    if path.is_file():
        return path
    text = os.fspath(name)
    if _bare(text):
        return shipped_recipe(text, "recipe file not found")
    raise RecipeError(f"{name}: recipe file not found")


def _bare(text: str) -> bool:
    """A name without a directory part (``quickstart``, ``quickstart.yaml``)."""
    return not any(sep and sep in text for sep in ("/", os.sep, os.altsep)) and text not in ("", ".", "..")


def shipped_recipe(name: str, problem: str = "not a shipped recipe") -> Path:
    """The file of the shipped recipe ``name`` (``quickstart`` or ``quickstart.yaml``); a :class:`RecipeError`
    with the closest shipped name otherwise."""
    if _bare(name):
        for cand in (RECIPES_DIR / name, RECIPES_DIR / f"{name}.yaml"):
            if cand.is_file() and cand.suffix == ".yaml":
                return cand
    names = [file.stem for file in sorted(RECIPES_DIR.glob("*.yaml"))]
    close = difflib.get_close_matches(Path(name).name.removesuffix(".yaml"), names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise RecipeError(f"{name}: {problem} ({hint}shipped recipes: `embedkit recipes`)")


def copy_recipe(name: str, dest: str | os.PathLike, overwrite: bool = False) -> Path:
    """Copy the shipped recipe ``name``, byte for byte (comments kept), to ``dest``; returns the file written.

    ``dest`` is a folder when it exists as one or ends with a separator (created if missing; the copy keeps the
    recipe's file name), else a file (``.yaml`` added when it has no suffix). An existing file is replaced
    only with ``overwrite``.
    """
    source = shipped_recipe(name)
    text = os.fspath(dest)
    target = Path(text).expanduser()
    if target.is_dir() or text.endswith(("/", os.sep)) or (os.altsep and text.endswith(os.altsep)):
        target = target / source.name
    elif not target.suffix:
        target = target.with_suffix(".yaml")
    if target.exists() and not overwrite:
        raise RecipeError(f"{target}: already exists; pass --overwrite to replace it")
    if target.is_dir():
        raise RecipeError(f"{target}: is a folder; expected a file to write the recipe to")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def recipe_mapping(recipe: RecipeInput) -> tuple[dict, str, dict[tuple, int]]:
    """The raw mapping of a recipe given as a file, a shipped name, a mapping or a :class:`Recipe`, with the
    source that error messages name (the file, ``<dict>`` or ``<Recipe>``) and each key's line (a file only)."""
    if isinstance(recipe, Recipe):
        return recipe.model_dump(mode="json"), "<Recipe>", {}
    if isinstance(recipe, Mapping):
        return _plain(recipe), "<dict>", {}
    if not isinstance(recipe, (str, os.PathLike)):
        raise RecipeError(f"recipe: expected a file path, a shipped recipe name, a dict or a Recipe, got "
                          f"{type(recipe).__name__}")
    file = resolve_recipe_path(recipe)
    source = str(file)
    raw, lines = load_yaml(read_recipe_text(file), source)
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: expected a mapping of sections (model, data, method, training, output)")
    return raw, source, lines


def parse_recipe(
    recipe: RecipeInput, overrides: Overrides = None, fields: Mapping[str, Any] | None = None,
) -> tuple[Recipe, str, dict[tuple, int]]:
    """Read, override and validate a recipe against the schema; returns ``(recipe, source, key lines)``.

    ``recipe`` is a file, a shipped recipe's name, a mapping of sections or a :class:`Recipe` (validated again,
    as a file would be); ``overrides`` and ``fields`` as in :func:`override_items` and :func:`field_items`.
    The method's own parameters, the data and the model are checked one layer up, by
    :func:`embedkit.validate.load_recipe`, which needs the method registry.
    """
    raw, source, lines = recipe_mapping(recipe)
    lines = KeyLines(lines, {**{tuple(k): _override_origin(overrides) for k, _ in override_items(overrides)},
                             **{tuple(k): "keyword argument" for k, _ in field_items(fields)}})
    raw = _numbers(apply_overrides(raw, overrides, fields))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source, lines, Recipe)) from None
    return recipe, source, lines


def _override_origin(overrides: Overrides) -> str:
    """What an error at an overridden key blames: the command line's ``key=value`` strings, or a mapping."""
    return "overrides" if isinstance(overrides, Mapping) else "command line"


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in) as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def list_recipes(folder: Path = RECIPES_DIR) -> list[tuple[str, str]]:
    """(file name, one-line description) of each shipped recipe, without validating them."""
    out = []
    for file in sorted(folder.glob("*.yaml")):
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            desc = " ".join(str(raw.get("description", "")).split())
        except (yaml.YAMLError, EmbedkitError):
            desc = "(not valid YAML)"
        out.append((file.name, desc))
    return out
