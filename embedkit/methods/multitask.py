"""``multitask``: the top-level method of a recipe whose ``data.train`` lists several sources, each with its own
method (docs/multitask.md). It holds how batches are drawn (``sampler``); each source's method builds that
source's loss (:mod:`embedkit.training.multitask` puts them together). Torch-free: validation stays fast.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from embedkit.methods.base import Method, MethodParams, register


class MultiTaskParams(MethodParams):
    sampler: Literal["balanced", "proportional", "round_robin", "mixed"] = Field(
        "balanced",
        description="balanced: single-task batches, each source's share of the steps set by its weight (CoDiEmb's "
        "per-task step balancing, our reading); proportional: single-task batches, steps in proportion to each "
        "source's batches (sentence-transformers' PROPORTIONAL); round_robin: single-task batches, one source "
        "after the other until the smallest runs out (ROUND_ROBIN); mixed: naive co-training, rows of all sources "
        "shuffled together, each source's loss on its rows of the batch, weighted sum")


@register
class MultiTask(Method):
    """Several sources, each with its own method and loss, trained into one encoder. Not a loss itself: the
    sources' methods build theirs (see :mod:`embedkit.training.multitask`)."""

    name = "multitask"
    params_cls = MultiTaskParams
    column_roles = ()
    paper = ("Zhang et al., CoDiEmb (2025), arXiv:2508.11442 (single-task batches, per-task step balancing; our "
             "reading)")
    citation = """@article{zhang2025codiemb,
  title = {CoDiEmb: A Collaborative yet Distinct Framework for Unified Representation Learning in Information
           Retrieval and Semantic Textual Similarity},
  author = {Zhang, Bowen and Song, Zixin and Chen, Chunquan and Zhang, Qian-Wen and Yin, Di and Sun, Xing},
  journal = {arXiv preprint arXiv:2508.11442},
  year = {2025}
}"""

    @classmethod
    def refusals(cls, recipe: Any, params: Any) -> list[tuple[tuple, str]]:
        # The cross-cutting options (GradCache, Matryoshka, terms) are each source method's to honour or refuse.
        return []

    @classmethod
    def prompt_problems(cls, recipe: Any) -> list[tuple[tuple, str]]:
        return []  # checked per source, against each source's method

    @classmethod
    def objective_problems(cls, recipe: Any) -> list[tuple[tuple, Any]]:
        return []  # checked per source

    def build_loss(self):
        raise RuntimeError("multitask builds one loss per source (embedkit.training.multitask)")


# A source method must not keep state across steps (callbacks), transform its rows, or draw its own batches:
# in a multi-task run the sampler draws every batch and the other sources' steps come in between.
def source_method_problem(method: type[Method], params: Any) -> tuple[str, str] | None:
    """(key under the source's ``method``, reason) when ``method`` cannot be one source of a multi-task run."""
    if method.name == "multitask":
        return "name", "a source's method cannot itself be multitask"
    for hook, what in (("callbacks", "keeps state across steps"), ("prepare_dataset", "transforms its rows")):
        if getattr(method, hook) is not getattr(Method, hook):
            return "name", (f"method {method.name!r} {what} ({hook}); a multi-task source takes a method without "
                            "either (contrastive, cosent, simcse-sup, simcse-unsup)")
    if getattr(params, "no_duplicates", False):
        return "no_duplicates", ("needs the method's own batch sampler; in a multi-task run the multi-task sampler "
                                 "draws every batch: remove the key (or train this source alone)")
    return None


@dataclass
class MultiTrainData:
    """The training data of a multi-task recipe: each source's rows (``None``: a Hub source read at setup)."""

    parts: dict[str, Any]

    @property
    def sha256(self) -> str | None:
        """One digest over the sources' digests (``None`` when a source has none, e.g. a Hub dataset)."""
        digests = [getattr(p, "sha256", None) for p in self.parts.values()]
        if any(d is None for d in digests):
            return None
        joined = "".join(f"{name}:{d};" for name, d in zip(self.parts, digests, strict=True))
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def description(self) -> str:
        return ", ".join(f"{name}: {getattr(p, 'description', 'hub')}" for name, p in self.parts.items())

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts.values() if p is not None)
