"""The InfoNCE loss's hardness profile (Wang & Liu 2021): hardness@k is the share of the gradient on the negatives
that the k hardest take, checked on a hand example, against autograd's gradient, and in a training run's log."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from embedkit.losses.contrastive import HardnessMeter, hardness_profile, info_nce


def test_hardness_on_a_hand_example():
    # row 0: positive at column 0 (logit 2), negatives with logits 1, 0, 0; row 1: positive at column 1,
    # its negatives all at logit 0 (each takes 1/3).
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    shares = hardness_profile(logits, torch.tensor([0, 1]), ks=(1, 2, 5))
    e = math.e
    expected = torch.tensor([[e / (e + 2), (e + 1) / (e + 2), 1.0], [1 / 3, 2 / 3, 1.0]])
    torch.testing.assert_close(shares, expected)
    # a masked (false-negative) cell is no negative: row 0 without its logit-1 negative
    masked = logits.masked_fill(torch.tensor([[False, True, False, False], [False] * 4]), float("-inf"))
    torch.testing.assert_close(hardness_profile(masked, torch.tensor([0, 1]), ks=(1,))[0], torch.tensor([0.5]))


def test_hardness_is_the_share_of_autograd_gradient_on_the_negatives():
    torch.manual_seed(0)
    a, p = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(6, 8), dim=1)
    tau = 0.05
    sims = (a @ p.T).requires_grad_(True)
    F.cross_entropy(sims / tau, torch.arange(6)).backward()
    grad = sims.grad * 6 * tau  # ∂ℓ_i/∂s_ij = p_ij / τ for a negative (the mean over 6 rows undone)
    neg = grad.clone()
    neg[torch.arange(6), torch.arange(6)] = 0  # the positive's gradient is p_ii − 1: not a negative's
    top2 = neg.topk(2, dim=1).values.sum(dim=1) / neg.sum(dim=1)
    torch.testing.assert_close(hardness_profile(sims.detach() / tau, torch.arange(6), ks=(2,))[:, 0], top2)


def test_info_nce_records_hardness_and_the_meter_averages_over_rows():
    torch.manual_seed(1)
    a, p = torch.randn(4, 8), torch.randn(4, 8)
    meter = HardnessMeter(ks=(1, 3))
    plain = info_nce(a, p, 0.1)
    assert torch.equal(info_nce(a, p, 0.1, hardness=meter), plain), "recording changes nothing in the loss"
    info_nce(a, p, 0.1, hardness=meter)
    sums, rows = meter.take()
    assert rows == 8 and meter.take() == ([0.0, 0.0], 0)
    logits = F.normalize(a, dim=1) @ F.normalize(p, dim=1).T / 0.1
    each = hardness_profile(logits, torch.arange(4), ks=(1, 3))
    assert sums == pytest.approx((2 * each.sum(dim=0)).tolist())
    assert sums[1] / rows == pytest.approx(1.0), "3 negatives: the top 3 take all of it"


def test_training_logs_hardness(tmp_path, tiny_model_path, sentences_file):
    import embedkit

    recipe = {
        "model": {"name": tiny_model_path, "pooling": "cls", "max_seq_length": 16},
        "data": {"train": {"path": str(sentences_file)}, "dev": None},
        "method": {"name": "simcse-unsup", "temperature": 0.05},
        "training": {"batch_size": 8, "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1, "report_to": []},
        "eval": {"suite": "none", "before": False},
        "output": {"dir": str(tmp_path / "out")},
    }
    history = embedkit.train(recipe)["train"]["log_history"]
    logged = [e for e in history if "loss" in e]
    assert len(logged) == 2
    for entry in logged:  # 7 in-batch negatives per anchor: between the even share k/7 and all of it
        assert 1 / 7 - 1e-6 <= entry["hardness@1"] <= 1 and 5 / 7 - 1e-6 <= entry["hardness@5"] <= 1
