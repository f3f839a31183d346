"""Extra objective terms: the recipe's ``objective.terms`` list, its schema and the registry of term names.

A term is an ``nn.Module`` called as ``term(views, batch, loss)`` on the views' embeddings of a batch (see
:mod:`embedkit.losses.objective`); the framework multiplies it by its ``weight``, adds it to the method's
loss and logs it as ``loss_<name>``. Each term declares what it needs from a method:

* ``pairs``: an anchor and its positive per row (alignment, CWCL);
* ``batch``: only embeddings of the batch (uniformity);
* ``replay``: the replayed rows of ``data.replay`` (distill), embedded beside the method's views.

This module imports no torch: recipes are validated with it before any model loads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TermParams(BaseModel):
    """Base of a term's recipe entry: ``name``, ``weight``, then the term's own keys; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    weight: float = Field(1.0, ge=0, description="multiplies the term before it is added to the loss")


class AlignmentParams(TermParams):
    alpha: float = Field(2.0, gt=0, description="α in E ‖f(x) − f(x⁺)‖₂^α")


class UniformityParams(TermParams):
    t: float = Field(2.0, gt=0, description="t in log E exp(−t ‖f(x) − f(y)‖₂²)")


class CWCLParams(TermParams):
    temperature: float = Field(0.05, gt=0, description="τ of the student's softmax over the batch")
    floor: float = Field(0.0, ge=0, lt=1, description="teacher cosines at or below this give weight 0")
    teacher: Literal["initial"] = Field("initial", description="initial: the starting model, frozen")


class DistillParams(TermParams):
    mode: Literal["cosine", "mse", "kl"] = Field(
        "cosine", description="cosine: mean 1 − cos(student, teacher) per text; mse: mean squared difference of the "
        "embeddings; kl: KL(teacher ‖ student) of each text's softmax over its cosines to the step's other replayed "
        "texts / temperature")
    temperature: float = Field(0.05, gt=0, description="kl only: τ of both softmaxes")
    teacher: str = Field("initial", min_length=1, description="initial: the starting model, frozen; else a model "
                         "folder, packaged model or Hub id (frozen)")


@dataclass(frozen=True)
class TermInfo:
    params: type[TermParams]
    target: str  # "module:Class" built as Class(params, model)
    needs: Literal["pairs", "batch", "replay"]


TERMS: dict[str, TermInfo] = {
    "alignment": TermInfo(AlignmentParams, "embedkit.losses.alignment_uniformity:AlignmentTerm", "pairs"),
    "uniformity": TermInfo(UniformityParams, "embedkit.losses.alignment_uniformity:UniformityTerm", "batch"),
    "cwcl": TermInfo(CWCLParams, "embedkit.losses.cwcl:CWCLTerm", "pairs"),
    "distill": TermInfo(DistillParams, "embedkit.losses.distill:DistillTerm", "replay"),
}


def term_info(name: str) -> TermInfo:
    """The registered term ``name``; ``KeyError`` naming the known terms otherwise."""
    if name not in TERMS:
        raise KeyError(f"unknown term {name!r}; expected one of: {', '.join(sorted(TERMS))}")
    return TERMS[name]


def build_term(params: TermParams, model: Any) -> Any:
    """The term module for a validated recipe entry (imports torch)."""
    module, attr = term_info(params.name).target.split(":")
    return getattr(importlib.import_module(module), attr).from_params(params, model)
