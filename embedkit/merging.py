"""``embedkit merge``: one model from models that share an architecture, by a rule over their weights.

The rules are applied tensor by tensor to the models' state dicts (θ₁ … θₙ; ``base`` is the shared starting point
b, e.g. the pretrained model every input was fine-tuned from). All but one come from mergekit (Goddard et al.
2024, "Arcee's MergeKit", arXiv:2403.13257; the optional extra ``pip install "embedkit[merge]"``), through its
in-memory API (``mergekit.merge_methods.merge_state_dicts``), as sentence-transformers' ``SentenceTransformer.merge``
calls it; embedkit keeps its own input checks, LoRA folding, output folder, card and ``merge.json``:

* ``linear`` (model soups, Wortsman et al. 2022): θ = Σᵢ wᵢ θᵢ / Σᵢ wᵢ. ``average`` is its alias with embedkit's
  checks on the weights (wᵢ ≥ 0, uniform 1/n unless given).
* ``task_arithmetic`` (Ilharco et al. 2023, "Editing models with task arithmetic"): θ = b + λ Σᵢ wᵢ (θᵢ − b).
  ``task-arithmetic`` is its alias with embedkit's ``--lambdas`` (θ = b + Σᵢ λᵢ (θᵢ − b), default λᵢ = 1/n);
  one model and a base is a single task vector scaled by λ.
* ``ties``, ``dare_ties``, ``dare_linear``, ``breadcrumbs``, ``breadcrumbs_ties``, ``della``, ``della_linear``,
  ``sce``, ``model_stock``, ``slerp``, ``nuslerp``, ``multislerp``, ``karcher``, ``nearswap``, ``arcee_fusion``,
  ``ram``, ``ramplus_tl``: mergekit's methods with their own parameters (``--param KEY=VALUE``; see
  docs/multitask.md). Random ones (DARE's and DELLA's drops) are seeded (``--seed``, default 0).
* ``delta`` (embedkit's own; delta-guided fusion in the spirit of CoDiEmb, Zhang et al. 2025; *our reading*: the
  paper's abstract says the merging weights are fine-grained and come from each parameter's deviation from its
  pretrained initialisation, we could not verify its exact formula). With δᵢ = θᵢ − b and mᵢ = |δᵢ| per element
  (``granularity="element"``, the default) or mᵢ = ‖δᵢ‖₂ per tensor (``granularity="tensor"``):

      wᵢ = mᵢ / Σⱼ mⱼ,   θ = b + Σᵢ wᵢ δᵢ  (= Σᵢ wᵢ θᵢ, a soup whose weights are how far each model moved)

  and θ = b exactly wherever Σⱼ mⱼ = 0 (no model moved that element or tensor: no 0/0).

Every rule is computed in float64 (mergekit's ``dtype``) and cast back once to the first model's dtype, so rounding
in the sum does not show: merging two copies of one model by a soup returns it bit for bit, and λ = 0 returns the
base bit for bit. Tensors that are not floating point (integer buffers such as ``position_ids``) are copied from the
first model. Inputs holding
NaN or ±inf are refused, and so is a result that overflows its dtype (a λ of 1e300), before anything is written.

The output is the first model's sentence-transformers folder (its modules, pooling and tokenizer) with the
merged weights (safetensors), a model card (README.md) and ``merge.json``; it is written in a staging folder beside
the output and renamed into place, so a failed merge leaves nothing half-written.

This module stays import-light (the CLI parser imports it): torch, mergekit and sentence-transformers load inside
the functions that check and merge.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData
from packaging.version import Version

from embedkit.cliargs import add_no_progress
from embedkit.errors import EmbedkitError
from embedkit.log import log
from embedkit.model_ref import check_model, first_line, is_hub_id, load_model, packaged_model_id
from embedkit.outputs import OutputFolder, open_folder, require_space, tensor_bytes, writing
from embedkit.version import __version__

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from torch import Tensor

ALIASES = {"average": "linear", "task-arithmetic": "task_arithmetic"}  # embedkit's names, run through mergekit
MERGEKIT_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                    "breadcrumbs_ties", "della", "della_linear", "sce", "model_stock", "slerp", "nuslerp",
                    "multislerp", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl")
METHODS = ("average", "task-arithmetic", "delta", *MERGEKIT_METHODS)
RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear", "arcee_fusion")  # they draw: seeded
MERGEKIT_MIN = "0.1.5"  # merge_state_dicts, the in-memory API (sentence-transformers' merge needs the same)
INSTALL = 'pip install "embedkit[merge]"'
GRANULARITIES = ("element", "tensor")
_SOUPS = "Wortsman et al. 2022, Model soups (arXiv:2203.05482)"
_ARITH = "Ilharco et al. 2023, Editing models with task arithmetic (arXiv:2212.04089)"
_DARE = "Yu et al. 2024, Language models are Super Mario (DARE, arXiv:2311.03099)"
_CRUMBS = "Davari & Belilovsky 2024, Model breadcrumbs (arXiv:2312.06795)"
_DELLA = "Deep et al. 2024, DELLA-Merging (arXiv:2406.11617)"
PAPERS = {
    "average": _SOUPS, "linear": _SOUPS, "task-arithmetic": _ARITH, "task_arithmetic": _ARITH,
    "ties": "Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)", "dare_ties": _DARE, "dare_linear": _DARE,
    "breadcrumbs": _CRUMBS, "breadcrumbs_ties": _CRUMBS, "della": _DELLA, "della_linear": _DELLA,
    "model_stock": "Jang et al. 2024, Model Stock (arXiv:2403.19522)",
    "slerp": "spherical linear interpolation (Shoemake 1985)",
    "delta": "delta-guided fusion after Zhang et al. 2025, CoDiEmb (arXiv:2508.11442); our reading",
}


class MergeError(EmbedkitError):
    """Models that cannot be merged: too few, mismatched architectures or tokenizers, bad weights."""


# ---------------------------------------------------------------------------------------------------------
# Arguments (every refusal here is answered before a model loads)


def _finite(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise MergeError(f"{what}: expected finite numbers, got {bad[0]}")
    return out


def coefficients(method: str, n_models: int, *, base: str | None = None, weights: Sequence[float] | None = None,
                 lambdas: Sequence[float] | None = None, granularity: str = "element") -> list[float] | None:
    """Check the method's embedkit-level arguments; returns the per-model coefficients (average's normalised
    weights, task-arithmetic's λᵢ, a mergekit method's ``weights`` as given), or ``None`` (delta's weights come
    from the tensors; a mergekit method without ``weights``). Raises :class:`MergeError`, one line. A mergekit
    method's own arguments are checked by :func:`mergekit_plan`."""
    if method not in METHODS:
        raise MergeError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    # One model is a merge only against a base: a task vector (task arithmetic, TIES, DARE ... on one model).
    if n_models < 1 or n_models < 2 and (base is None or method in ("average", "linear", "delta")):
        raise MergeError(f"merge: expected 2 or more models, got {n_models} (one model only with --base, for a "
                         "method on task vectors such as task-arithmetic)")
    if method == "average" and base is not None:
        raise MergeError("--base: average does not use a base model (task-arithmetic and delta do)")
    if method in ("task-arithmetic", "delta") and base is None:
        raise MergeError(f"--method {method}: needs --base BASE, the model every input was fine-tuned from")
    if weights is not None and method in ("task-arithmetic", "delta"):
        raise MergeError(f"--weights: {method} takes no weights (task-arithmetic takes --lambdas)")
    if lambdas is not None and method != "task-arithmetic":
        raise MergeError(f"--lambdas: only task-arithmetic takes λ ({method} does not; mergekit's methods take "
                         "--param lambda=...)")
    if granularity not in GRANULARITIES:
        raise MergeError(f"--granularity {granularity!r}: expected one of {', '.join(GRANULARITIES)}")
    if granularity != "element" and method != "delta":
        raise MergeError(f"--granularity: only delta has a granularity ({method} does not)")
    if method == "average":
        if weights is None:
            return [1.0 / n_models] * n_models
        w = _finite(weights, "--weights")
        if len(w) != n_models:
            raise MergeError(f"--weights: {len(w)} given for {n_models} models; expected one per model")
        if any(v < 0 for v in w) or sum(w) <= 0:
            raise MergeError(f"--weights {w}: expected non-negative weights with a positive sum")
        total = sum(w)
        if not math.isfinite(total):  # each wᵢ / inf would be 0: a model of zeros
            raise MergeError(f"--weights {','.join(f'{v:g}' for v in w)}: their sum overflows to {total}; "
                             "weights are relative (normalised to sum 1), so scale them down, e.g. 1,1")
        return [v / total for v in w]
    if method == "task-arithmetic":
        if lambdas is None:
            return [1.0 / n_models] * n_models
        lam = _finite(lambdas, "--lambdas")
        if len(lam) == 1:
            return lam * n_models
        if len(lam) != n_models:
            raise MergeError(f"--lambdas: {len(lam)} given for {n_models} models; expected one λ, or one per model")
        return lam
    if weights is not None:  # a mergekit method: one weight per model, any sign (mergekit decides what they mean)
        w = _finite(weights, "--weights")
        if len(w) != n_models:
            raise MergeError(f"--weights: {len(w)} given for {n_models} models; expected one per model")
        return w
    return None


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``--param KEY=VALUE`` (repeatable) as a dict; one line for a malformed or repeated key."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise MergeError(f"--param {item}: expected KEY=VALUE, e.g. --param density=0.5")
        if key in out:
            raise MergeError(f"--param {key}: given twice ({key}={out[key]}, {item})")
        out[key] = value.strip()
    return out


@dataclass(frozen=True)
class MergekitPlan:
    """A mergekit method, checked: its parameters as mergekit takes them (per-model values keyed by input index:
    the models are 0 … n−1, a separate base is n), as recorded (per-model values as lists in model order), the
    base's input index (``None``: no base; 0: the first model is the base, as slerp takes it), the seed of a
    random method and mergekit's version."""

    method: str
    parameters: dict[str, Any]
    shown: dict[str, Any]
    base_index: int | None
    seed: int | None
    version: str


def _mergekit(method: str) -> tuple[Any, str]:
    """mergekit's method object and version, or one line naming the extra."""
    try:
        version = metadata.version("mergekit")
    except metadata.PackageNotFoundError:
        raise MergeError(f"--method {method}: runs through mergekit, which is not installed; {INSTALL}") from None
    if Version(version) < Version(MERGEKIT_MIN):
        raise MergeError(f"--method {method}: needs mergekit>={MERGEKIT_MIN} (its in-memory merge_state_dicts), "
                         f"mergekit {version} is installed; {INSTALL} --upgrade")
    from mergekit import merge_methods

    return merge_methods.get(ALIASES.get(method, method)), version


def _coerce(key: str, value: Any, value_type: Any) -> Any:
    """One parameter value as mergekit's type wants it (float, int, bool or an optional float), from a string
    (the command line) or a Python value (the API); one line otherwise."""
    text = str(value).strip().lower()
    if value_type is bool:
        if isinstance(value, bool):
            return value
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise MergeError(f"--param {key}={value}: expected true or false")
    if value is None or text == "none":
        if "None" in str(value_type):  # Optional[float]: None is a value of its own
            return None
        raise MergeError(f"--param {key}={value}: expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MergeError(f"--param {key}={value}: expected a number") from None
    if not math.isfinite(number):
        raise MergeError(f"--param {key}={value}: expected a finite number")
    if value_type is int:
        if number != int(number):
            raise MergeError(f"--param {key}={value}: expected a whole number")
        return int(number)
    return number


def _values(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v for v in value.split(",") if v.strip()] or [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def mergekit_plan(method: str, n_models: int, *, base: str | None = None, weights: Sequence[float] | None = None,
                  params: dict[str, Any] | None = None, seed: int | None = None) -> MergekitPlan:
    """Check a mergekit method's inputs and parameters against its own specification (mergekit's
    ``MergeMethodSpec``) and try them on small random tensors, all before a model loads; ``average`` and
    ``task-arithmetic`` become ``linear`` and ``task_arithmetic`` with ``weights`` (:func:`coefficients`' values)
    as mergekit's per-model ``weight``. Raises :class:`MergeError`, one line."""
    import torch
    from mergekit.merge_methods import BasePolicy, ParameterScope, merge_tensors

    params = dict(params or {})
    if params and method in ALIASES:
        raise MergeError(f"--param: {method} takes no mergekit parameters (--method {ALIASES[method]} takes them)")
    kit, version = _mergekit(method)
    engine = ALIASES.get(method, method)
    if seed is not None and engine not in RANDOM_METHODS:
        raise MergeError(f"--seed: {method} is not random (only {', '.join(RANDOM_METHODS)} draw)")
    contract = kit.spec.contract
    if base is not None and contract.base == BasePolicy.IGNORED:
        raise MergeError(f"--base: {method} does not use a base model")
    base_index = None
    if base is not None:
        base_index = n_models
    elif contract.base == BasePolicy.REQUIRED:
        if contract.max_inputs != 2:
            raise MergeError(f"--method {method}: needs --base BASE, the model every input was fine-tuned from")
        base_index = 0  # slerp and the other two-model methods: from the first model towards the second
    ids = list(range(n_models + (base is not None)))
    try:
        kit.validate_inputs(ids, base_index)
    except ValueError as err:
        given = f"{n_models} model{'s' if n_models != 1 else ''}" + (" and --base" if base is not None else "")
        raise MergeError(f"--method {method}: {first_line(err)} ({given})") from None

    specs = {p.name: p for p in kit.spec.parameters}
    parameters: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for key, value in params.items():
        spec = specs.get(key)
        if spec is None:
            have = ", ".join(sorted(specs)) or "none"
            raise MergeError(f"--param {key}: {method} takes no such parameter (its parameters: {have})")
        if key == "weight":
            raise MergeError("--param weight: use --weights W1,W2,... (one weight per model)")
        values = [_coerce(key, v, spec.value_type) for v in _values(value)]
        if spec.scope == ParameterScope.SHARED:
            if len(values) != 1:
                raise MergeError(f"--param {key}: one value for all models (a setting of {method}), got "
                                 f"{len(values)}")
            parameters[key] = shown[key] = values[0]
        elif len(values) == 1:
            parameters[key] = shown[key] = values[0]
        elif len(values) == n_models:
            parameters[key] = dict(enumerate(values))
            shown[key] = values
        else:
            raise MergeError(f"--param {key}: {len(values)} values for {n_models} models; expected one, or one "
                             "per model")
    if "weight" in specs:  # per model; 1 each unless given (as sentence-transformers' merge)
        w = list(weights) if weights is not None else [1.0] * n_models
        parameters["weight"] = dict(enumerate(w))
        shown["weight"] = w
    elif weights is not None:
        raise MergeError(f"--weights: {method} takes no per-model weight (its parameters: "
                         f"{', '.join(sorted(specs)) or 'none'})")
    if engine == "slerp":
        parameters.setdefault("t", 0.5)  # halfway, as sentence-transformers' merge
        shown.setdefault("t", 0.5)
    missing = [name for name, spec in specs.items() if spec.required and name not in parameters]
    if missing:
        raise MergeError(f"--method {method}: needs --param {missing[0]}=VALUE (no default in mergekit)")
    if engine in RANDOM_METHODS:
        seed = 0 if seed is None else seed
    # A dry run on small random tensors: whatever else mergekit refuses (a value out of its range) is said now.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = [torch.randn(4, 8, dtype=torch.float64) for _ in ids]
        try:
            merge_tensors(probe, kit, parameters=parameters, ids=ids, base_index=base_index, name="probe")
        except Exception as err:  # noqa: BLE001 (mergekit's refusals come as several types)
            raise MergeError(f"--method {method}: mergekit refuses these parameters ({first_line(err)})") from None
    return MergekitPlan(engine, parameters, shown, base_index, seed, version)


def check_output(output: str | os.PathLike, overwrite: bool, inputs: Sequence[str] = ()) -> OutputFolder:
    """The output folder, checked as every command's (:mod:`embedkit.outputs`): never an input, inside or around
    one, a training run's folder, or a folder holding files ``merge`` did not write; an existing one only with
    ``--overwrite``. Nothing is written here."""
    return open_folder(output, command="merge", flag="-o", overwrite=overwrite, swap=True,
                       inputs=[("input", ref) for ref in inputs])


# ---------------------------------------------------------------------------------------------------------
# The rules: embedkit's delta, and mergekit's


@dataclass
class DeltaStats:
    """Per-model share of the delta rule's weight: Σ wᵢ over the moved float elements, and how many moved."""

    weight_sums: list[float] = field(default_factory=list)
    moved: int = 0
    total: int = 0

    def add(self, weight_sums: Sequence[float], moved: int, total: int) -> None:
        self.weight_sums = [a + b for a, b in zip(self.weight_sums, weight_sums)] if self.weight_sums \
            else list(weight_sums)
        self.moved += moved
        self.total += total

    def mean_weights(self) -> list[float | None]:
        """Each model's mean wᵢ over the elements some model moved; ``None`` when no element moved."""
        return [s / self.moved if self.moved else None for s in self.weight_sums]


def merge_tensor(tensors: Sequence[Tensor], base: Tensor, granularity: str = "element",
                 stats: DeltaStats | None = None) -> Tensor:
    """One tensor merged by the ``delta`` rule (see the module docstring), in float64, cast back to the first
    tensor's dtype; a non-floating tensor is the first one, unchanged."""
    import torch

    first = tensors[0]
    if not first.is_floating_point():
        return first.clone()
    # In-place float64 accumulators: a MiniLM-sized state dict has tensors of 12M elements, and every temporary
    # costs an allocation. torch.sub(θ, b) with a float64 b computes θ − b in float64 without copying θ first.
    b = base.detach().to(torch.float64)
    out = b.clone()
    deltas = [torch.sub(t.detach(), b) for t in tensors]
    if granularity == "tensor":
        norms = [float(torch.linalg.vector_norm(d)) for d in deltas]
        total = sum(norms)
        weights = [n / total if total > 0 else 0.0 for n in norms]
        for w, d in zip(weights, deltas):
            out.add_(d, alpha=w)
        if stats is not None:
            stats.add([w * first.numel() for w in weights], first.numel() if total > 0 else 0, first.numel())
        return (out if total > 0 else b).to(first.dtype)
    moves = [d.abs() for d in deltas]
    total = moves[0].clone()
    for m in moves[1:]:
        total.add_(m)
    moved = total > 0
    total.masked_fill_(~moved, 1.0)  # no 0/0: where nobody moved, every wᵢ = 0/1 and the base is kept below
    sums = []
    for m, d in zip(moves, deltas):
        w = m.div_(total)  # wᵢ, in the buffer of |δᵢ|
        sums.append(float(w.sum()))
        out.addcmul_(w, d)
    if stats is not None:
        stats.add(sums, int(moved.sum()), moved.numel())
    return torch.where(moved, out, b).to(first.dtype)


def merge_state_dicts(states: Sequence[dict[str, Tensor]], method: str, *, base: dict[str, Tensor] | None = None,
                      plan: MergekitPlan | None = None, granularity: str = "element",
                      stats: DeltaStats | None = None, progress: bool | None = False) -> dict[str, Tensor]:
    """Every tensor of ``states[0]`` merged (the state dicts are checked alike before): by :func:`merge_tensor`
    for ``delta``, else by mergekit as ``plan`` says, one tensor at a time (a bar over them with ``progress``;
    ``None``: when stderr is a terminal), computed in float64 and cast back to the first model's dtype.
    Non-floating tensors (integer buffers) are the first model's; a tensor that is zero in every input stays zero."""
    import torch

    from embedkit.encoding import progress_bar

    if plan is not None:
        from mergekit.merge_methods import get
        from mergekit.merge_methods import merge_state_dicts as mergekit_merge

        kit = get(plan.method)
        inputs = list(states) + ([base] if plan.base_index == len(states) else [])
    out = {}
    with progress_bar(len(states[0]), progress, desc="merging", unit=" tensors") as bar, \
            torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed if plan is not None and plan.seed is not None else 0)
        for name, first in states[0].items():
            if plan is None:
                assert base is not None
                out[name] = merge_tensor([s[name] for s in states], base[name], granularity, stats)
            elif not first.is_floating_point():
                out[name] = first.clone()
            elif not any(s[name].any() for s in inputs):  # zero in every input: zero by any rule, and mergekit's
                out[name] = first.clone()                  # spherical methods would divide by its zero norm
            else:
                try:
                    out[name] = mergekit_merge({i: {name: s[name]} for i, s in enumerate(inputs)}, kit,
                                               parameters=plan.parameters, base=plan.base_index,
                                               dtype=torch.float64, out_dtype=first.dtype)[name]
                except (ValueError, RuntimeError, TypeError) as err:
                    raise MergeError(f"--method {method}: mergekit failed on {name} ({first_line(err)})") from None
            bar.update(1)
    return out


def first_non_finite(state: dict[str, Tensor]) -> tuple[str, int, int] | None:
    """The first floating tensor of ``state`` holding NaN or ±inf: (name, how many elements, of how many)."""
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad, tensor.numel()
    return None


def check_finite_inputs(state: dict[str, Tensor], name: str) -> None:
    """An input holding NaN or ±inf weights would carry them into every merge: refused, naming the tensor."""
    found = first_non_finite(state)
    if found is not None:
        key, bad, total = found
        raise MergeError(f"{name}: holds non-finite weights ({key}: {bad:,} of {total:,} elements are NaN or "
                         "±inf); merge only models whose weights are finite")


def check_finite_result(merged: dict[str, Tensor], method: str, coeffs: Sequence[float] | None) -> None:
    """The merged weights must be finite in their dtype: a λ large enough overflows the cast back (float64 to
    float32 gives ±inf past 3.4e38), and such a model embeds every text as NaN."""
    found = first_non_finite(merged)
    if found is None:
        return
    import torch

    key, bad, total = found
    limit = torch.finfo(merged[key].dtype).max
    shown = list(dict.fromkeys(coeffs or []))  # one λ for all models: as it was given
    what = f"--lambdas {','.join(f'{c:g}' for c in shown)}" if method == "task-arithmetic" else f"--method {method}"
    raise MergeError(f"{what}: the merged weights overflow {str(merged[key].dtype).removeprefix('torch.')} "
                     f"({key}: {bad:,} of {total:,} elements beyond ±{limit:.3g}); expected smaller λ, so that "
                     "b + Σ λᵢ (θᵢ − b) stays finite; nothing was written")


# ---------------------------------------------------------------------------------------------------------
# LoRA adapters: folded into full weights before merging


def fold_lora(model: SentenceTransformer, name: str) -> str | None:
    """Fold a PEFT adapter (a ``model.lora`` output saved without ``merge: true``) into the weights it adapts,
    in place: W ← W + (α/r)·B·A in every adapted layer, which is then replaced by its base layer (peft's layer
    ``merge`` and unload, as ``merge_and_unload`` does). Returns the adapter's base model, or ``None`` when
    ``model`` holds no adapter.

    Merging an adapter's tensors as they are would average A and B apart: the merged update would be
    mean(B)·mean(A), not the mean of the updates Bᵢ·Aᵢ. Folded, every input is full weights and each rule
    applies to the updates themselves (an average of adapters on one base is the base plus the mean ΔW).
    """
    if find_spec("peft") is None:  # no adapter can have loaded
        return None
    from peft.tuners.tuners_utils import BaseTunerLayer

    from embedkit.modeling import lora_encoder, merge_lora

    bases = [cfg.base_model_name_or_path for m in model.modules()
             for cfg in (getattr(m, "peft_config", None) or {}).values()]
    if lora_encoder(model) is not None:  # a peft model built in this process (peft's own merge_and_unload)
        merge_lora(model)
    # A folder loaded by sentence-transformers: transformers' PEFT integration injected the layers in place.
    layers = [(parent, child_name, child) for parent in model.modules()
              for child_name, child in parent.named_children() if isinstance(child, BaseTunerLayer)]
    for parent, child_name, layer in layers:
        try:
            layer.merge(safe_merge=True)  # refuses an update that is not finite
        except ValueError as err:
            raise MergeError(f"{name}: its adapter cannot be folded into the weights ({first_line(err)})") from None
        setattr(parent, child_name, layer.get_base_layer())
    for module in model.modules():
        if getattr(module, "_hf_peft_config_loaded", False):
            module._hf_peft_config_loaded = False  # saves full weights, not an adapter
            # The adapter's load left its key renaming (base_model.model. ...), which saving would reverse onto
            # the plain weights; without it transformers saves with the architecture's default mapping.
            vars(module).pop("_weight_conversions", None)
        if "peft_config" in vars(module):
            del module.peft_config
    left = sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("peft.")})
    if left:
        raise MergeError(f"{name}: holds PEFT modules that cannot be folded into full weights ({', '.join(left)}); "
                         "merge its adapter into the base first (peft merge_and_unload) and merge that folder")
    return (bases[0] or "an unnamed base") if bases or layers else None


# ---------------------------------------------------------------------------------------------------------
# Compatibility


def _stack(model: SentenceTransformer) -> list[str]:
    return [type(m).__name__ for m in model]


def _module_config(module: Any) -> dict[str, Any]:
    get = getattr(module, "get_config_dict", None)
    return dict(get()) if callable(get) else {}


def _names(keys: Sequence[str], limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dicts(ref: dict[str, Tensor], other: dict[str, Tensor], name: str, ref_name: str) -> None:
    """Same parameter names and shapes as the reference model, else one line naming ``name``."""
    missing, extra = set(ref) - set(other), set(other) - set(ref)
    if missing or extra:
        parts = ([f"lacks {_names(list(missing))}"] if missing else []) + (
            [f"has extra {_names(list(extra))}"] if extra else [])
        raise MergeError(f"{name}: a different architecture from {ref_name} (parameter names differ: "
                         f"{'; '.join(parts)})")
    for key, tensor in ref.items():
        if tuple(other[key].shape) != tuple(tensor.shape):
            raise MergeError(f"{name}: a different architecture from {ref_name} ({key} has shape "
                             f"{tuple(other[key].shape)}, expected {tuple(tensor.shape)})")
        if other[key].is_floating_point() != tensor.is_floating_point():
            raise MergeError(f"{name}: {key} is {other[key].dtype}, {ref_name} has {tensor.dtype}")


def check_modules(ref: SentenceTransformer, other: SentenceTransformer, name: str, ref_name: str) -> None:
    """Same module stack (Transformer, Pooling, ...) with the same settings (pooling mode, dimensions) and the
    same transformer ``model_type``."""
    if _stack(other) != _stack(ref):
        raise MergeError(f"{name}: module stack {' -> '.join(_stack(other))} differs from {ref_name}'s "
                         f"{' -> '.join(_stack(ref))}")
    for i, (a, b) in enumerate(zip(ref, other)):
        if hasattr(a, "auto_model"):
            ta = getattr(a.auto_model.config, "model_type", None)
            tb = getattr(b.auto_model.config, "model_type", None)
            if ta != tb:
                raise MergeError(f"{name}: module {i} is a {tb} model, {ref_name}'s is {ta}")
            continue  # the transformer's other settings are its tensors' names and shapes, checked apart
        ca, cb = _module_config(a), _module_config(b)
        diff = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        if diff:
            key = diff[0]
            raise MergeError(f"{name}: module {i} ({type(b).__name__}) has {key}={cb.get(key)!r}, {ref_name}'s "
                             f"has {ca.get(key)!r}")


# Cased text, accents, CJK and compatibility characters: any difference in how two tokenizers normalise text
# before the vocabulary shows in this text's tokens.
PROBE_TEXT = "Héllo WORLD, naïve Café 東京 ½ ﬁne"
TEXT_SETTINGS = ("do_lower_case", "strip_accents", "tokenize_chinese_chars")


def _text_handling(tokenizer: Any) -> dict[str, Any]:
    """What a tokenizer does to text before looking tokens up: its casing / accent settings and, for a fast
    tokenizer, its normalizer and pre-tokenizer (flattened to dotted keys, e.g. ``normalizer.lowercase``)."""
    out = {k: getattr(tokenizer, k) for k in TEXT_SETTINGS if hasattr(tokenizer, k)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())

        def flatten(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    flatten(f"{prefix}.{k}", v)
            else:
                out[prefix] = value
        for part in ("normalizer", "pre_tokenizer"):
            flatten(part, spec.get(part))
    return out


def check_tokenizers(ref: SentenceTransformer, other: SentenceTransformer, name: str, ref_name: str) -> None:
    """The same vocabulary (token → id), so that every embedding row means the same token in each model, and the
    same text handling (casing, accents, normalizer), so that a text maps to the same tokens in each."""
    va = ref.tokenizer.get_vocab() if ref.tokenizer is not None else {}
    vb = other.tokenizer.get_vocab() if other.tokenizer is not None else {}
    if va != vb:
        if len(va) != len(vb):
            raise MergeError(f"{name}: tokenizer vocabulary has {len(vb)} tokens, {ref_name}'s has {len(va)}; "
                             "models with different tokenizers cannot be merged")
        differ = sorted(t for t in set(va) | set(vb) if va.get(t) != vb.get(t))
        raise MergeError(f"{name}: tokenizer vocabulary differs from {ref_name}'s ({len(differ)} tokens, e.g. "
                         f"{differ[0]!r}, map to different ids); models with different tokenizers cannot be merged")
    if ref.tokenizer is None or other.tokenizer is None:
        return
    ha, hb = _text_handling(ref.tokenizer), _text_handling(other.tokenizer)
    ta, tb = ref.tokenizer.tokenize(PROBE_TEXT), other.tokenizer.tokenize(PROBE_TEXT)
    differ = [k for k in ha if k in hb and ha[k] != hb[k]]
    if differ or ta != tb:
        setting = f"{differ[0]}={hb[differ[0]]!r}, {ref_name}'s has {ha[differ[0]]!r}" if differ else \
            "another text normalisation"
        example = f"{PROBE_TEXT!r} is {tb} there, {ta} in {ref_name}" if ta != tb else "the same probe tokens"
        raise MergeError(f"{name}: same vocabulary but its tokenizer reads text differently ({setting}; "
                         f"{example}); models whose tokenizers differ in casing or normalisation cannot be merged")


# ---------------------------------------------------------------------------------------------------------
# Card and output


def display_name(ref: str) -> str:
    """How an input is named in the card: its Hub id, or the path with the home folder as ``~``."""
    path = Path(ref).expanduser()
    if path.exists():
        hub = packaged_model_id(path)
        if hub:
            return hub
        text, home = str(path.resolve()), str(Path.home())
        return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + os.sep) else text
    return ref


def _weight(value: float | None, method: str) -> str:
    if value is None:
        return "— (no element moved)" if method == "delta" else "—"
    return f"{value:.6g}"


def _setting(value: Any) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in _values(value)) \
        if not isinstance(value, bool) else str(value).lower()


def model_card(record: dict[str, Any], repo_id: str | None = None) -> ModelCard:
    """A small model card: front matter (huggingface_hub's ModelCardData) and a table of inputs and weights;
    with ``repo_id`` (``embedkit push``) titled and loaded by that name instead of the output folder's."""
    hub_ids = list(dict.fromkeys(m["name"] for m in record["models"] + [record.get("base") or {"name": ""}]
                                 if is_hub_id(m["name"]) and not Path(m["name"]).exists()))
    method = record["method"]
    kit = record.get("mergekit")
    tags = ["sentence-transformers", "merge", f"merge-{method}", "embedkit"] + (["mergekit"] if kit else [])
    data = ModelCardData(library_name="sentence-transformers", pipeline_tag="sentence-similarity", tags=tags,
                         base_model=hub_ids or None)
    col = {"average": "weight wᵢ", "task-arithmetic": "λᵢ",
           "delta": "mean merging weight wᵢ (moved elements)"}.get(method, "weight")
    rows = [f"| {i + 1} | `{m['name']}` | {_weight(m['weight'], method)} | `{m['sha256'][:16]}` |"
            for i, m in enumerate(record["models"])]
    n = len(record["models"])
    paper = PAPERS.get(method) or PAPERS.get((kit or {}).get("method", "")) or f"mergekit's `{method}`"
    lines = [
        f"# {repo_id.split('/')[-1] if repo_id else record['output_name']}", "",
        f"A merge of {n} sentence-transformers model{'s' if n != 1 else ''}"
        f"{' and a base' if record.get('base') else ''} by `embedkit merge --method {method}` "
        f"(embedkit {record['embedkit']}): {paper}.", "",
        f"Rule: {record['rule']}", "",
    ]
    if kit:
        settings = ", ".join(f"{k}={_setting(v)}" for k, v in kit["parameters"].items()) or "its defaults"
        seed = f", seed {kit['seed']}" if kit.get("seed") is not None else ""
        lines += [f"Merged by mergekit {kit['version']} (`{kit['method']}`; {settings}{seed}).", ""]
    lines += [f"| # | input | {col} | weights SHA-256 |", "|---|---|---|---|", *rows, ""]
    folded = [f"input {i + 1} on `{m['lora_base']}`" for i, m in enumerate(record["models"]) if m.get("lora_base")]
    if (record.get("base") or {}).get("lora_base"):
        folded.append(f"the base on `{record['base']['lora_base']}`")
    if folded:
        lines += ["LoRA adapters, each folded into the weights of its base model (W + (α/r)·B·A) before merging, "
                  f"so the rule applies to full weights: {'; '.join(folded)}.", ""]
    if record.get("base"):
        lines += [f"Base: `{record['base']['name']}` (weights SHA-256 `{record['base']['sha256'][:16]}`).", ""]
    if method == "delta":
        lines += [f"Elements no model moved from the base (kept as the base): "
                  f"{record['unmoved_elements']} of {record['float_elements']}.", ""]
    lines += ["Modules, pooling and tokenizer are those of the first input; non-floating buffers are copied from it.",
              "", "```python", "from sentence_transformers import SentenceTransformer", "",
              f"model = SentenceTransformer(\"{repo_id or 'path/to/this/folder'}\")", "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """``merge.json`` of a merge output folder (what :func:`merge` writes and :func:`model_card` renders), checked;
    raises :class:`MergeError` naming the file and what was expected."""
    path = Path(folder) / "merge.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MergeError(f"{path}: cannot be read ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise MergeError(f"{path}{where}: not valid JSON ({getattr(err, 'msg', err)})") from None
    models = record.get("models") if isinstance(record, dict) else None
    kit = record.get("mergekit") if isinstance(record, dict) else None
    good = (isinstance(record, dict) and record.get("method") in METHODS
            and all(isinstance(record.get(k), str) for k in ("rule", "embedkit", "output_name"))
            and isinstance(models, list) and len(models) >= (1 if record.get("base") else 2)
            and all(isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("sha256"), str)
                    and (m.get("weight") is None or isinstance(m.get("weight"), (int, float))) for m in models)
            and (record.get("method") != "delta" or all(isinstance(record.get(k), int)
                                                        for k in ("float_elements", "unmoved_elements")))
            and (not record.get("base") or isinstance(record["base"], dict)
                 and all(isinstance(record["base"].get(k), str) for k in ("name", "sha256")))
            and (kit is None or isinstance(kit, dict) and isinstance(kit.get("parameters"), dict)
                 and all(isinstance(kit.get(k), str) for k in ("method", "version"))))
    if not good:
        raise MergeError(f"{path}: expected the record `embedkit merge` writes (method, rule, embedkit, output_name, "
                         "models: 2 or more of name, weight, sha256, or 1 and a base; base: name, sha256; "
                         "mergekit: method, parameters, version)")
    return record


RULES = {
    "average": "θ = Σᵢ wᵢ θᵢ, Σᵢ wᵢ = 1",
    "linear": "θ = Σᵢ wᵢ θᵢ / Σᵢ wᵢ",
    "task-arithmetic": "θ = b + Σᵢ λᵢ (θᵢ − b)",
    "task_arithmetic": "θ = b + λ Σᵢ wᵢ (θᵢ − b)",
    "ties": "δᵢ = θᵢ − b trimmed to its top-density magnitudes, a sign elected per element, "
            "θ = b + λ · (weighted mean of the δᵢ that agree with it)",
    "dare_ties": "δᵢ = θᵢ − b with elements dropped at random (kept with probability density, rescaled), "
                 "a sign elected per element, θ = b + λ · (weighted mean of the agreeing δᵢ)",
    "dare_linear": "δᵢ = θᵢ − b with elements dropped at random (kept with probability density, rescaled), "
                   "θ = b + λ Σᵢ wᵢ δᵢ",
    "slerp": "θ = slerp(θ₁, θ₂; t): along the great circle from the first model (t = 0) to the second (t = 1)",
    "model_stock": "θ = b + t·(mean θᵢ − b), t from the angle between the fine-tuned models' task vectors",
    "delta": "δᵢ = θᵢ − b, mᵢ = {m}, wᵢ = mᵢ / Σⱼ mⱼ, θ = b + Σᵢ wᵢ δᵢ; θ = b where Σⱼ mⱼ = 0",
}


def _rule(method: str, granularity: str) -> str:
    m = "|δᵢ| per element" if granularity == "element" else "‖δᵢ‖₂ per tensor"
    rule = RULES.get(method)
    return rule.format(m=m) if rule else f"mergekit's {method} (its docs/merge_methods.md)"


def write_model(model: SentenceTransformer, target: OutputFolder, card: ModelCard, record: dict[str, Any]) -> None:
    """Save ``model`` with its card and record in a staging folder beside the output, then swap it in (an
    existing output is moved aside first and removed only once the new folder is in place)."""
    subject = f"-o {target.shown}"
    with target:
        require_space(target.work, tensor_bytes(model.state_dict()), f"{subject}: the merged model")
        with writing(target.work, "writing the merged model", subject):
            model.save(str(target.work), create_model_card=False)
            card.save(str(target.work / "README.md"))
            (target.work / "merge.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
        target.commit()


# ---------------------------------------------------------------------------------------------------------
# The API


def merge(models: Sequence[str], method: str = "average", *, base: str | None = None,
          weights: Sequence[float] | None = None, lambdas: Sequence[float] | None = None,
          granularity: str = "element", params: dict[str, Any] | None = None, seed: int | None = None,
          output: str | os.PathLike | None = None, overwrite: bool = False,
          progress: bool | None = False) -> SentenceTransformer:
    """Merge ``models`` (local sentence-transformers folders, packaged models or Hub ids) by ``method``.

    ``weights``: average's per-model weights (normalised to sum 1; default uniform), or a mergekit method's
    per-model ``weight`` (default 1 each). ``lambdas``: task-arithmetic's λ, one for all or one per model (default
    1/n). ``base``: the shared starting model (task-arithmetic, delta and mergekit's task-vector methods; with it,
    task-arithmetic and those methods take one model too). ``granularity``: delta's weights per ``element`` or per
    ``tensor``. ``params``: a mergekit method's parameters (``{"density": 0.5}``; a per-model one as a list or
    ``"0.5,0.7"``). ``seed``: the draws of a random mergekit method (default 0). ``progress``: bars over the models
    loaded and the tensors merged (``None``: when stderr is a terminal; otherwise the libraries' own bars are off
    too). Returns the merged model (the first input's modules with the merged weights); with ``output`` also
    writes it there as a sentence-transformers folder with a model card and merge.json. Raises
    :class:`MergeError` (one line) for arguments or inputs that cannot be merged, arguments before any model loads.
    """
    from embedkit.encoding import progress_bar, quiet_bars, show_bars

    models = [str(m) for m in models]
    coeffs = coefficients(method, len(models), base=base, weights=weights, lambdas=lambdas,
                          granularity=granularity)
    if method == "delta":
        if params:
            raise MergeError("--param: delta takes no mergekit parameters (its one setting is --granularity)")
        if seed is not None:
            raise MergeError("--seed: delta is not random")
        plan = None
    else:
        plan = mergekit_plan(method, len(models), base=base, weights=coeffs, params=params, seed=seed)
    refs = models + ([str(base)] if base is not None else [])
    target = check_output(output, overwrite, refs) if output is not None else None
    for i, ref in enumerate(refs):  # one line for a missing folder or an unreachable Hub, before torch loads
        check_model(ref, what="base" if i == len(models) else f"model {ref}", trust_flag=None)

    from embedkit.modeling import tensors_digest  # torch

    with quiet_bars(not show_bars(progress)):
        with progress_bar(len(refs), progress, desc="loading", unit=" models") as bar:
            loaded = []
            for ref in refs:
                loaded.append(load_model(ref, device="cpu")[0])
                bar.update(1)
        base_model = loaded.pop() if base is not None else None
        lora_bases = [fold_lora(model, ref) for model, ref in zip(loaded, models)]
        states = [m.state_dict() for m in loaded]
        for model, state, name in zip(loaded[1:], states[1:], models[1:]):
            check_state_dicts(states[0], state, name, models[0])
            check_modules(loaded[0], model, name, models[0])
            check_tokenizers(loaded[0], model, name, models[0])
        for state, name in zip(states, models):
            check_finite_inputs(state, name)
        base_state, base_lora = None, None
        if base_model is not None:
            base_lora = fold_lora(base_model, f"base {base}")
            base_state = base_model.state_dict()
            check_state_dicts(states[0], base_state, f"base {base}", models[0])
            check_tokenizers(loaded[0], base_model, f"base {base}", models[0])
            check_finite_inputs(base_state, f"base {base}")
        digests = [tensors_digest(s) for s in states]
        start = time.perf_counter()
        stats = DeltaStats() if method == "delta" else None
        merged = merge_state_dicts(states, method, base=base_state, plan=plan, granularity=granularity,
                                   stats=stats, progress=progress)
        check_finite_result(merged, method, coeffs)
        result = loaded[0]
        result.load_state_dict(merged)
        shown = stats.mean_weights() if stats is not None else (
            coeffs if coeffs is not None else (plan.shown.get("weight") if plan is not None else None))
        n = len(models)
        log(f"merged {n} model{'s' if n != 1 else ''} by {method} in {time.perf_counter() - start:.1f} s "
            "(after loading them)")
        if target is None:
            return result
        record: dict[str, Any] = {
            "embedkit": __version__, "method": method, "rule": _rule(method, granularity),
            "output_name": Path(target.shown).name or target.out.name,
            "models": [{"name": display_name(ref), "weight": w, "sha256": d}
                       for ref, w, d in zip(models, shown or [None] * n, digests)],
        }
        for entry, lora_base in zip(record["models"], lora_bases):
            if lora_base is not None:  # a LoRA adapter, folded into its base's weights (the digest is of those)
                entry["lora_base"] = display_name(lora_base)
        if plan is not None:
            record["mergekit"] = {"method": plan.method, "parameters": plan.shown, "version": plan.version}
            if plan.seed is not None:
                record["mergekit"]["seed"] = plan.seed
        if method == "delta":
            record["granularity"] = granularity
            record["float_elements"] = stats.total
            record["unmoved_elements"] = stats.total - stats.moved
        if base_state is not None:
            record["base"] = {"name": display_name(str(base)), "sha256": tensors_digest(base_state)}
            if base_lora is not None:
                record["base"]["lora_base"] = display_name(base_lora)
        write_model(result, target, model_card(record), record)
    return result


# ---------------------------------------------------------------------------------------------------------
# The command


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    merge(args.models, args.method, base=args.base, weights=args.weights, lambdas=args.lambdas,
          granularity=args.granularity, params=parse_params(args.param or []), seed=args.seed, output=args.output,
          overwrite=args.overwrite, progress=args.progress)
    record = json.loads((Path(args.output).expanduser() / "merge.json").read_text(encoding="utf-8"))
    weights = ", ".join("n/a" if m["weight"] is None else f"{m['weight']:.4g}" for m in record["models"])
    n = len(args.models)
    print(f"{args.output}: {n} model{'s' if n != 1 else ''} merged by {args.method} (weights {weights})")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``embedkit merge MODEL [MODEL ...] --method M [--base B] [--weights|--lambdas|--param ...] -o OUT``."""
    p = subparsers.add_parser("merge", help="merge models that share an architecture (soups, task arithmetic, "
                                            "TIES, DARE, SLERP, ... through mergekit; delta-guided fusion)")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model folders, packaged models or Hub ids (2 or more; 1 with --base for task vectors)")
    p.add_argument("--method", choices=METHODS, default="average", metavar="METHOD",
                   help="average (Σ wᵢθᵢ), task-arithmetic (b + Σ λᵢ(θᵢ − b)), delta (weights from |θᵢ − b|), or "
                        f"mergekit's: {', '.join(MERGEKIT_METHODS)} (docs/multitask.md; default average)")
    p.add_argument("--base", help="the model every input was fine-tuned from (task-arithmetic, delta, mergekit's "
                                  "task-vector methods)")
    p.add_argument("--weights", type=_numbers, metavar="W1,W2,...",
                   help="one weight per model: average's (normalised to sum 1; default uniform) or a mergekit "
                        "method's weight (default 1 each)")
    p.add_argument("--lambdas", type=_numbers, metavar="L[,L2,...]",
                   help="task-arithmetic: one λ for all models or one per model (default 1/n)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="element",
                   help="delta: a merging weight per element (default) or per tensor")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a mergekit method's parameter, e.g. density=0.5, lambda=1, t=0.3, epsilon=0.1 (repeat "
                        "for several; a per-model one as V1,V2,...)")
    p.add_argument("--seed", type=int, help="the draws of a random mergekit method (dare_*, della*, arcee_fusion; "
                                            "default 0)")
    p.add_argument("--output", "-o", required=True, help="folder for the merged sentence-transformers model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder at OUTPUT")
    add_no_progress(p, "loading and merging the models")
    p.set_defaults(func=_run)
