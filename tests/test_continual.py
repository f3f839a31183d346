"""Fine-tuning without forgetting (docs/continual.md): the ``distill`` term against hand computations of its three
modes (value and gradient), the replay stream (rows a step from each source, seeded, split over processes),
the frozen teacher (never trained, never in the optimizer, never saved), the refusals, GradCache, kill/resume and
torchrun equality, and the model card."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from _mp_helpers import results, run_in_process, write_recipe, write_scored_pairs

from embedkit.errors import RecipeError
from embedkit.losses.distill import DistillTerm, ReplayRows, distill_cosine, distill_kl, distill_mse

MEAN = {"pooling": "mean", "mlp_only_train": False, "dropout": 0.0}


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def check(fn, direct, *inputs):
    got, want = fn(*inputs), direct(*inputs)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10, abs=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        assert b.abs().max() > 0
    return got


# ---- the three modes against their formulas ---------------------------------------------------------------


def test_cosine_mode_value_and_gradient_by_hand():
    s, t = leaves((5, 4), (5, 4))
    t = t.detach()

    def direct(s):  # (1/m) Σ_i (1 − s_i·t_i / (|s_i| |t_i|)), row by row
        return sum(1 - (s[i] @ t[i]) / (s[i].norm() * t[i].norm()) for i in range(5)) / 5

    check(lambda s: distill_cosine(s, t), direct, s)
    # the closed form of the gradient: −(1/m) (t̂_i − cos_i ŝ_i) / |s_i|
    (grad,) = torch.autograd.grad(distill_cosine(s, t), s)
    sh, th = s.detach() / s.detach().norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    cos = (sh * th).sum(1, keepdim=True)
    torch.testing.assert_close(grad, -(th - cos * sh) / s.detach().norm(dim=1, keepdim=True) / 5)
    # a student equal to its teacher (up to scale) has loss 0
    assert float(distill_cosine(3 * t, t)) == pytest.approx(0.0, abs=1e-12)


def test_mse_mode_value_and_gradient_by_hand():
    s, t = leaves((5, 4), (5, 4), seed=1)
    t = t.detach()

    def direct(s):  # (1/(m·d)) Σ_i Σ_k (s_ik − t_ik)²
        return sum((s[i, k] - t[i, k]) ** 2 for i in range(5) for k in range(4)) / 20

    check(lambda s: distill_mse(s, t), direct, s)
    (grad,) = torch.autograd.grad(distill_mse(s, t), s)
    torch.testing.assert_close(grad, 2 * (s.detach() - t) / 20)


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_kl_mode_value_and_gradient_by_hand(tau):
    s, t = leaves((6, 4), (6, 4), seed=2)
    t = t.detach()

    def cos(a, b):
        return (a @ b) / (a.norm() * b.norm())

    def direct(s):  # (1/m) Σ_i Σ_{j≠i} P_ij log(P_ij / Q_ij), P/Q the softmax over j ≠ i of cos/τ
        total = 0
        for i in range(6):
            others = [j for j in range(6) if j != i]
            zt = [math.exp(float(cos(t[i], t[j])) / tau) for j in others]
            zs = torch.stack([torch.exp(cos(s[i], s[j]) / tau) for j in others])
            p = [z / sum(zt) for z in zt]
            q = zs / zs.sum()
            total = total + sum(p[k] * (math.log(p[k]) - torch.log(q[k])) for k in range(5))
        return total / 6

    check(lambda s: distill_kl(s, t, s, t, 0, tau), direct, s)
    # the same student geometry (a rotation of the teacher's embeddings) costs nothing
    rot = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))[0]
    assert float(distill_kl(t @ rot, t, t @ rot, t, 0, tau)) == pytest.approx(0.0, abs=1e-10)


def test_kl_mode_rows_of_rank_one_of_two_average_to_the_one_process_loss():
    """Simulated rank 0 and rank 1 of 2: each process's rows against the gathered texts, own column at offset;
    the mean of the two losses is the loss of one process holding all rows (DDP averages the gradients)."""
    s, t = leaves((8, 4), (8, 4), seed=4)
    t = t.detach()
    whole = distill_kl(s, t, s, t, 0, 0.1)
    halves = [distill_kl(s[r * 4:(r + 1) * 4], t[r * 4:(r + 1) * 4], s, t, r * 4, 0.1) for r in range(2)]
    assert float((halves[0] + halves[1]).detach() / 2) == pytest.approx(float(whole.detach()), rel=1e-12)


def test_the_term_reads_only_the_replayed_views():
    """Through the term: the replayed views (two columns, concatenated) against the teacher's embeddings; the
    method's own views do not enter it."""
    (a, b), own = leaves((3, 4), (3, 4), seed=5), leaves((5, 4), seed=6)[0]
    teacher = torch.randn(6, 4, dtype=torch.float64)
    term = DistillTerm(torch.nn.Linear(2, 2), mode="cosine")
    batch = SimpleNamespace(extra={"replay_views": [a, b], "replay_teacher": teacher})
    got = term([own], batch)
    assert float(got) == pytest.approx(float(distill_cosine(torch.cat([a, b]), teacher)), rel=1e-12)
    assert torch.autograd.grad(got, own, allow_unused=True)[0] is None


# ---- the replay stream ------------------------------------------------------------------------------------


def test_replay_stream_is_seeded_covers_every_row_and_splits_over_processes():
    cols = [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(10)]]
    one = ReplayRows(cols, 4, seed=3)
    draws = [one.indices(t) for t in range(5)]  # 20 positions: two passes over 10 rows
    assert all(len(d) == 4 for d in draws)
    flat = [i for d in draws for i in d]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:], "each pass draws a fresh order"
    assert draws == [ReplayRows(cols, 4, seed=3).indices(t) for t in range(5)], "a pure function of seed and step"
    assert draws != [ReplayRows(cols, 4, seed=4).indices(t) for t in range(5)]
    two = [ReplayRows(cols, 4, seed=3, world_size=2, rank=r) for r in range(2)]
    for t in range(5):
        assert two[0].indices(t) + two[1].indices(t) == draws[t]
    assert one.texts(1) == [[f"a{i}" for i in draws[1]], [f"b{i}" for i in draws[1]]]
    with pytest.raises(ValueError, match="split evenly"):
        ReplayRows(cols, 3, seed=0, world_size=2)


def replay_recipe(tmp: Path, model_path: str, method: str = "contrastive", share: float = 0.2,
                  objective: dict | None = None, training: dict | None = None, model: dict | None = None,
                  replay: dict | None = None, name: str = "recipe.yaml", out: str = "out") -> Path:
    pairs = write_scored_pairs(tmp)
    objective = objective or {"terms": [{"name": "distill", "weight": 1.0}]}
    replay = {"path": str(pairs), "columns": ["s1", "s2"], "share": share, **(replay or {})}
    return write_recipe(tmp, model_path, method, tmp / out, {"batch_size": 8, **(training or {})},
                        {**MEAN, **(model or {})}, None, name=name, objective=objective, replay=replay)


def test_each_step_holds_its_new_rows_and_its_share_of_replayed_rows(tmp_path, spread_model_path, monkeypatch):
    """share 0.2 beside a batch of 8 new rows: round(8 · 0.2 / 0.8) = 2 replayed pairs a step (4 texts), the
    stream's rows for that step; the method's loss sees the 8 new rows only."""
    from _mp_helpers import run_in_process

    from embedkit.losses.contrastive import InfoNCELoss

    seen: list[dict] = []
    prepare, score = DistillTerm.prepare, InfoNCELoss.score

    def spy_prepare(self, batch, loss):
        prepare(self, batch, loss)
        seen.append({"step": self.step, "new": batch.columns[0]["input_ids"].shape[0],
                     "replayed": [c["input_ids"].shape[0] for c in batch.extra["replay_columns"]],
                     "rows": self.replay.indices(self.step)})

    def spy_score(self, views, batch):
        seen[-1]["scored"] = [v.shape[0] for v in views]
        return score(self, views, batch)

    monkeypatch.setattr(DistillTerm, "prepare", spy_prepare)
    monkeypatch.setattr(InfoNCELoss, "score", spy_score)
    recipe = replay_recipe(tmp_path, spread_model_path, training={"max_steps": 5})
    run_in_process(recipe)
    assert [s["step"] for s in seen] == [0, 1, 2, 3, 4]
    stream = ReplayRows([[""] * 48], 2, seed=7)  # the recipe's training.seed, 48 rows
    for s in seen:
        assert s["new"] == 8 and s["replayed"] == [2, 2]  # two columns of 2 rows
        assert s["scored"] == [8, 8, 8, 8]  # query, passage, two negatives: no replayed view
        assert s["rows"] == stream.indices(s["step"])
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["train"]["replay"]["rows_per_step"] == 2 and res["train"]["replay"]["rows"] == 48
    history = [h for h in res["train"]["log_history"] if "loss" in h]
    assert all("loss_distill" in h and "loss_main" in h for h in history)
    # the card says what it is
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "Replay and distillation" in card and "`pairs.csv` replayed in every step (2 rows a step" in card
    assert "the starting model, frozen" in card and "mode `cosine`" in card


# ---- the frozen teacher -----------------------------------------------------------------------------------


def test_teacher_is_frozen_not_in_the_optimizer_and_not_saved(tmp_path, spread_model_path):
    from _mp_helpers import final_weights, run_in_process

    recipe = replay_recipe(tmp_path, spread_model_path, training={"max_steps": 3},
                           model={"dropout": 0.1})
    run_in_process(recipe)
    out = tmp_path / "out"
    start, end = final_weights(Path(spread_model_path)), final_weights(out)
    assert end.keys() == start.keys(), "the output model holds the encoder only, no teacher copy"
    assert any(not torch.equal(start[k], end[k]) for k in start), "the student trained"
    ckpt = sorted(out.glob("checkpoints/checkpoint-*"))[-1]
    optim = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    in_optimizer = sum(len(g["params"]) for g in optim["param_groups"])
    assert in_optimizer == len(start), "the optimizer holds the encoder's parameters only"
    assert not (ckpt / "method_state.pt").exists() or not any(
        "teacher" in k for k in torch.load(ckpt / "method_state.pt", weights_only=True))

    # The term built as training builds it: teacher frozen, in eval mode, outside parameters and state dict, and
    # unchanged by a training step of the student.
    from embedkit.modeling import build_model
    from embedkit.validate import load_recipe

    r = load_recipe(recipe)
    student = build_model(r.model)
    term = DistillTerm(student)
    assert not term.teacher.training and all(not p.requires_grad for p in term.teacher.parameters())
    assert list(term.parameters()) == [] and list(term.state_dict()) == []
    before = {k: v.clone() for k, v in term.teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in term.teacher.state_dict().items()), "a copy, not the student"


# ---- GradCache and the method's loss ----------------------------------------------------------------------


def build(recipe_path: Path, perturb: float = 0.0):
    """The composed loss and one batch of 8 rows, as ``setup`` builds them; ``perturb``: then move the student
    away from its teacher (seeded noise of that scale on every weight), so that distill has something to say."""
    from transformers import set_seed

    from embedkit.losses.objective import compose
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext
    from embedkit.modeling import build_model
    from embedkit.training.run import build_dataset, replay_rows
    from embedkit.validate import load_recipe_with_data

    recipe, data = load_recipe_with_data(recipe_path)
    cls = get_method(recipe.method.name)
    params = cls.params_cls.model_validate({k: v for k, v in recipe.method.model_dump().items() if k != "name"})
    set_seed(recipe.training.seed)
    model = build_model(recipe.model)
    dataset, _ = build_dataset(recipe, data, cls)
    method = cls(TrainContext(recipe=recipe, model=model, params=params))
    replay = replay_rows(recipe, None, 1, 0) if recipe.data.replay is not None else None
    loss = compose(method.build_loss(), recipe, model, replay)
    if perturb:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g))
    rows = dataset[:8]
    features = [model.tokenize(rows[c]) for c in rows if c not in ("label", "score", "row")]
    model.train()
    loss.train()
    return loss, features


def loss_and_grads(recipe_path: Path, perturb: float = 0.0):
    loss, features = build(recipe_path, perturb)
    out = loss(features, None)
    total = torch.stack(list(out.values())).sum()
    total.backward()
    return ({k: float(v.detach()) for k, v in out.items()},
            {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("mode", ["cosine", "mse", "kl"])
def test_gradcache_gives_the_plain_loss_and_gradients(mode, tmp_path, spread_model_path):
    objective = {"terms": [{"name": "distill", "weight": 50.0, "mode": mode, "temperature": 0.5}]}
    plain = loss_and_grads(replay_recipe(tmp_path, spread_model_path, objective=objective, name="a.yaml"), 0.05)
    cached = loss_and_grads(replay_recipe(tmp_path, spread_model_path, objective=objective,
                                          training={"mini_batch_size": 3}, name="b.yaml"), 0.05)
    assert plain[0].keys() == {"loss_main", "loss_distill"} and plain[0]["loss_distill"] > 1e-3
    for k, v in plain[0].items():
        assert cached[0][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert len(plain[1]) > 10 and plain[1].keys() == cached[1].keys()
    for name, g in plain[1].items():
        torch.testing.assert_close(cached[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_the_teacher_at_the_start_gives_zero_and_the_main_loss_is_unchanged(tmp_path, spread_model_path):
    """Before any step (dropout off) the student is its teacher: distill is 0 in every mode, and the method's loss
    equals that of the same recipe without replay (the replayed rows never reach it)."""
    for mode in ("cosine", "mse", "kl"):
        objective = {"terms": [{"name": "distill", "mode": mode}]}
        terms, _ = loss_and_grads(replay_recipe(tmp_path, spread_model_path, objective=objective,
                                                name=f"{mode}.yaml"))
        assert terms["loss_distill"] == pytest.approx(0.0, abs=1e-6), mode
    without = write_recipe(tmp_path / "plain", spread_model_path, "contrastive", tmp_path / "o2", {"batch_size": 8},
                           MEAN, None, objective={"terms": [{"name": "uniformity", "weight": 0.0}]})
    plain, _ = loss_and_grads(without)
    assert terms["loss_main"] == pytest.approx(plain["loss_main"], rel=1e-5)


# ---- refusals ---------------------------------------------------------------------------------------------


def refusal(path: Path, overrides=None) -> str:
    from embedkit.validate import load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides)
    return str(err.value)


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_distill_without_replay_and_replay_without_distill_are_refused(tmp_path, tiny_model_path):
    path = replay_recipe(tmp_path, tiny_model_path)
    msg = refusal(path, ["data.replay=null"])
    assert f"recipe.yaml:{line_of(path, '- name: distill')}: objective.terms.0.name: term distill" in msg
    assert "set data.replay" in msg
    msg = refusal(path, ["objective=null"])
    assert f"recipe.yaml:{line_of(path, 'replay:')}: data.replay: replayed rows are read only by" in msg


def test_a_share_that_gives_no_replayed_row_is_refused(tmp_path, tiny_model_path):
    path = replay_recipe(tmp_path, tiny_model_path, share=0.05)
    assert "data.replay.share: 0.05 of a step of 8 new rows rounds to 0 replayed rows" in refusal(path)


def test_kl_with_a_single_replayed_text_is_refused(tmp_path, tiny_model_path):
    path = replay_recipe(tmp_path, tiny_model_path, share=0.12, replay={"columns": ["s1"]},
                         objective={"terms": [{"name": "distill", "mode": "kl"}]})
    assert "data.replay.share: term distill mode kl compares" in refusal(path)


def test_a_bad_teacher_is_refused_at_validation(tmp_path, tiny_model_path):
    path = replay_recipe(tmp_path, tiny_model_path,
                         objective={"terms": [{"name": "distill", "teacher": str(tmp_path / "no-such-model")}]})
    msg = refusal(path)
    assert f"recipe.yaml:{line_of(path, 'teacher:')}: objective.terms.0.teacher: " in msg and "does not exist" in msg


def test_a_teacher_of_another_width_is_refused_for_cosine_but_not_for_kl(tmp_path, tiny_model_path):
    from tiny_model import tiny_bert

    narrow = tiny_bert(tmp_path / "narrow", hidden=16)
    path = replay_recipe(tmp_path, tiny_model_path, objective={"terms": [{"name": "distill", "teacher": narrow}]})
    assert "objective.terms.0.teacher: " in refusal(path) and "use mode kl" in refusal(path)
    from embedkit.validate import load_recipe

    load_recipe(replay_recipe(tmp_path, tiny_model_path, name="kl.yaml",
                              objective={"terms": [{"name": "distill", "teacher": narrow, "mode": "kl"}]}))


def test_unknown_mode_and_missing_replay_file_are_refused(tmp_path, tiny_model_path):
    path = replay_recipe(tmp_path, tiny_model_path, objective={"terms": [{"name": "distill", "mode": "l2"}]})
    assert "objective.terms.0.mode" in refusal(path)
    path = replay_recipe(tmp_path, tiny_model_path, replay={"path": str(tmp_path / "gone.csv")}, name="b.yaml")
    assert f"b.yaml:{line_of(path, 'gone.csv')}: data.replay.path: file not found" in refusal(path)
    path = replay_recipe(tmp_path, tiny_model_path, replay={"columns": ["s1", "nope"]}, name="c.yaml")
    assert "data.replay.path: " in refusal(path) and "nope" in refusal(path)


def test_replay_in_a_multitask_recipe_is_refused(tmp_path, tiny_model_path):
    from _mp_helpers import write_query_passages

    pairs, qp = write_scored_pairs(tmp_path), write_query_passages(tmp_path)
    recipe = {
        "model": {"name": tiny_model_path, **MEAN, "max_seq_length": 16},
        "data": {"train": [{"name": "sts", "path": str(pairs), "method": {"name": "cosent"}},
                           {"name": "qa", "path": str(qp), "method": {"name": "contrastive"}}],
                 "dev": None, "replay": {"path": str(pairs), "columns": ["s1", "s2"], "share": 0.2}},
        "method": {"name": "multitask"},
        "objective": {"terms": [{"name": "distill"}]},
        "training": {"batch_size": 8, "max_steps": 2},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(tmp_path / "out")},
    }
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert "data.replay: a multi-task recipe trains the earlier task as a source of its own" in refusal(path)


def test_the_shipped_recipe_is_the_retrieval_recipe_plus_replay_and_distill(data_dir):
    root = Path(__file__).resolve().parent.parent / "recipes"
    a = yaml.safe_load((root / "retrieval-trecqa-minilm.yaml").read_text())
    b = yaml.safe_load((root / "coconut-trecqa-minilm.yaml").read_text())
    replay, objective = b["data"].pop("replay"), b.pop("objective")
    for key in ("description", "output"):
        a.pop(key), b.pop(key)
    assert a == b
    assert replay["share"] == 0.2 and replay["path"].endswith("sts/stsbenchmark/sts-train.csv")
    assert objective == {"terms": [{"name": "distill", "weight": 1.0, "mode": "cosine", "teacher": "initial"}]}


# ---- kill/resume and torchrun -----------------------------------------------------------------------------


def test_replay_and_distill_run_resumes_bit_for_bit(tmp_path, spread_model_path):
    """GradCache, dropout on, replayed rows drawn by step and the teacher rebuilt from the starting model on
    resume: the run killed after its first checkpoint ends bit for bit where the uninterrupted one ends."""
    import signal

    from _mp_helpers import kill_resume_compare, write_scored_pairs

    pairs = write_scored_pairs(tmp_path)
    report = kill_resume_compare(tmp_path, spread_model_path, "contrastive",
                                 model={**MEAN, "dropout": 0.1},
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8, "mini_batch_size": 3},
                                 objective={"terms": [{"name": "distill", "weight": 20.0, "mode": "kl",
                                                       "temperature": 0.5}]},
                                 replay={"path": str(pairs), "columns": ["s1", "s2"], "share": 0.2})
    assert report["killed"]["returncode"] == -signal.SIGKILL
    assert report["killed"]["checkpoints"] == ["checkpoint-8"]
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    full, resumed = report["losses"]
    assert [full[s] for s in range(9, 13)] == [resumed[s] for s in range(9, 13)]
    assert max(full.values()) - min(full.values()) > 1e-2


@pytest.mark.multiproc
@pytest.mark.parametrize("mode", ["cosine", "kl"])
def test_two_processes_equal_one_process_with_replay(mode, tmp_path, spread_model_path, tiny_model_path):
    """Each process draws its half of the step's replayed rows; kl compares each text with the gathered texts
    of both processes: losses, each term and the weights equal one process holding the whole step. kl's teacher is
    another model (the unspread tiny BERT): with the starting model as teacher and dropout off, kl's gradient is
    zero at the first step up to float rounding, and Adam would turn that rounding into lr-sized steps of the
    rows of tokens that only the replayed texts hold (as contriever's near-zero gradients, test_distributed.py)."""
    from test_distributed import compare_two_with_one

    pairs = write_scored_pairs(tmp_path)
    teacher = {"teacher": tiny_model_path} if mode == "kl" else {}
    compare_two_with_one("contrastive", tmp_path, spread_model_path,
                         {"mini_batch_size": 5, "matryoshka_dims": [32, 16]}, MEAN,
                         {"terms": [{"name": "distill", "weight": 20.0, "mode": mode, "temperature": 0.5,
                                     **teacher}]},
                         replay={"path": str(pairs), "columns": ["s1", "s2"], "share": 0.2})


# ---- replay from a Hub dataset ----------------------------------------------------------------------------


def test_replay_reads_a_hub_dataset_as_training_reads_one(tmp_path, tiny_model_path):
    """``data.replay.hub`` loads through ``datasets.load_dataset`` as ``data.train.hub`` does (here datasets' own
    csv builder over the local file: the Hub code path without the network): the same rows as ``path``, and a run
    that replays them names the dataset in results.json and the card."""
    from embedkit.validate import check_replay_data, load_recipe

    by_path = replay_recipe(tmp_path, tiny_model_path)
    hub = {"path": None, "hub": "csv", "data_files": str(tmp_path / "pairs.csv")}
    by_hub = replay_recipe(tmp_path, tiny_model_path, name="hub.yaml", replay=hub, training={"max_steps": 2},
                           out="hub-out")
    a, b = (check_replay_data(load_recipe(p), None) for p in (by_path, by_hub))
    assert b.description == "hub:csv:train" and a.description.endswith("pairs.csv")
    assert {k: list(v) for k, v in b.columns.items()} == {k: list(v) for k, v in a.columns.items()}
    assert len(b) == 48

    run_in_process(by_hub)
    assert results(tmp_path / "hub-out")["train"]["replay"]["source"] == "hub:csv:train"
    card = (tmp_path / "hub-out" / "README.md").read_text(encoding="utf-8")
    assert "rows of the Hub dataset `csv` (train) replayed in every step (2 rows a step" in card


def test_replay_needs_a_path_or_a_hub_and_a_hub_it_cannot_read_is_one_line(tmp_path, tiny_model_path,
                                                                            monkeypatch):
    path = replay_recipe(tmp_path, tiny_model_path, replay={"path": None})
    msg = refusal(path)
    assert f"recipe.yaml:{line_of(path, 'replay:')}: data.replay: Value error, set 'path' (a local file), 'hub'" in msg

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing sent: the answer is the local datasets cache's
    path = replay_recipe(tmp_path, tiny_model_path, name="b.yaml", replay={"path": None, "hub": "someone/stsb"})
    msg = refusal(path)
    assert msg.startswith(f"{path}:{line_of(path, 'hub: someone/stsb')}: data.replay.hub someone/stsb: not in the "
                          "local datasets cache"), msg
    assert "use a local file in data.replay.path" in msg and "\n" not in msg

    rows = tmp_path / "holes.csv"
    rows.write_text("s1,s2\na cat sits,a cat is sitting\na dog runs,\n", encoding="utf-8")
    path = replay_recipe(tmp_path, tiny_model_path, name="c.yaml", share=0.12,
                         replay={"path": None, "hub": "csv", "data_files": str(rows)})
    msg = refusal(path)
    assert f"c.yaml:{line_of(path, 'hub: csv')}: data.replay.hub: csv (train): row 1 column 's2': expected a " \
           "non-empty text to replay, got None" in msg, msg
