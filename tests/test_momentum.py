"""The momentum encoder, the key queue and the MoCo loss, on toy encoders (fast, no tokenizer)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from embedkit.losses.momentum import KeyQueue, MoCoLoss, MomentumEncoder, MomentumUpdate, reinitialise
from embedkit.methods.esimcse.loss import ESimCSELoss


class ToyEncoder(nn.Module):
    """Embedding bag + linear, with dropout, returning the sentence-transformers output dict."""

    def __init__(self, vocab: int = 50, dim: int = 8, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, features):
        h = self.drop(self.emb(features["input_ids"]))
        mask = features["attention_mask"].unsqueeze(-1).float()
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)
        return {"sentence_embedding": self.proj(self.drop(pooled))}


def toy_batch(n: int = 6, width: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, width), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_queue_is_fifo_with_fixed_size():
    q = KeyQueue(5, 2)
    assert q.negatives().shape == (0, 2)
    rows = torch.arange(16, dtype=torch.float).view(8, 2)  # key i = (2i, 2i+1)
    q.enqueue(rows[:3])
    assert q.negatives().shape == (3, 2) and int(q.count) == 3
    assert torch.equal(q.ordered(), rows[:3])
    q.enqueue(rows[3:5])
    assert torch.equal(q.ordered(), rows[:5]) and int(q.ptr) == 0
    q.enqueue(rows[5:8])  # the three oldest leave
    assert torch.equal(q.ordered(), rows[3:8])
    assert q.negatives().shape == (5, 2) and int(q.count) == 5 and int(q.ptr) == 3
    big = torch.arange(14, dtype=torch.float).view(7, 2) + 100
    q.enqueue(big)  # more keys than the queue holds: keep the newest five
    assert torch.equal(q.ordered(), big[2:])


def test_random_queue_starts_full_of_unit_vectors():
    q = KeyQueue(10, 4, init="random", seed=1)
    assert int(q.count) == 10
    assert torch.allclose(q.keys.norm(dim=-1), torch.ones(10))
    assert torch.equal(q.keys, KeyQueue(10, 4, init="random", seed=1).keys)
    with pytest.raises(ValueError):
        KeyQueue(0, 4)


def test_ema_arithmetic_on_a_toy_model():
    live = nn.Linear(3, 2)
    enc = MomentumEncoder(live, momentum=0.9)
    k0 = {n: p.clone() for n, p in enc.encoder.named_parameters()}
    assert all(torch.equal(k0[n], p) for n, p in live.named_parameters()), "starts as a copy"
    with torch.no_grad():
        live.weight.fill_(1.0)
        live.bias.fill_(-2.0)
    # through the trainer callback, which reads the (possibly replaced) model from the loss
    callback = MomentumUpdate(enc, SimpleNamespace(model=live))
    callback.on_optimizer_step(None, None, None)
    for name, p in enc.encoder.named_parameters():
        q = dict(live.named_parameters())[name]
        assert torch.allclose(p, 0.9 * k0[name] + 0.1 * q, atol=1e-7)
    k1 = {n: p.clone() for n, p in enc.encoder.named_parameters()}
    enc.update(live)
    for name, p in enc.encoder.named_parameters():
        assert torch.allclose(p, 0.9 * k1[name] + 0.1 * dict(live.named_parameters())[name], atol=1e-7)
    # momentum 1 never moves, momentum 0 copies
    frozen = MomentumEncoder(nn.Linear(3, 2), momentum=1.0)
    before = frozen.encoder.weight.clone()
    frozen.update(live)
    assert torch.equal(frozen.encoder.weight, before)
    copier = MomentumEncoder(nn.Linear(3, 2), momentum=0.0)
    copier.update(live)
    assert torch.equal(copier.encoder.weight, live.weight)


def test_ema_follows_a_wrapped_model():
    live = nn.Linear(3, 2)
    enc = MomentumEncoder(live, momentum=0.0)
    wrapper = nn.Module()
    wrapper.module = live  # like DistributedDataParallel
    with torch.no_grad():
        live.weight.fill_(3.0)
    enc.update(wrapper)
    assert torch.equal(enc.encoder.weight, live.weight)


def test_random_init_reinitialises_the_copy():
    live = ToyEncoder()
    enc = MomentumEncoder(live, init="random", seed=5)
    assert not torch.equal(enc.encoder.emb.weight, live.emb.weight)
    assert not torch.equal(enc.encoder.proj.weight, live.proj.weight)
    again = ToyEncoder()
    reinitialise(again, 5)
    assert torch.equal(again.emb.weight, enc.encoder.emb.weight), "seeded"


def test_keys_are_computed_with_dropout_off_and_without_gradient():
    live = ToyEncoder(dropout=0.5)
    enc = MomentumEncoder(live)
    live.train()
    enc.train()  # a mode switch from the trainer must not turn dropout on
    feats = toy_batch()
    k1, k2 = enc(feats), enc(feats)
    assert torch.equal(k1, k2)
    assert not k1.requires_grad
    live.eval()
    assert torch.allclose(k1, live(feats)["sentence_embedding"], atol=1e-6)
    live.train()
    assert not torch.allclose(live(feats)["sentence_embedding"], live(feats)["sentence_embedding"])
    head = nn.Linear(8, 8)
    assert torch.allclose(enc(feats, head), head(k1), atol=1e-6)
    assert not enc(feats, head).requires_grad


def esimcse_toy(dropout: float = 0.1, queue: int = 12):
    model = ToyEncoder(dropout=dropout)
    enc = MomentumEncoder(model, 0.9)
    return ESimCSELoss(model, 0.05, momentum_encoder=enc, queue=KeyQueue(queue, 8)), enc


def test_no_gradient_reaches_the_momentum_encoder_or_the_queue():
    loss_fn, enc = esimcse_toy()
    trainable = [n for n, p in loss_fn.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith(("momentum_encoder", "queue")) for n in trainable)
    assert all(not n.startswith("model") for n, _ in loss_fn.named_buffers())
    for step in range(3):  # the queue fills, then its keys feed the logits
        loss = loss_fn([toy_batch(seed=step)])
        loss.backward()
    assert int(loss_fn.queue.count) == 12
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert not loss_fn.queue.keys.requires_grad and loss_fn.queue.keys.grad is None
    assert loss_fn.model.emb.weight.grad is not None


def test_esimcse_logits_include_the_queue():
    loss_fn, enc = esimcse_toy(dropout=0.0, queue=4)
    loss_fn.queue.enqueue(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))
    feats = toy_batch(n=3)
    negatives = loss_fn.queue.negatives()
    loss = loss_fn([feats])
    z = loss_fn.model(feats)["sentence_embedding"]
    zn = F.normalize(z, dim=-1)
    logits = torch.cat([zn @ zn.T, zn @ F.normalize(negatives, dim=-1).T], dim=1) / 0.05
    assert torch.allclose(loss, F.cross_entropy(logits, torch.arange(3)), atol=1e-5)
    # after the step the keys of the original sentences (momentum encoder) are at the queue's end
    assert torch.allclose(loss_fn.queue.ordered()[-3:], enc(feats), atol=1e-6)
    # no enqueue outside training
    loss_fn.model.eval()
    before = loss_fn.queue.keys.clone()
    loss_fn([feats])
    assert torch.equal(loss_fn.queue.keys, before)


def test_moco_loss_arithmetic_dot_product_and_cosine():
    model = ToyEncoder(dropout=0.0)
    enc = MomentumEncoder(model, 0.9)
    queue = KeyQueue(5, 8, init="random", seed=0)
    feats = toy_batch(n=4)
    for normalize in (False, True):
        loss_fn = MoCoLoss(model, enc, queue, views=None, temperature=0.05, normalize=normalize)
        negatives = queue.negatives()
        loss = loss_fn([feats])
        q = model(feats)["sentence_embedding"]
        k = enc(feats)
        if normalize:
            q, k, negatives = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(negatives, dim=-1)
        logits = torch.cat([(q * k).sum(-1, keepdim=True), q @ negatives.T], dim=1) / 0.05
        assert torch.allclose(loss, F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)), rtol=1e-5)
        stored = queue.ordered()[-4:]  # the batch's keys (unit length when normalize=True)
        assert torch.allclose(F.normalize(stored, dim=-1), F.normalize(enc(feats), dim=-1), atol=1e-6)
        loss.backward()
        assert all(p.grad is None for p in enc.parameters())


def test_state_dict_holds_queue_and_momentum_weights_but_no_model_copy_under_model():
    loss_fn, _ = esimcse_toy()
    loss_fn([toy_batch()]).backward()
    state = {k for k in loss_fn.state_dict() if not k.startswith("model.")}
    assert {"queue.keys", "queue.ptr", "queue.count"} <= state
    assert any(k.startswith("momentum_encoder.encoder.") for k in state)
    fresh, _ = esimcse_toy()
    fresh.load_state_dict(loss_fn.state_dict())
    assert torch.equal(fresh.queue.keys, loss_fn.queue.keys) and int(fresh.queue.ptr) == int(loss_fn.queue.ptr)


def _enqueue_on_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        q = KeyQueue(6, 2)
        for step in range(3):  # each process enqueues its own two keys per step
            q.enqueue(torch.full((2, 2), float(10 * step + rank)))
        torch.save({k: v for k, v in q.state_dict().items()}, f"{out_dir}/queue-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_queues_stay_identical_across_processes(tmp_path):
    """Two gloo processes enqueue different keys; each queue holds the keys of both, in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(_enqueue_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    q0, q1 = (torch.load(tmp_path / f"queue-{r}.pt") for r in range(2))
    assert all(torch.equal(q0[k], q1[k]) for k in q0)
    # steps 1 and 2 fill the 6 rows after the oldest step-0 keys leave: (rank 0, rank 0, rank 1, rank 1) per step
    queue = KeyQueue(6, 2)
    queue.load_state_dict(q0)
    expected = torch.tensor([0, 0, 1, 1, 10, 10, 11, 11, 20, 20, 21, 21], dtype=torch.float)[-6:]
    assert torch.equal(queue.ordered()[:, 0], expected) and int(queue.count) == 6
