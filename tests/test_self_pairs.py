"""``self-pairs``: self-training rounds. The model being trained mines (anchor, positive) pairs by the ratio margin,
trains on them with InfoNCE and mines again on schedule; the round's pairs live in the loss's buffers, so a resumed
run continues with the pairs it had (docs/mine-pairs.md#self-training-rounds)."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from _mp_helpers import (
    METHOD_PARAMS,
    checkpoint_dirs,
    kill_resume_compare,
    method_state,
    run_in_process,
    write_recipe,
)

from embedkit.errors import EmbedkitError, RecipeError


def _recipe(tmp_path: Path, model_path: str, training: dict | None = None, params: dict | None = None) -> Path:
    return write_recipe(tmp_path / "recipe", model_path, "self-pairs", tmp_path / "out",
                        {"batch_size": 8, "max_steps": 7, "seed": 5, **(training or {})},
                        {"pooling": "mean", "mlp_only_train": False}, params)


def _record(monkeypatch) -> tuple[list, list]:
    """Patch the method's mining and the loss's planning to record (round, pairs mined, step the model had) and
    (round in force, row ids, text-index pairs trained on) for every call."""
    import embedkit.methods.self_pairs as sp
    from embedkit.methods.self_pairs.loss import SelfPairsLoss

    mined, trained = [], []
    original_mine, original_plan = sp.mine_round, SelfPairsLoss.plan

    def mine(model, texts, params, seed, round_):
        found = original_mine(model, texts, params, seed, round_)
        mined.append((round_, found.pairs.copy()))
        return found

    def plan(self, features, labels):
        batch = original_plan(self, features, labels)
        if self.model.training:
            rows = labels.reshape(-1).long()
            trained.append((self.round, rows.tolist(), self.row_pairs(rows).numpy().copy(), batch))
        return batch

    monkeypatch.setattr(sp, "mine_round", mine)
    monkeypatch.setattr(SelfPairsLoss, "plan", plan)
    return mined, trained


# ---- the index rule -----------------------------------------------------------------------------------------


def test_row_i_reads_pair_i_mod_n_of_the_round(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    from embedkit.methods.self_pairs import round_order
    from embedkit.methods.self_pairs.loss import SelfPairsLoss

    model = SentenceTransformer(tiny_model_path, device="cpu")
    texts = [f"text {i}" for i in range(10)]
    loss = SelfPairsLoss(model, texts, model.preprocess)
    loss.set_pairs(torch.tensor([[0, 5], [2, 9], [3, 4]]), round_=2)
    assert loss.round == 2
    assert loss.row_pairs(torch.tensor([0, 1, 2, 3, 7])).tolist() == [[0, 5], [2, 9], [3, 4], [0, 5], [2, 9]]
    batch = loss.plan([], torch.tensor([4, 0]))  # the views are the pairs' texts, tokenised by the loss
    expected = model.preprocess(["text 2", "text 0"])["input_ids"]
    assert torch.equal(batch.columns[0]["input_ids"], expected)
    assert torch.equal(batch.columns[1]["input_ids"], model.preprocess(["text 9", "text 5"])["input_ids"])

    # The seeded order: a permutation, the same for the same (seed, round), another for another round.
    order = round_order(50, seed=5, round_=1)
    assert sorted(order.tolist()) == list(range(50))
    assert np.array_equal(order, round_order(50, 5, 1))
    assert not np.array_equal(order, round_order(50, 5, 2)) and not np.array_equal(order, round_order(50, 6, 1))


def test_method_state_restores_a_round_of_another_size(tiny_model_path, tmp_path):
    """The checkpoint's round has its own pair count: loading it replaces the buffers' shape and values."""
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    from embedkit.methods.self_pairs.loss import SelfPairsLoss
    from embedkit.training.trainer import METHOD_STATE_FILE, load_method_state
    from embedkit.training.trainer import method_state as state_of

    model = SentenceTransformer(tiny_model_path, device="cpu")
    saved = SelfPairsLoss(model, ["a", "b", "c", "d", "e"], model.preprocess)
    saved.set_pairs(torch.tensor([[0, 1], [2, 3], [4, 0], [1, 3], [2, 4]]), round_=3)
    state = state_of(saved)
    assert {"pairs", "mining_round"} <= set(state)
    save_file(state, str(tmp_path / METHOD_STATE_FILE))
    fresh = SelfPairsLoss(model, ["a", "b", "c", "d", "e"], model.preprocess)
    fresh.set_pairs(torch.tensor([[1, 2], [3, 4]]), round_=0)
    load_method_state(fresh, tmp_path)
    assert fresh.round == 3 and torch.equal(fresh.pairs, saved.pairs)


# ---- rounds in training ---------------------------------------------------------------------------------------


def test_rounds_at_the_right_steps_and_steps_train_on_the_rounds_pairs(tmp_path, spread_model_path, monkeypatch):
    mined, trained = _record(monkeypatch)
    recipe = _recipe(tmp_path, spread_model_path, params=METHOD_PARAMS["self-pairs"] | {"remine_every": 3})
    results = run_in_process(recipe)
    assert results["train"]["global_step"] == 7
    # Round 0 at preparation, then after steps 3 and 6 (never after the last step).
    assert [r for r, _ in mined] == [0, 1, 2]
    assert [r for r, *_ in trained] == [0, 0, 0, 1, 1, 1, 2]
    pairs = dict(mined)
    n0 = len(pairs[0])
    for round_, rows, used, batch in trained:
        assert all(0 <= r < n0 for r in rows), "the dataset has round 0's length"
        assert np.array_equal(used, pairs[round_][np.asarray(rows) % len(pairs[round_])])
        assert batch.columns[0]["input_ids"].shape[0] == len(rows)
    # The model changed between rounds, so did the pairs (a later round is not round 0 replayed).
    assert any(not np.array_equal(pairs[0], pairs[r]) for r in (1, 2))


def test_epoch_schedule_and_never(tmp_path, spread_model_path, monkeypatch):
    mined, trained = _record(monkeypatch)
    params = METHOD_PARAMS["self-pairs"] | {"remine_every": "epoch"}
    run_in_process(_recipe(tmp_path / "epoch", spread_model_path, {"max_steps": 8, "drop_last": True}, params))
    n0 = len(mined[0][1])
    per_epoch = n0 // 8
    assert [r for r, _ in mined] == list(range(len(mined))) and len(mined) == -(-8 // per_epoch)
    assert [r for r, *_ in trained] == [s // per_epoch for s in range(8)]
    mined.clear()
    trained.clear()
    run_in_process(_recipe(tmp_path / "never", spread_model_path, {"max_steps": 4},
                           METHOD_PARAMS["self-pairs"] | {"remine_every": "never"}))
    assert [r for r, _ in mined] == [0] and {r for r, *_ in trained} == {0}


# ---- refusals -------------------------------------------------------------------------------------------------


def test_refusals(tmp_path, spread_model_path):
    from embedkit.validate import load_recipe, load_recipe_with_data

    def bad(training=None, params=None, model=None, match=""):
        recipe = write_recipe(tmp_path / "bad", spread_model_path, "self-pairs", tmp_path / "o",
                              {"max_steps": 2, **(training or {})}, model, {**METHOD_PARAMS["self-pairs"],
                                                                            **(params or {})})
        with pytest.raises(RecipeError, match=match):
            load_recipe_with_data(recipe)

    bad(params={"remine_every": 0}, match=r"method.remine_every")
    bad(params={"remine_every": "often"}, match=r"method.remine_every")
    bad(params={"max_surface_similarity": 1.5}, match=r"method.max_surface_similarity")
    bad(params={"k": 0}, match=r"method.k")
    bad(params={"k": 60}, match=r"method.k = 60 nearest neighbours .* has 48, it needs at least 61")
    bad(training={"group_by_length": True}, match=r"training.group_by_length: self-pairs rows are mined pair ids")
    bad(model={"prompts": {"query": "query: "}, "prompt_columns": {"text": "query"}},
        match=r"model.prompt_columns: self-pairs tokenises its mined pairs itself")
    # Honoured: re-mining every N steps with data-loader workers (the rows are row ids; pairs are read at the step).
    ok = write_recipe(tmp_path / "ok", spread_model_path, "self-pairs", tmp_path / "o2",
                      {"max_steps": 2, "dataloader_workers": 2}, None, METHOD_PARAMS["self-pairs"])
    assert load_recipe(ok).method.remine_every == 4


def test_a_round_without_pairs_stops_with_one_line(tmp_path, spread_model_path):
    from embedkit.training.run import train

    recipe = _recipe(tmp_path, spread_model_path, params=METHOD_PARAMS["self-pairs"] | {"threshold": 50.0})
    with pytest.raises(EmbedkitError, match=r"self-pairs mining round 0: no pair kept of .* below method.threshold "
                                            r"50.0\); lower method.threshold") as err:
        train(str(recipe))
    assert "\n" not in str(err.value)


def test_shipped_recipe_validates(data_dir):
    from embedkit.validate import load_recipe_with_data

    recipe, data = load_recipe_with_data("self-pairs-brown-minilm", data_dir=str(data_dir))
    assert recipe.method.name == "self-pairs" and len(data) == 3200
    assert (recipe.training.batch_size, recipe.training.max_steps, recipe.training.seed) == (32, 200, 42)


# ---- resume and processes -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_resume_on_a_round_boundary_is_exact(tmp_path, spread_model_path):
    """Killed right after the step-8 checkpoint, where round 2 was just mined with the step-8 model: the resumed
    run reads round 2 from the checkpoint (it does not mine it again with another model) and ends bit for bit
    where the uninterrupted run ends."""
    report = kill_resume_compare(tmp_path, spread_model_path, "self-pairs", model={"pooling": "mean",
                                                                                    "mlp_only_train": False})
    assert report["killed"]["returncode"] == -signal.SIGKILL
    assert report["killed"]["checkpoints"] == ["checkpoint-8"]
    assert {"pairs", "mining_round"} <= set(report["method_state_keys"])
    assert report["resume_log"].count("self-pairs round 2") == 0, "round 2 comes from the checkpoint"
    assert "self-pairs round 0" in report["resume_log"]  # the dataset length (round 0) is rebuilt
    assert report["weights_bitwise_mismatch"] == [], report["weights_max_abs_diff"]
    assert report["method_state_bitwise_mismatch"] == []
    full, resumed = report["losses"]
    assert [full[s] for s in range(9, 13)] == [resumed[s] for s in range(9, 13)]
    cut = method_state(checkpoint_dirs(tmp_path / "killed")[0])
    assert int(cut["mining_round"]) == 2


@pytest.mark.multiproc
def test_two_processes_equal_one_process(tmp_path, spread_model_path):
    """Under torchrun rank 0's pairs are broadcast and the candidates gathered: the two processes train on the
    pairs (method state), losses and weights of one process with the same global batch (test_distributed's rule).
    drop_last in both: several processes always drop a short last global batch (21 pairs: one step an epoch)."""
    from test_distributed import compare_two_with_one

    compare_two_with_one("self-pairs", tmp_path, spread_model_path, training={"drop_last": True},
                         model={"pooling": "mean", "mlp_only_train": False}, params={"remine_every": 2})
