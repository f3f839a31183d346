"""Method ``label-aware`` (SPACE-2's semi-supervised label-aware contrast, our reading): label paths become
label-tree nodes and the soft targets are their Jaccard overlap, equal to a hand computation; the loss value and
gradient equal a hand-written reference; unlabelled rows are SimCSE; across processes the label sets are gathered
with the embeddings; GradCache equals one pass; the rows read from JSONL/TSV, label_fraction hides labels by a seed;
bad rows and options are refused with file:line; a run resumes bit-exactly, two processes equal one, and the card
says what the method is."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from _mp_helpers import (
    TRAIN_DATA,
    WORDS,
    assert_gradcache_equals_one_pass,
    assert_hub_refused,
    kill_resume_compare,
    run_in_process,
)
from tiny_model import training_model

from embedkit import distributed
from embedkit.errors import RecipeError
from embedkit.losses.contrastive import SimCSELoss
from embedkit.methods.label_aware import keep_labels, multi_hot, node_vocabulary, parse_labels, tree_nodes
from embedkit.methods.label_aware import loss as loss_mod
from embedkit.methods.label_aware.loss import LabelAwareLoss, label_jaccard, soft_targets
from embedkit.validate import load_recipe, load_recipe_with_data

TAU = 0.1


def write_labelled_rows(folder: Path, n: int = 48) -> Path:
    """``n`` JSONL rows: two of three labelled with one or two label paths of a two-level tree, one of three
    unlabelled (``label-aware``)."""
    path = Path(folder) / "labelled.jsonl"
    rows = []
    for i in range(n):
        labels: list[str] = [] if i % 3 == 2 else [f"d{i % 2}/i{i % 4}"] + ([f"d1/i{i % 5}"] if i % 7 == 0 else [])
        rows.append({"text": f"the {WORDS[i % 12]} {WORDS[(i * 5) % 12]} number {i} is {WORDS[(i * 7) % 12]}",
                     "labels": labels})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TRAIN_DATA.setdefault("label-aware", write_labelled_rows)  # the writer the shared run helpers look up

# Rows of the hand computation: A and B share the tree nodes a, a/b (Jaccard 2/4); C shares only a with them
# (1/5); D is unlabelled.
ROWS = [["a/b/c"], "a/b/d", ["a/x", "e"], None]
HAND = torch.tensor([
    [1.0, 0.5, 0.2, 0.0],
    [0.5, 1.0, 0.2, 0.0],
    [0.2, 0.2, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
])
HAND = HAND / HAND.sum(dim=1, keepdim=True)


def hand_labels() -> torch.Tensor:
    strings = ["|".join(parse_labels(r)) for r in ROWS]
    return torch.tensor(multi_hot(strings, node_vocabulary(strings)))


# ---------------------------------------------------------------------------------------------------------
# Soft targets and the loss arithmetic


def test_label_paths_expand_to_tree_nodes():
    assert parse_labels("a/ b /c| e") == ("a/b/c", "e")
    assert parse_labels(["x", "x"]) == ("x",) and parse_labels("") == parse_labels([]) == parse_labels(None) == ()
    assert tree_nodes(("a/b/c", "a/x")) == {"a", "a/b", "a/b/c", "a/x"}
    assert node_vocabulary(["a/b/c", "a/x|e", ""]) == ["a", "a/b", "a/b/c", "a/x", "e"]


def test_soft_targets_equal_a_hand_computation():
    labels = hand_labels()
    assert label_jaccard(labels, labels)[0, 1] == pytest.approx(0.5) and label_jaccard(labels, labels)[0, 2] == \
        pytest.approx(0.2)
    torch.testing.assert_close(soft_targets(labels, labels), HAND)
    # rank 1 of 2: the local rows sit at 4..7 of the gathered candidates; rows 0..3 of the other process
    other = torch.zeros_like(labels)
    other[0] = labels[0]  # another process's row with A's labels: a positive of A (and of B by 0.5, C by 0.2)
    got = soft_targets(labels, torch.cat([other, labels]), offset=4)
    want = torch.zeros(4, 8)
    want[:3, 0] = torch.tensor([1.0, 0.5, 0.2])
    want[:, 4:] = torch.tensor([[1.0, 0.5, 0.2, 0.0], [0.5, 1.0, 0.2, 0.0], [0.2, 0.2, 1.0, 0.0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(got, want / want.sum(dim=1, keepdim=True))


def reference(z1: torch.Tensor, z2: torch.Tensor, targets: torch.Tensor, labelled: list[bool], lam: float):
    """The loss written out anchor by anchor from the docstring's formula."""
    parts: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for i in range(z1.shape[0]):
        logits = torch.stack([F.cosine_similarity(z1[i], z2[j], dim=0) / TAU for j in range(z2.shape[0])])
        log_p = logits - torch.logsumexp(logits, dim=0)
        parts[labelled[i]].append(-sum(targets[i, j] * log_p[j] for j in range(z2.shape[0])))
    return lam * torch.stack(parts[True]).mean() + torch.stack(parts[False]).mean()


def test_loss_value_and_gradient_equal_a_reference():
    torch.manual_seed(0)
    z1 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    loss = LabelAwareLoss(torch.nn.Identity(), TAU, supervised_weight=0.7)
    batch = loss.plan([{"input_ids": torch.zeros(4, 3)}], hand_labels())
    ours = loss.score([z1, z2], batch)
    ours.backward()
    g1, g2 = z1.grad.clone(), z2.grad.clone()
    z1.grad = z2.grad = None
    ref = reference(z1, z2, HAND.double(), [True, True, True, False], 0.7)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(g1, z1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g2, z2.grad, rtol=1e-10, atol=1e-12)
    assert g2.abs().sum() > 0


def test_unlabelled_rows_are_simcse():
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    loss = LabelAwareLoss(torch.nn.Identity(), TAU)
    ours = loss.score([z1, z2], loss.plan([{"input_ids": torch.zeros(6, 2)}], torch.zeros(6, 3)))
    simcse = SimCSELoss(torch.nn.Identity(), TAU).score([z1, z2])
    assert float(ours) == pytest.approx(float(simcse), rel=1e-6)
    # ... and with only the first row labelled the unlabelled anchors' part is still SimCSE over their rows
    labels = torch.zeros(6, 3)
    labels[0, 0] = 1.0
    mixed = loss.score([z1, z2], loss.plan([{"input_ids": torch.zeros(6, 2)}], labels))
    rows = F.cross_entropy(F.normalize(z1) @ F.normalize(z2).T / TAU, torch.arange(6), reduction="none")
    assert float(mixed) == pytest.approx(float(rows[0] + rows[1:].mean()), rel=1e-6)


def test_across_processes_the_label_sets_are_gathered(monkeypatch):
    """Rank 1 of 2 holds rows 4..7: with the embeddings and label sets of both processes gathered, its loss is
    2 × its rows' share of the global loss (DDP averages the two processes' gradients), and the two shares sum to
    the one-process loss over all 8 rows."""
    torch.manual_seed(2)
    z1, z2 = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    labels = torch.cat([hand_labels(), hand_labels().flip(0)]).double()
    whole = LabelAwareLoss(torch.nn.Identity(), TAU, 0.5)
    full = float(whole.score([z1, z2], whole.plan([{"input_ids": torch.zeros(8, 2)}], labels)))
    shares = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (0, 1):
        local = slice(4 * rank, 4 * rank + 4)
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        monkeypatch.setattr(loss_mod, "gather_no_grad", lambda x, enabled=True: labels)
        part = LabelAwareLoss(torch.nn.Identity(), TAU, 0.5)
        monkeypatch.setattr(part, "gather", lambda x: z2)
        batch = part.plan([{"input_ids": torch.zeros(4, 2)}], labels[local])
        assert torch.equal(batch.extra["candidate_node_sets"], labels)
        shares.append(float(part.score([z1[local], z2[local]], batch)))
    assert sum(shares) / 2 == pytest.approx(full, rel=1e-12)


@pytest.fixture()
def model(tiny_model_path):
    return training_model(tiny_model_path, "cls")


def test_gradcache_equals_plain(model):
    texts = [f"sentence number {i} about {'abc'[i % 3]}" for i in range(10)]
    strings = ["|".join(parse_labels(ROWS[i % 4])) for i in range(10)]
    labels = torch.tensor(multi_hot(strings, node_vocabulary(strings)))
    features = [model.tokenize(texts)]

    assert_gradcache_equals_one_pass(model, lambda **k: LabelAwareLoss(model, TAU, **k), features, labels, seed=3)


# ---------------------------------------------------------------------------------------------------------
# Rows, label_fraction, refusals


def test_keep_labels_is_a_seeded_function_of_the_labelled_rows():
    labels = [(f"c{i % 2}",) if i % 4 else () for i in range(40)]
    kept = keep_labels(labels, 0.2, 42)
    assert sum(1 for x in kept if x) == 6  # round(0.2 × 30)
    assert all(not k or k == lab for k, lab in zip(kept, labels, strict=True))
    assert kept == keep_labels(labels, 0.2, 42) and kept != keep_labels(labels, 0.2, 7)
    assert keep_labels(labels, 1.0, 42) == labels


def recipe(tmp: Path, model: str, data: Path, method: dict | None = None, train: dict | None = None,
           training: dict | None = None) -> Path:
    raw = {
        "model": {"name": model, "max_seq_length": 16},
        "data": {"train": {"path": str(data), **(train or {})}, "dev": None},
        "method": {"name": "label-aware", **(method or {})},
        "training": {"batch_size": 4, "max_steps": 2, **(training or {})},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(tmp / "out")},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_jsonl_and_tsv_rows_reach_the_dataset_as_label_node_sets(tmp_path, tiny_model_path):
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext
    from embedkit.training.run import build_dataset

    tsv = tmp_path / "rows.tsv"
    tsv.write_text("text\tlabels\nfirst row\ta/b|c\nsecond row\t\nthird row\ta/x\n", encoding="utf-8")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "first row", "labels": ["a/b", "c"]}\n{"text": "second row"}\n'
                     '{"text": "third row", "labels": "a/x"}\n', encoding="utf-8")
    for data in (tsv, jsonl):
        rec, train_data = load_recipe_with_data(recipe(tmp_path, tiny_model_path, data))
        assert train_data.columns["labels"] == ["a/b|c", "", "a/x"]
        cls = get_method("label-aware")
        dataset, _ = build_dataset(rec, train_data, cls)
        method = cls(TrainContext(recipe=rec, model=None, params=rec.method.params()))
        dataset = method.prepare_dataset(dataset)
        assert method.vocabulary == ["a", "a/b", "a/x", "c"]
        assert dataset["labels"] == [[1.0, 1.0, 0.0, 1.0], [0.0] * 4, [1.0, 0.0, 1.0, 0.0]]


def test_label_fraction_and_drop_leave_the_seeded_labelled_rows(tmp_path, tiny_model_path, capsys):
    data = write_labelled_rows(tmp_path)
    _, kept = load_recipe_with_data(recipe(tmp_path, tiny_model_path, data, {"label_fraction": 0.25}))
    assert sum(1 for v in kept.columns["labels"] if v) == 8 and len(kept) == 48  # round(0.25 × 32)
    assert "8 of 48 rows labelled (32 labelled in the data, label_fraction 0.25" in capsys.readouterr().err
    _, dropped = load_recipe_with_data(recipe(tmp_path, tiny_model_path, data,
                                              {"label_fraction": 0.25, "unlabelled": "drop"}))
    assert len(dropped) == 8 and all(dropped.columns["labels"])
    assert [t for t, v in zip(kept.columns["text"], kept.columns["labels"], strict=True) if v] == \
        dropped.columns["text"]


def test_an_mr_folder_reads_as_its_labelled_training_part_never_the_evaluated_test_part(tmp_path, tiny_model_path):
    from embedkit.data.classification import classification_split

    folder = tmp_path / "classification" / "mr"
    folder.mkdir(parents=True)
    for name, kind in (("rt-polarity.neg", "bad"), ("rt-polarity.pos", "good")):
        (folder / name).write_text("".join(f"a {kind} film , take {i} .\n" for i in range(10)), encoding="utf-8")
    _, data = load_recipe_with_data(recipe(tmp_path, tiny_model_path, folder))
    texts = [f"a {kind} film , take {i} ." for kind in ("bad", "good") for i in range(10)]
    train, test = classification_split([0] * 10 + [1] * 10)
    assert data.columns["text"] == [texts[i] for i in train] and len(train) == 16
    assert not set(data.columns["text"]) & {texts[i] for i in test}
    assert data.columns["labels"] == [("negative" if i < 10 else "positive") for i in train]
    other = tmp_path / "elsewhere"
    other.mkdir()
    path = recipe(tmp_path, tiny_model_path, other)
    with pytest.raises(RecipeError, match=rf"{path}:\d+: data.train.path: .*elsewhere: a folder; method 'label-aware'"
                                          r" reads a folder only in the layout of"):
        load_recipe(path)


@pytest.mark.parametrize("content,match", [
    ('{"text": "fine", "labels": ["a"]}\n{"text": "bad", "labels": [3]}\n', r"rows.jsonl:2: 'labels' \[3\]: label 3 "
     "is not a string"),
    ('{"text": "fine", "labels": "a//b"}\n', r"rows.jsonl:1: 'labels' 'a//b': label 'a//b' has an empty level"),
    ('{"text": "fine", "labels": "a|"}\n', r"rows.jsonl:1: 'labels' 'a\|': label '' has an empty level"),
    ('{"text": "x", "labels": ["a|b"]}\n', r"rows.jsonl:1: 'labels' \['a\|b'\]: label 'a\|b' holds '\|'"),
    ('{"text": "", "labels": "a"}\n', r"rows.jsonl:1: 'text' must be a non-empty string"),
    ('{"labels": "a"}\n', r"rows.jsonl:1: missing key 'text'"),
    ('{"text": "x", "labels": {"a": 1}}\n', r"rows.jsonl:1: 'labels' \{'a': 1\}: expected a list of label strings"),
])
def test_bad_rows_are_refused_with_file_and_line(tmp_path, tiny_model_path, content, match):
    data = tmp_path / "rows.jsonl"
    data.write_text(content, encoding="utf-8")
    path = recipe(tmp_path, tiny_model_path, data)
    with pytest.raises(RecipeError, match=rf"^{path}:\d+: data.train.path: .*{match}") as err:
        load_recipe(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method,train,match", [
    ({}, {"format": "text"}, r"data.train.format: method 'label-aware' reads jsonl, csv, tsv rows"),
    ({}, {"columns": ["text"]}, r"data.train.columns: method 'label-aware' takes two columns"),
    ({"label_fraction": 0}, {}, r"method.label_fraction: Input should be greater than 0"),
    ({"unlabelled": "drop", "supervised_weight": 0}, {}, r"method.supervised_weight: with unlabelled: drop"),
    ({"unlabelled": "keep"}, {}, r"method.unlabelled: Input should be 'train' or 'drop'"),
])
def test_options_it_cannot_honour_are_refused_with_file_line_key(tmp_path, tiny_model_path, method, train, match):
    path = recipe(tmp_path, tiny_model_path, write_labelled_rows(tmp_path), method, train)
    with pytest.raises(RecipeError, match=rf"{path}:\d+: {match}"):
        load_recipe(path)


def test_a_hub_dataset_is_refused(tmp_path, tiny_model_path):
    path = recipe(tmp_path, tiny_model_path, tmp_path / "unused.jsonl")
    assert_hub_refused(path, "method 'label-aware' reads its text")


# ---------------------------------------------------------------------------------------------------------
# Training: the card, kill/resume, two processes


def test_a_run_trains_and_its_card_says_what_it_is(tmp_path, tiny_model_path):
    path = recipe(tmp_path, tiny_model_path, write_labelled_rows(tmp_path), {"label_fraction": 0.5},
                  training={"batch_size": 8, "max_steps": 2})
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["model"].update(pooling="cls", mlp_only_train=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    run_in_process(path)
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "**label-aware**" in card and "SPACE-2" in card and "label_fraction=0.5" in card


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, spread_model_path):
    report = kill_resume_compare(tmp_path, spread_model_path, "label-aware", method_params={"temperature": 0.5},
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8})
    assert report["killed"]["returncode"] == -signal.SIGKILL
    assert report["killed"]["checkpoints"] == ["checkpoint-8"]
    assert "resuming from" in report["resume_log"]
    assert report["global_step"] == (12, 12)
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    assert report["method_state_keys"] and report["method_state_bitwise_mismatch"] == []
    full, resumed = report["losses"]
    assert [full[s] for s in range(9, 13)] == [resumed[s] for s in range(9, 13)]
    assert max(full.values()) - min(full.values()) > 1e-2, f"the loss must be live: {full}"


@pytest.mark.multiproc
def test_two_processes_equal_one_process(tmp_path, spread_model_path):
    from test_distributed import compare_two_with_one

    compare_two_with_one("label-aware", tmp_path, spread_model_path, params={"temperature": 0.5,
                                                                             "supervised_weight": 2.0})
