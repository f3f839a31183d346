"""Every method's loss under a scaled backward (what fp16's GradScaler does: ``(loss * S).backward()``), with and
without GradCache (``training.mini_batch_size``): the encoder's gradients *and* those of parameters the loss owns
(SimCSE's training-only MLP head, Text2Token's vocabulary head and projection) are S times the plain loss's.

With GradCache the loss is back-propagated to the embeddings during the forward pass; a parameter the loss
itself owns got its gradient there, never scaled by the outer backward's ``grad_output``, so the GradScaler
divided it by S (the head trained 1/S as fast as the encoder under fp16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_objective import MEAN, build, recipe_file

S = 1024.0

# Every method's loss, with the loss-owned modules it can have: cls pooling with SimCSE's training-only MLP head
# (model.mlp_only_train) where the method builds one; Text2Token's vocabulary head (and, with infonce_weight,
# the MLP over the InfoNCE views). Contriever and CoSENT own no trainable module.
METHODS = ["simcse-unsup", "simcse-sup", "esimcse", "contriever", "debcse", "text2token", "cosent", "contrastive",
           "ccp"]
NO_HEAD = {"contriever", "cosent"}
# A composed objective on top (Matryoshka needs the full width through no head: mean pooling; extra terms).
COMPOSED = {"matryoshka_dims": [32, 16], "matryoshka_weights": [1.0, 0.5]}
TERMS = {"terms": [{"name": "uniformity", "weight": 0.3}, {"name": "alignment", "weight": 0.2},
                   {"name": "cwcl", "weight": 0.5, "floor": 0.2}]}


def grads_after(recipe_path: Path, scale: float) -> tuple[float, dict[str, torch.Tensor], set[str]]:
    """(loss, every gradient of the loss module's parameters, the names of the loss-owned ones) after
    ``(loss * scale).backward()`` on the recipe's first batch."""
    loss, features, labels = build(recipe_path)
    out = loss(features, labels)
    total = torch.stack(list(out.values())).sum() if isinstance(out, dict) else out
    (total * scale).backward()
    grads = {n: p.grad.detach().clone() for n, p in loss.named_parameters() if p.grad is not None}
    owned = {n for n, p in loss.named_parameters() if p.requires_grad and not n.startswith("model.")}
    return float(total.detach()), grads, owned


def assert_scaled(plain: dict[str, torch.Tensor], scaled: dict[str, torch.Tensor], owned: set[str], what: str) -> None:
    """The encoder's gradients and the loss-owned ones, each group as one vector, are S × the plain ones within
    1e-5 relative (per group: a single tensor whose true gradient is 0, e.g. an attention key bias, is noise)."""
    assert scaled.keys() == plain.keys(), f"{what}: {sorted(set(plain) ^ set(scaled))[:4]}"
    for group, names in (("encoder", sorted(set(plain) - owned)), ("loss-owned", sorted(set(plain) & owned))):
        if not names:
            continue
        ref = torch.cat([plain[n].double().flatten() for n in names]) * S
        got = torch.cat([scaled[n].double().flatten() for n in names])
        err = float((got - ref).norm() / ref.norm())
        worst = max(names, key=lambda n: float((scaled[n].double() - plain[n].double() * S).norm()))
        assert err <= 1e-5, (f"{what}: {group} gradients ({len(names)} tensors) differ from the plain gradient × {S:g} "
                             f"by {err:.3g} relative (most in {worst}: ratio "
                             f"{float(scaled[worst].double().norm() / (plain[worst].double().norm() * S)):.4g})")


def check(tmp: Path, model_path: str, method: str, model: dict | None, training: dict | None = None,
          objective: dict | None = None) -> None:
    ref_loss, ref, owned = grads_after(recipe_file(tmp / "ref", model_path, method, training, model, objective), 1.0)
    assert ref_loss > 0 and len(ref) > 10
    if model is None and method not in NO_HEAD:
        assert owned & set(ref), f"{method}: the loss owns no trainable parameter with a gradient: says nothing"
    for mini in (None, 5):
        extra = {**(training or {}), **({"mini_batch_size": mini} if mini else {})}
        loss, got, _ = grads_after(recipe_file(tmp / f"s{mini}", model_path, method, extra, model, objective), S)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert_scaled(ref, got, owned, f"{method}, mini_batch_size {mini}")


@pytest.mark.parametrize("method", METHODS)
def test_scaled_backward_scales_every_gradient(method, tmp_path, spread_model_path):
    """The method's own loss, with its loss-owned modules (cls pooling + training-only head where it has one)."""
    model = MEAN if method in NO_HEAD else None
    if method == "text2token":
        model = {"pooling": "cls", "mlp_only_train": True}  # the vocabulary head + the InfoNCE views' MLP
    check(tmp_path, spread_model_path, method, model)


@pytest.mark.parametrize("method", METHODS)
def test_scaled_backward_of_a_composed_objective(method, tmp_path, spread_model_path):
    """Matryoshka dimensions and extra terms composed onto the method's loss (text2token: terms only, its head
    reads the full width; cosent: no pair terms)."""
    training = {} if method == "text2token" else COMPOSED
    objective = {"terms": TERMS["terms"][:1]} if method == "cosent" else TERMS
    check(tmp_path, spread_model_path, method, MEAN, training, objective)
