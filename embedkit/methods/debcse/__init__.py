"""DebCSE (embedkit's reading): debiased positives and hard negatives by inverse propensity weighting,
with false-negative masking; also a masking-only add-on for plain unsupervised SimCSE."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from embedkit.distributed import broadcast_object
from embedkit.log import log
from embedkit.methods.base import Method, register, training_head
from embedkit.methods.debcse import debias
from embedkit.methods.debcse.debias import Cutoffs, DebiasParams, resolve_cutoffs
from embedkit.recipe import ModelSection

DEBCSE_CITATION = """@inproceedings{miao2023debcse,
  title = {{DebCSE}: Rethinking Unsupervised Contrastive Sentence Embedding Learning in the Debiasing Perspective},
  author = {Miao, Pu and Du, Zeyao and Zhang, Junlin},
  booktitle = {Proceedings of the 32nd ACM International Conference on Information and Knowledge Management (CIKM)},
  year = {2023}
}"""

ROW_COLUMN = "row"


class DebCSEParams(DebiasParams):
    """The debiasing knobs (:class:`~embedkit.methods.debcse.debias.DebiasParams`), loss, reference and re-mining."""

    mode: Literal["debias", "mask-only"] = Field(
        "debias", description="debias: IPW-drawn (anchor, positive, hard negative) rows; mask-only: plain "
        "dropout positives (unsupervised SimCSE) with false-negative masking only",
    )
    temperature: float = Field(0.05, gt=0)
    hard_negative_weight: float = Field(0.0, description="log α added to each anchor's own hard negative")
    false_negative_margin: float = Field(
        0.0, ge=0, description="mask in-batch candidates whose reference cosine exceeds the positive's by this "
        "(cutoffs relative: in units of 1 − the median neighbour cosine)"
    )
    false_negative_threshold: float | None = Field(
        0.95, gt=0, le=1, description="also mask candidates at or above this reference cosine; null: off"
    )
    reference: str = Field(
        "initial", description="initial: the starting model, frozen; current: the model being trained (at each "
        "re-mining); anything else: a model name or local path",
    )
    remine_every: str | int = Field(
        "epoch", description="re-draw rows each epoch, never, or every N optimizer steps (an int > 0)"
    )
    mining_batch_size: int = Field(128, gt=0)
    mining_chunk_size: int = Field(4096, gt=0, description="queries per matrix product in top-K mining")
    mining_backend: Literal["auto", "torch", "faiss"] = "auto"
    mining_device: str = Field("auto", description="auto: this process's GPU when there is one, else the CPU")

    @field_validator("remine_every")
    @classmethod
    def _schedule(cls, value: str | int) -> str | int:
        return check_schedule(value)


def check_schedule(value: str | int) -> str | int:
    """A re-mining schedule: ``epoch``, ``never`` or a positive number of optimizer steps (``remine_every``)."""
    if value in ("epoch", "never") or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"expected 'epoch', 'never' or a positive number of steps, got {value!r}")


class RowsHolder:
    """The current round's rows; the dataset transform reads them, re-mining replaces them."""

    def __init__(self, dropout_positive: bool = False) -> None:
        self.rows: Any = None
        self.dropout_positive = dropout_positive

    def transform(self, batch: dict[str, list]) -> dict[str, list]:
        rows = self.rows
        idx = [int(i) for i in batch[ROW_COLUMN]]
        out: dict[str, list] = {"anchor": [rows.anchor[i] for i in idx]}
        if not self.dropout_positive:
            out["positive"] = [rows.positive[i] for i in idx]
        if rows.negative is not None:
            out["negative"] = [rows.negative[i] for i in idx]
        out["label"] = [[int(x) for x in rows.ids[i]] + [int(rows.round)] for i in idx]
        return out


@register
class DebCSE(Method):
    """DebCSE-style debiasing: positives close in meaning but different in surface and length, hard negatives
    close in surface but different in meaning, drawn by inverse propensity weighting; in-batch candidates
    the frozen reference deems too similar are masked as likely false negatives."""

    name = "debcse"
    params_cls = DebCSEParams
    column_roles = ("text",)
    paper = "Miao, Du and Zhang, DebCSE (CIKM 2023), arXiv:2309.07396 — embedkit's reading, no official code"
    citation = DEBCSE_CITATION
    composable = True

    @classmethod
    def refusals(cls, recipe: Any, params: Any) -> list[tuple[tuple, str]]:
        out = super().refusals(recipe, params)
        if isinstance(params.remine_every, int) and recipe.training.dataloader_workers > 0:
            out.append((("method", "remine_every"), "re-mining every N steps needs training.dataloader_workers: 0 "
                        "(worker processes hold a copy of the rows); use 'epoch' or set dataloader_workers to 0"))
        if params.hard_negative_weight and (params.mode == "mask-only" or not params.hard_negatives):
            why = "mode: mask-only" if params.mode == "mask-only" else "hard_negatives: false"
            out.append((("method", "hard_negative_weight"),
                        f"{params.hard_negative_weight} weighs each anchor's own hard negative, and with {why} the "
                        "rows have none: draw hard negatives (mode: debias, hard_negatives: true) or remove the key"))
        return out

    @classmethod
    def rows_problem(cls, data: Any, params: Any) -> str | None:
        distinct = len(set(next(iter(data.columns.values()))))
        if distinct < 2:
            return (f"DebCSE mines each sentence's neighbours among the distinct sentences; the training set has "
                    f"{distinct}, it needs at least 2")
        return None

    @classmethod
    def model_refs(cls, params: Any) -> list[tuple[tuple, str]]:
        return [] if params.reference in ("initial", "current") else [(("method", "reference"), params.reference)]

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.holder = RowsHolder(dropout_positive=self.params.mode == "mask-only")
        self.round = -1
        self.loss = None
        self._texts: list[str] = []
        self._cache: Any = None
        self._reference_model: Any = None

    # ---- mining ------------------------------------------------------------------------------------

    def reference_model(self) -> Any:
        """The encoder used for mining: the (current) training model, or a separately loaded one."""
        ref = self.params.reference
        if ref in ("initial", "current"):
            return self.ctx.model
        if self._reference_model is None:
            self._reference_model = build_reference(ref, self.ctx.recipe.model.max_seq_length)
        return self._reference_model

    def mine_round(self, round_: int) -> Any:
        """Build the rows of mining round ``round_`` (deterministic given the seed and the reference)."""

        p = self.params
        seed = self.ctx.recipe.training.seed
        kwargs = dict(batch_size=p.mining_batch_size, chunk_size=p.mining_chunk_size, backend=p.mining_backend,
                      device=p.mining_device)
        if p.mode == "mask-only":
            if self._cache is None or p.reference == "current":
                from embedkit.mining import unit_vectors

                texts, _ = debias.unique_texts(self._texts)
                self._cache = (texts, unit_vectors(self.reference_model(), texts, p.mining_batch_size, p.mining_device))
            texts, emb = self._cache
            rows = debias.identity_rows(self._texts, emb, texts)
            rows.round = round_
            rows.stats["cutoffs"] = mask_only_cutoffs(p, emb).as_dict()
            return rows
        previous = None if p.reference == "current" else self._cache
        if previous is None:
            n = len(set(self._texts))
            log(f"debcse mining round {round_}: encoding {n} sentences and {n * len(p.views)} views with the "
                f"reference ({p.reference}), top-{p.k} neighbours")
        started = time.time()
        rows, self._cache = debias.debias(self.reference_model(), self._texts, p, seed, round_, previous=previous,
                                          **kwargs)
        rows.stats["seconds"] = round(time.time() - started, 1)
        return rows

    def remine(self, round_: int) -> None:
        """Mine round ``round_`` and install its rows in the dataset and its reference table in the loss.

        Under multi-process training with ``torch.distributed`` up, rank 0's rows are broadcast so every
        process trains on the same ones; before that (at dataset preparation) every process mines the same
        rows from the same seed and reference.
        """
        rows = self.mine_round(round_)
        rows = broadcast_object(rows)
        self.holder.rows = rows
        self.round = round_
        if self.loss is not None:
            self.loss.set_reference(rows.table, round_)
            self.loss.threshold = false_negative_threshold(rows, self.params)
            self.loss.margin = false_negative_margin(rows, self.params)
        s = rows.stats
        cut = s.get("cutoffs")
        if cut:
            log(f"debcse round {round_}: cut-offs ({cut['mode']}) positive ≥ {cut['positive_min']:.3f}, hard "
                f"negative ≤ {cut['negative_max']:.3f}, mask ≥ {_fmt_cut(cut['false_negative'])}"
                + (f" (reference top-{self.params.k} neighbour cosines: median {spread['p50']:.3f})"
                   if (spread := cut.get("neighbour_percentiles")) else ""))
        if self.params.mode == "debias":
            log(f"debcse round {round_}: {s['rows']} rows, {s['unique_sentences']} distinct sentences; positives "
                f"{s['positive_kinds']}, hard negatives {s.get('negative_kinds', {})}; {s.get('seconds', 0)} s; "
                f"digest {rows.digest()[:12]}")

    # ---- Method hooks ------------------------------------------------------------------------------

    def prepare_dataset(self, dataset: Any) -> Any:
        import datasets

        self._texts = [str(t) for t in dataset["text"]]
        self.remine(0)
        rows = datasets.Dataset.from_dict({ROW_COLUMN: list(range(len(self._texts)))})
        rows.set_transform(self.holder.transform)
        return rows

    def build_loss(self):
        from embedkit.methods.debcse.loss import DebCSELoss

        p = self.params
        self.loss = DebCSELoss(
            self.ctx.model, p.temperature, p.hard_negative_weight, head=training_head(self),
            margin=false_negative_margin(self.holder.rows, p), threshold=false_negative_threshold(self.holder.rows, p),
            dropout_positive=p.mode == "mask-only",
        )
        if self.holder.rows is not None:
            self.loss.set_reference(self.holder.rows.table, self.holder.rows.round)
        return self.loss

    def callbacks(self, loss) -> list:
        if self.params.remine_every == "never":
            return []
        return [remine_callback(self.params.remine_every, lambda: self.round, self.remine)]


def false_negative_threshold(rows: Any, params: DebCSEParams) -> float | None:
    """The masking threshold in force: the mining round's resolved cut-off (relative cut-offs move with the
    reference space), else the recipe's absolute ``false_negative_threshold``."""
    cut = getattr(rows, "stats", {}).get("cutoffs") if rows is not None else None
    if cut is not None:
        return cut["false_negative"]
    if params.cutoffs == "relative":
        return None  # resolved at the first mining, before any batch reaches the loss
    return params.false_negative_threshold


def false_negative_margin(rows: Any, params: DebCSEParams) -> float:
    """The masking margin in force (cosine units): resolved with the round's cut-offs, else the recipe's."""
    cut = getattr(rows, "stats", {}).get("cutoffs") if rows is not None else None
    return float(cut["false_negative_margin"]) if cut is not None else params.false_negative_margin


def mask_only_cutoffs(params: DebCSEParams, embeddings: Any) -> Any:
    """The cut-offs of masking-only training: relative ones need the reference's top-K neighbour cosines."""

    if params.cutoffs == "absolute":  # the recipe's cosines (the neighbour spread is not measured here)
        return Cutoffs("absolute", params.positive_min_semantic, params.negative_max_semantic,
                       params.false_negative_threshold, params.negative_margin, params.false_negative_margin,
                       params.positive_temperature, params.negative_temperature)
    from embedkit.mining import mining_device, top_k_neighbours

    _, sims = top_k_neighbours(embeddings, k=min(params.k, len(embeddings) - 1), chunk_size=params.mining_chunk_size,
                               backend=params.mining_backend, device=mining_device(params.mining_device))
    return resolve_cutoffs(params, sims.numpy())


def _fmt_cut(value: float | None) -> str:
    return "off" if value is None else f"{value:.3f}"


def build_reference(name: str, max_seq_length: int) -> Any:
    """A separately named reference encoder, as saved (its own pooling, no dropout change)."""
    from embedkit.modeling import build_model

    return build_model(ModelSection(name=name, pooling=None, dropout=None, max_seq_length=max_seq_length))


def round_at(every: Any, epoch: float | None, step: int) -> int:
    """The mining round in force at a given point of training."""
    if every == "epoch":
        return int((epoch or 0.0) + 1e-6)
    if isinstance(every, int):
        return step // every
    return 0


def remine_callback(every: Any, current_round: Callable[[], int], remine: Callable[[int], None],
                    at_train_begin: bool = True) -> Any:
    """A callback that mines round ``round_at(every, ...)`` when it differs from ``current_round()``: each epoch
    or every N steps, and (``at_train_begin``) when training starts, which restores a resumed run's round by
    mining it again. DebCSE's rows and self-pairs' pairs (which restores its round from the checkpoint instead)."""
    from transformers import TrainerCallback

    class RemineCallback(TrainerCallback):
        def _sync(self, state) -> None:
            target = round_at(every, state.epoch, state.global_step)
            if target != current_round():
                remine(target)

        def on_train_begin(self, args, state, control, **kwargs):
            if at_train_begin:
                self._sync(state)

        def on_epoch_begin(self, args, state, control, **kwargs):
            if every == "epoch":
                self._sync(state)

        def on_step_end(self, args, state, control, **kwargs):
            if isinstance(every, int) and state.global_step % every == 0 and state.global_step < state.max_steps:
                self._sync(state)

    return RemineCallback()
