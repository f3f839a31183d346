"""SimCSE losses against a direct re-computation of the paper's formula: value and gradient."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from embedkit.losses.contrastive import SimCSELoss, SupervisedSimCSELoss


class FixedEncoder(nn.Module):
    """Stands in for a SentenceTransformer: row i of the batch maps to a learnable embedding table row
    chosen by ``input_ids[:, 0]``, so views and their gradients are fully controlled."""

    def __init__(self, table: torch.Tensor, noise: torch.Tensor | None = None) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.noise = noise  # per-row additive noise standing in for dropout (row order of the merged batch)

    def forward(self, features):
        emb = self.table[features["input_ids"][:, 0]]
        if self.noise is not None:
            emb = emb + self.noise[: emb.shape[0]]
        return {"sentence_embedding": emb}


def feats(ids: list[int], width: int = 3) -> dict[str, torch.Tensor]:
    x = torch.tensor(ids).unsqueeze(1).repeat(1, width)
    return {"input_ids": x, "attention_mask": torch.ones_like(x)}


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_unsup_value_and_gradient_match_formula():
    torch.manual_seed(0)
    n, d, tau = 5, 8, 0.05
    table = torch.randn(n, d, dtype=torch.float64)
    noise = torch.randn(2 * n, d, dtype=torch.float64) * 0.5
    enc = FixedEncoder(table, noise)
    loss = SimCSELoss(enc, temperature=tau)([feats(list(range(n)))])
    loss.backward()

    # Direct formula: view 1 = table + noise[:n], view 2 = table + noise[n:].
    t = table.clone().requires_grad_(True)
    h1, h2 = t + noise[:n], t + noise[n:]
    terms = []
    for i in range(n):
        num = torch.exp(torch.cosine_similarity(h1[i], h2[i], dim=0) / tau)
        den = sum(torch.exp(torch.cosine_similarity(h1[i], h2[j], dim=0) / tau) for j in range(n))
        terms.append(-torch.log(num / den))
    expected = torch.stack(terms).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(enc.table.grad, t.grad, atol=1e-8)


@pytest.mark.parametrize("log_alpha", [0.0, math.log(2.0)])
def test_sup_value_and_gradient_match_formula(log_alpha):
    torch.manual_seed(1)
    n, d, tau = 4, 6, 0.05
    table = torch.randn(3 * n, d, dtype=torch.float64)
    enc = FixedEncoder(table)
    anchors, pos, neg = list(range(n)), list(range(n, 2 * n)), list(range(2 * n, 3 * n))
    loss = SupervisedSimCSELoss(enc, temperature=tau, hard_negative_weight=log_alpha)(
        [feats(anchors), feats(pos), feats(neg, width=5)]  # different widths: re-padded into one pass
    )
    loss.backward()

    t = table.clone().requires_grad_(True)
    terms = []
    for i in range(n):
        h = t[anchors[i]]
        num = torch.exp(torch.cosine_similarity(h, t[pos[i]], dim=0) / tau)
        den = sum(torch.exp(torch.cosine_similarity(h, t[pos[j]], dim=0) / tau) for j in range(n))
        den = den + sum(
            torch.exp(torch.cosine_similarity(h, t[neg[j]], dim=0) / tau + (log_alpha if i == j else 0.0))
            for j in range(n)
        )
        terms.append(-torch.log(num / den))
    expected = torch.stack(terms).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(enc.table.grad, t.grad, atol=1e-8)


def test_hard_negative_weight_only_touches_own_negative():
    torch.manual_seed(2)
    table = torch.randn(9, 4, dtype=torch.float64)
    batch = [feats([0, 1, 2]), feats([3, 4, 5]), feats([6, 7, 8])]
    base = SupervisedSimCSELoss(FixedEncoder(table), hard_negative_weight=0.0)(batch)
    heavier = SupervisedSimCSELoss(FixedEncoder(table), hard_negative_weight=1.0)(batch)
    # A larger weight on the own hard negative raises every denominator, hence the loss.
    assert heavier.item() > base.item()


def test_unsup_views_come_from_one_forward_pass():
    calls = []

    class Counting(FixedEncoder):
        def forward(self, features):
            calls.append(features["input_ids"].shape[0])
            return super().forward(features)

    enc = Counting(torch.randn(4, 3))
    SimCSELoss(enc)([feats([0, 1, 2, 3])])
    assert calls == [8]


# ---------------------------------------------------------------------------------------------------------
# Gathering across processes (embedkit.losses.common.gather, sentence-transformers' all_gather_with_grad)


def test_gather_in_one_process_is_the_tensor_itself():
    from embedkit.losses.common import gather

    x = torch.randn(3, 4, requires_grad=True)
    assert gather(x) is x and gather(x, enabled=False) is x


def _gather_on_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from embedkit.losses.common import gather

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather(x)
        weights = torch.arange(2 * world_size * 3, dtype=torch.float).reshape(2 * world_size, 3)
        (gathered * weights).sum().backward()  # every process computes the same loss of the global batch
        torch.save({"gathered": gathered.detach(), "grad": x.grad}, f"{out_dir}/gather-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_across_two_processes_concatenates_in_rank_order_and_sums_each_shards_gradient(tmp_path):
    import torch.multiprocessing as mp

    world_size = 2
    mp.spawn(_gather_on_rank, args=(world_size, str(tmp_path / "init"), str(tmp_path)), nprocs=world_size, join=True)
    weights = torch.arange(2 * world_size * 3, dtype=torch.float).reshape(2 * world_size, 3)
    expected = torch.cat([torch.full((2, 3), float(r + 1)) for r in range(world_size)])
    for rank in range(world_size):
        out = torch.load(tmp_path / f"gather-{rank}.pt")
        assert torch.equal(out["gathered"], expected)
        # d/dx_rank of the sum over processes of each one's loss: the shard's weights, once per process.
        assert torch.equal(out["grad"], world_size * weights[2 * rank : 2 * rank + 2])
