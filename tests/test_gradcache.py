"""The GradCache path (training.mini_batch_size) gives the plain path's loss and gradients."""

from __future__ import annotations

import pytest
import torch
from tiny_model import training_model

from embedkit.losses.common import ProjectionHead
from embedkit.losses.contrastive import SimCSELoss, SupervisedSimCSELoss
from embedkit.methods.contrastive.loss import ContrastiveLoss


@pytest.fixture()
def model(tiny_model_path):
    return training_model(tiny_model_path, "cls")


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def run(loss_fn, model, features):
    model.zero_grad()
    for p in loss_fn.parameters():
        p.grad = None
    loss = loss_fn(features)
    loss.backward()
    return loss.item(), grads(loss_fn)


def test_unsup_cached_equals_plain(model):
    texts = [f"sentence number {i} about {'abc'[i % 3]}" for i in range(12)]
    features = [model.tokenize(texts)]
    torch.manual_seed(1)
    head = ProjectionHead(model.get_embedding_dimension())
    plain = run(SimCSELoss(model, head=head), model, features)
    cached = run(SimCSELoss(model, head=head, mini_batch_size=5), model, features)
    assert cached[0] == pytest.approx(plain[0], abs=1e-5)
    assert plain[1].keys() == cached[1].keys() and len(plain[1]) > 10
    for name, g in plain[1].items():
        torch.testing.assert_close(cached[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_sup_cached_equals_plain(model):
    cols = [[f"{kind} {i} text" for i in range(10)] for kind in ("anchor", "pos", "neg")]
    features = [model.tokenize(c) for c in cols]
    plain = run(SupervisedSimCSELoss(model, hard_negative_weight=0.5), model, features)
    cached = run(SupervisedSimCSELoss(model, hard_negative_weight=0.5, mini_batch_size=3), model, features)
    assert cached[0] == pytest.approx(plain[0], abs=1e-5)
    for name, g in plain[1].items():
        torch.testing.assert_close(cached[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("symmetric", [False, True])
def test_contrastive_cached_equals_plain(model, symmetric):
    """Two negative columns, the own-negative offset and (optionally) the symmetric direction."""
    cols = [[f"{kind} {i} text" for i in range(10)] for kind in ("query", "passage", "neg one", "neg two")]
    features = [model.tokenize(c) for c in cols]
    plain = run(ContrastiveLoss(model, hard_negative_weight=0.5, symmetric=symmetric), model, features)
    cached = run(ContrastiveLoss(model, hard_negative_weight=0.5, symmetric=symmetric, mini_batch_size=3), model,
                 features)
    assert plain[0] > 0 and cached[0] == pytest.approx(plain[0], abs=1e-5)
    assert len(plain[1]) > 10
    for name, g in plain[1].items():
        torch.testing.assert_close(cached[1][name], g, atol=1e-5, rtol=1e-4, msg=name)
