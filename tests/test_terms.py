"""The two objective terms against a direct computation of their formulas (value and gradient), and the
evaluation metrics sharing the training formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedkit.losses.alignment_uniformity import alignment, uniformity
from embedkit.losses.contrastive import info_nce
from embedkit.losses.cwcl import cwcl_loss, cwcl_weights


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def check(fn, direct, *inputs):
    """Same value and same gradient for every input, by autograd through each."""
    got, want = fn(*inputs), direct(*inputs)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10, abs=1e-12)
    g1 = torch.autograd.grad(got, inputs)
    g2 = torch.autograd.grad(want, inputs)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        assert b.abs().max() > 0


@pytest.mark.parametrize("alpha", [2.0, 3.0, 1.5])
def test_alignment_is_the_formula(alpha):
    x, y = leaves((7, 5), (7, 5))

    def direct(x, y):  # E ‖f(x) − f(y)‖₂^α, row by row
        return sum(((unit(x)[i] - unit(y)[i]) ** 2).sum() ** (alpha / 2) for i in range(7)) / 7

    check(lambda a, b: alignment(a, b, alpha), direct, x, y)


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_is_the_formula(t):
    (x,) = leaves((6, 4), seed=1)

    def direct(x):  # log E_{i<j} exp(−t ‖f(x_i) − f(x_j)‖₂²)
        u = unit(x)
        terms = [torch.exp(-t * ((u[i] - u[j]) ** 2).sum()) for i in range(6) for j in range(i + 1, 6)]
        return torch.log(sum(terms) / len(terms))

    check(lambda a: uniformity(a, t), direct, x)


def test_uniformity_of_duplicates_has_finite_gradient():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    uniformity(x).backward()
    assert torch.isfinite(x.grad).all()
    a = torch.tensor([[1.0, 2.0]], requires_grad=True)
    alignment(a, a.detach().clone()).backward()
    assert torch.isfinite(a.grad).all() and float(alignment(a, a)) == 0.0


def test_geometry_metrics_use_the_training_formula():
    """The evaluation metrics are the loss functions (float64), equal to the numpy formulas."""
    from embedkit.evaluation import geometry

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    v = y / np.linalg.norm(y, axis=1, keepdims=True)
    assert geometry.alignment(x, y) == pytest.approx(float((np.linalg.norm(u - v, axis=1) ** 2).mean()), rel=1e-12)
    i, j = np.triu_indices(20, k=1)
    sq = ((u[i] - u[j]) ** 2).sum(1)
    assert geometry.uniformity(x) == pytest.approx(float(np.log(np.mean(np.exp(-2 * sq)))), rel=1e-12)
    assert geometry.alignment(x, y) == pytest.approx(float(alignment(torch.tensor(x), torch.tensor(y))), rel=1e-15)


def test_cwcl_weights_are_the_stated_rule():
    s = torch.tensor([[1.0, 0.6, -0.2, 0.3],
                      [0.6, 0.8, 0.9, 0.1],
                      [0.2, 0.1, 0.4, 0.3]])
    for floor in (0.0, 0.25):
        w = cwcl_weights(s, floor=floor)
        for i in range(3):
            raw = [1.0 if j == i else min(1.0, max(0.0, (float(s[i, j]) - floor) / (float(s[i, i]) - floor)))
                   for j in range(4)]
            torch.testing.assert_close(w[i], torch.tensor(raw) / sum(raw))
    # offset: anchor i's own positive at column offset + i (another process's rows first)
    w = cwcl_weights(s[:, [3, 0, 1, 2]], offset=1, floor=0.0)
    torch.testing.assert_close(w, cwcl_weights(s, floor=0.0)[:, [3, 0, 1, 2]])
    # an own cosine at or under the floor: the row is one-hot
    assert cwcl_weights(s, floor=0.5)[2].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_cwcl_loss_is_the_formula():
    a, p = leaves((5, 6), (5, 6), seed=2)
    w = cwcl_weights(unit(torch.randn(5, 6, dtype=torch.float64)) @ unit(torch.randn(5, 6, dtype=torch.float64)).T
                     + torch.eye(5, dtype=torch.float64))
    tau = 0.1

    def direct(a, p):  # −(1/n) Σ_i Σ_j w_ij log softmax_j(cos(a_i, p_j)/τ)
        cos = unit(a) @ unit(p).T / tau
        total = 0
        for i in range(5):
            norm = torch.log(sum(torch.exp(cos[i, k]) for k in range(5)))
            total = total - sum(w[i, j] * (cos[i, j] - norm) for j in range(5))
        return total / 5

    check(lambda x, y: cwcl_loss(x, y, w, tau), direct, a, p)
    assert (w.sum(1) - 1).abs().max() < 1e-12 and math.isclose(float(w[0, 0]), float(w[0].max()))


def test_cwcl_with_one_hot_weights_is_infonce():
    a, p = leaves((6, 4), (6, 4), seed=3)
    got = cwcl_loss(a, p, torch.eye(6, dtype=torch.float64), 0.05)
    assert float(got) == pytest.approx(float(info_nce(a, p, 0.05)), rel=1e-12)


def test_cwcl_term_teacher_is_frozen_and_not_saved(tiny_model_path):
    from embedkit.losses.contrastive import SimCSELoss
    from embedkit.losses.cwcl import CWCLTerm
    from embedkit.losses.objective import ViewBatch
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection

    model = build_model(ModelSection(name=tiny_model_path, pooling="mean", dropout=0.0, max_seq_length=16))
    term = CWCLTerm(model, floor=0.0)
    loss = SimCSELoss(model).configure(terms=[term])
    assert not any(k.startswith("terms.") for k in loss.state_dict())
    assert all(not p.requires_grad for p in term.teacher.parameters()) and not term.teacher.training
    before = {k: v.clone() for k, v in term.teacher.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    assert all(torch.equal(v, term.teacher.state_dict()[k]) for k, v in before.items())
    texts = ["a cat sat", "a cat sat", "the stock market fell"]
    f = model.tokenize(texts)
    batch = ViewBatch([f, f], anchor_features=f, positive_features=f)
    term.prepare(batch, loss)
    w = batch.extra["cwcl_weights"]
    assert w.shape == (3, 3) and torch.allclose(w.sum(1), torch.ones(3))
    assert float(w[0, 1]) == pytest.approx(float(w[0, 0]), rel=1e-5)  # a duplicate is a target, not a negative
