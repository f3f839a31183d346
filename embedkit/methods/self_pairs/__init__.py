"""``self-pairs``: self-training rounds on an unlabelled corpus. The model being trained mines likely paraphrase
pairs by the ratio margin (the filters of ``embedkit data mine-pairs``), trains on them with InfoNCE, and mines
again every epoch or every N steps (docs/mine-pairs.md#self-training-rounds)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from embedkit.distributed import broadcast_object
from embedkit.errors import EmbedkitError
from embedkit.log import log
from embedkit.methods.base import ROW_ID_COLUMN, Method, MethodParams, register, training_head
from embedkit.methods.debcse import check_schedule, remine_callback
from embedkit.recipe import PAIR_MINING_DEFAULTS

SELF_PAIRS_CITATION = """@inproceedings{artetxe2019margin,
  title = {Margin-based Parallel Corpus Mining with Multilingual Sentence Embeddings},
  author = {Artetxe, Mikel and Schwenk, Holger},
  booktitle = {Proceedings of the 57th Annual Meeting of the Association for Computational Linguistics (ACL)},
  year = {2019}
}
@inproceedings{elmekki2025selfmining,
  title = {Effective Self-Mining of In-Context Examples for Unsupervised Machine Translation with {LLMs}},
  author = {El Mekki, Abdellah and Abdul-Mageed, Muhammad},
  booktitle = {Findings of the Association for Computational Linguistics: NAACL 2025},
  pages = {4229--4256},
  year = {2025},
  note = {arXiv:2410.11006}
}"""


class SelfPairsParams(MethodParams):
    """Mining (the meanings and defaults of ``embedkit data mine-pairs``), loss and re-mining schedule."""

    temperature: float = Field(0.05, gt=0, description="τ of the InfoNCE loss")
    symmetric: bool = Field(False, description="also positive → anchor over the batch's anchors, averaged")
    k: int = Field(PAIR_MINING_DEFAULTS["k"], ge=1, description="neighbours of the ratio margin")
    threshold: float | None = Field(
        PAIR_MINING_DEFAULTS["threshold"], description="keep pairs whose margin is at least this; null: no threshold")
    top: int | None = Field(None, ge=1, description="keep at most the N best pairs of a round")
    max_surface_similarity: float | None = Field(
        PAIR_MINING_DEFAULTS["max_surface_similarity"], gt=0, le=1,
        description="drop pairs whose folded texts are at least this similar (Indel, 0-1); null: off")
    mining_batch_size: int = Field(PAIR_MINING_DEFAULTS["batch_size"], gt=0, description="encoding batch size")
    remine_every: str | int = Field(
        "epoch", description="mine again with the model being trained each epoch, never, or every N optimizer steps")

    @field_validator("remine_every")
    @classmethod
    def _schedule(cls, value: str | int) -> str | int:
        return check_schedule(value)


@dataclass
class Round:
    """One mining round: its pairs (text indices, in the order rows read them) and the counts."""

    index: int
    pairs: np.ndarray  # n × 2
    stats: dict[str, Any] = field(default_factory=dict)


def round_order(n: int, seed: int, round_: int) -> np.ndarray:
    """The order in which the rows read a round's ``n`` pairs: a permutation seeded by (seed, round)."""
    return np.random.default_rng([int(seed), int(round_)]).permutation(n)


def mine_round(model: Any, texts: list[str], params: SelfPairsParams, seed: int, round_: int) -> Round:
    """Mine round ``round_`` with ``model``: every text encoded, candidates by the ratio margin, then the filters of
    ``data mine-pairs`` (:func:`embedkit.mining.select_margin_pairs`); the kept pairs in :func:`round_order`.
    Raises a one-line :class:`~embedkit.errors.EmbedkitError` when no pair survives."""
    from embedkit.mining import margin_pairs, select_margin_pairs, unit_vectors

    p = params
    started = time.time()
    vectors = unit_vectors(model, texts, p.mining_batch_size)
    found = margin_pairs(vectors, None, p.k)
    a = [texts[i] for i in found.source]
    b = [texts[j] for j in found.target]
    chosen, below, near_dup, kept, _ = select_margin_pairs(found, a, b, p.threshold, p.top, p.max_surface_similarity)
    if len(kept) == 0:
        raise EmbedkitError(
            f"self-pairs mining round {round_}: no pair kept of {len(a):,} candidates ({int(near_dup.sum()):,} "
            f"near-duplicates, {int(below.sum()):,} of {len(chosen):,} one-to-one pairs below method.threshold "
            f"{p.threshold}); lower method.threshold")
    pairs = np.stack([found.source[kept], found.target[kept]], axis=1).astype(np.int64)
    pairs = pairs[round_order(len(pairs), seed, round_)]
    margins = found.margin[kept]
    stats = {"candidates": len(a), "near_duplicates": int(near_dup.sum()), "one_to_one": len(chosen),
             "below_threshold": int(below.sum()), "pairs": len(kept),
             "margin_median": round(float(np.median(margins)), 4), "seconds": round(time.time() - started, 1)}
    return Round(round_, pairs, stats)


@register
class SelfPairs(Method):
    """Self-training rounds on a one-column corpus: the current model mines (anchor, positive) pairs by the ratio
    margin, one-to-one, near-duplicates out, above a threshold; InfoNCE trains on them
    (:class:`~embedkit.methods.self_pairs.loss.SelfPairsLoss`); the pairs are mined again every epoch or every N
    steps. The dataset has round 0's pair count of rows; row i trains on pair i mod n_r of round r's pairs, in a
    seeded order."""

    name = "self-pairs"
    params_cls = SelfPairsParams
    column_roles = ("text",)
    paper = ("Artetxe and Schwenk, margin-based mining (ACL 2019), arXiv:1811.01136; self-training rounds after "
             "El Mekki and Abdul-Mageed, Effective Self-Mining of In-Context Examples for Unsupervised MT "
             "(Findings of NAACL 2025, arXiv:2410.11006) — embedkit's reading")
    citation = SELF_PAIRS_CITATION
    composable = True

    @classmethod
    def refusals(cls, recipe: Any, params: Any) -> list[tuple[tuple, str]]:
        out = super().refusals(recipe, params)
        if recipe.training.group_by_length:
            out.append((("training", "group_by_length"),
                        "self-pairs rows are mined pair ids, their texts are known only when the step runs: they "
                        "cannot be grouped by length; remove the key"))
        if cls.prompt_columns(recipe):
            out.append((("model", "prompt_columns"),
                        "self-pairs tokenises its mined pairs itself and applies no prompt; set "
                        "model.prompt_columns: {} (the prompts are still saved with the model) or remove "
                        "model.prompts"))
        return out

    @classmethod
    def rows_problem(cls, data: Any, params: Any) -> str | None:
        distinct = len(_unique(next(iter(data.columns.values()))))
        if distinct < params.k + 1:
            return (f"self-pairs mines each text's method.k = {params.k} nearest neighbours among the other distinct "
                    f"texts; the training set has {distinct}, it needs at least {params.k + 1}: lower method.k or "
                    "add texts")
        return None

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.texts: list[str] = []
        self.first: Round | None = None
        self.loss = None

    def mine(self, round_: int) -> Round:
        """Mine round ``round_`` with the model being trained; rank 0's round on every process."""
        found = mine_round(self.ctx.model, self.texts, self.params, self.ctx.recipe.training.seed, round_)
        found = broadcast_object(found)
        s = found.stats
        log(f"self-pairs round {round_}: {s['pairs']:,} pairs of {s['candidates']:,} candidates "
            f"({s['near_duplicates']:,} near-duplicates, {s['one_to_one']:,} one-to-one, {s['below_threshold']:,} "
            f"below threshold {self.params.threshold}); margin median {s['margin_median']}; {s['seconds']} s")
        return found

    def remine(self, round_: int) -> None:
        """Mine round ``round_`` and install it in the loss."""
        import torch

        found = self.mine(round_)
        self.loss.set_pairs(torch.from_numpy(found.pairs), found.index)

    # ---- Method hooks ------------------------------------------------------------------------------

    def prepare_dataset(self, dataset: Any) -> Any:
        import datasets

        self.texts = _unique([str(t) for t in dataset["text"]])
        self.first = self.mine(0)
        return datasets.Dataset.from_dict({ROW_ID_COLUMN: list(range(len(self.first.pairs)))})

    def build_loss(self):
        import torch

        from embedkit.methods.self_pairs.loss import SelfPairsLoss

        if self.first is None:
            raise RuntimeError("self-pairs: prepare_dataset must run before build_loss")
        p, model = self.params, self.ctx.model
        self.loss = SelfPairsLoss(model, self.texts, model.preprocess, p.temperature, p.symmetric,
                                  head=training_head(self))
        self.loss.set_pairs(torch.from_numpy(self.first.pairs), self.first.index)
        return self.loss

    def callbacks(self, loss) -> list:
        if self.params.remine_every == "never":
            return []
        # A resumed run holds the checkpoint's round (restored into the loss's buffers) and mines only at the
        # next boundary, with the model it has then: no mining when training starts.
        return [remine_callback(self.params.remine_every, lambda: self.loss.round, self.remine, at_train_begin=False)]


def _unique(texts: list[str]) -> list[str]:
    """The texts once each (first occurrence order), empty ones out: as ``data mine-pairs`` reads a corpus."""
    return list(dict.fromkeys(t for t in texts if str(t).strip()))
