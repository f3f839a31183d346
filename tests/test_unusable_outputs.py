"""Nothing produced that cannot be used (issue 25): a mining run that can keep no row (one pair, one anchor for
every row, more negatives asked than texts exist) or keeps too few is an error naming why, with nothing written;
two evaluation sets with the same derived name keep both results under distinct names; two models whose
tokenizers share a vocabulary but not their casing are not merged."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_merging import _save_variant
from test_ranking_eval import write_rerank

from embedkit.cli import main
from embedkit.errors import DataError
from embedkit.merging import MergeError, merge
from embedkit.mining import mine_negatives
from embedkit.recipe import MineSection


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("embedkit:")]  # not the progress bars
    assert len(lines) == 1 and lines[0].startswith("embedkit: error: ") and "Traceback" not in err, err
    return lines[0]


def write_pairs(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# data mine


@pytest.mark.parametrize(("rows", "extra", "message"), [
    ([("what is a cat", "a small feline")], [],
     "0 of 1 row can get 3 negatives whatever the model: there is one pair; "),
    ([("what is a cat", f"answer number {i}") for i in range(6)], [],
     "0 of 6 rows can get 3 negatives whatever the model: every row has the same anchor, so each positive is one "
     "of its labelled positives; "),
    ([(f"text {i}", f"text {i}") for i in range(3)], [],
     "0 of 3 rows can get 3 negatives whatever the model: every row's anchor and positive are the same text; "),
    ([(f"question {i}", f"answer {i}") for i in range(8)], ["--num-negatives", "8"],
     "0 of 8 rows can get 8 negatives whatever the model: 8 rows give 8 distinct candidate texts; "),
])
def test_mining_that_can_keep_no_row_is_refused_before_the_model_loads(tmp_path, capsys, rows, extra, message):
    """Before: exit 0 and a 0-row OUT.jsonl (with its stats and plot). The count needs only the texts, so the
    refusal comes before the model loads (the model named here does not exist)."""
    pairs = write_pairs(tmp_path / "p.jsonl", rows)
    out = tmp_path / "m.jsonl"
    assert main(["data", "mine", "--pairs", str(pairs), "--model", str(tmp_path / "no-model"), *extra,
                 "-o", str(out)]) == 2
    line = one_error(capsys)
    assert line.startswith(f"embedkit: error: data mine: {message}"), line
    assert "--range-min + --num-negatives" in line and line.endswith("nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_identical_pairs_count_as_one_pair(tmp_path, capsys):
    """Four copies of one (anchor, positive) row: one anchor, one candidate text, its own positive."""
    pairs = write_pairs(tmp_path / "p.jsonl", [("a cat", "a feline")] * 4)
    assert main(["data", "mine", "--pairs", str(pairs), "--model", str(tmp_path / "no-model"),
                 "-o", str(tmp_path / "m.jsonl")]) == 2
    line = one_error(capsys)
    assert "0 of 4 rows can get 3 negatives whatever the model: the 4 rows are one pair repeated;" in line, line
    assert "(the positives, 1 distinct text), at most 0 candidates remain for a row" in line


def test_a_filter_that_drops_every_row_writes_nothing(tmp_path, tiny_model_path, capsys):
    """Enough texts, but a filter that keeps nothing (max_score_ratio 0.01 drops every candidate scoring above 1%
    of the positive's score): the error gives the counts; before, a 0-row file."""
    pairs = write_pairs(tmp_path / "p.jsonl", [(f"question {i} about {i % 3}", f"answer {i}") for i in range(12)])
    out = tmp_path / "m.jsonl"
    assert main(["data", "mine", "--pairs", str(pairs), "--model", tiny_model_path, "--max-score-ratio", "0.01",
                 "-o", str(out)]) == 2
    line = one_error(capsys)
    assert line.startswith("embedkit: error: data mine: 0 of 12 rows kept 3 negatives: of ") and \
        "the false-negative filter (--max-score-ratio 0.01) dropped" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def angle_encoder(cosines: dict[str, float]):
    """Unit vectors in 2-D with cos(anchor 'q', t) = cosines[t] exactly ('q' is [1, 0])."""
    def encode(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[c := (1.0 if t == "q" else cosines[t]), math.sqrt(max(0.0, 1 - c * c))]
                             for t in texts], dtype=torch.float64)
    return encode


def test_a_share_of_kept_rows_under_min_rows_kept_is_named_with_its_cause():
    """Four rows of one anchor: the rows whose positive scores 0.9 keep the candidates under 0.95 × 0.9; the row
    whose positive scores 0.3 loses all of them to the filter. 3 of 4 kept passes 0.5 and fails 0.8."""
    from embedkit.training.mine import too_few_kept

    cos = {"p1": 0.9, "p2": 0.9, "p3": 0.9, "p4": 0.3, "c1": 0.8, "c2": 0.7, "c3": 0.6}
    mined = mine_negatives(None, ["q"] * 4, ["p1", "p2", "p3", "p4"],
                           MineSection(num_negatives=2, seed=0), corpus=["c1", "c2", "c3"],
                           encoder=angle_encoder(cos), backend="torch")
    assert mined.stats["rows"] == 3
    assert too_few_kept(mined.stats, MineSection(num_negatives=2)) is None
    reason = too_few_kept(mined.stats, MineSection(num_negatives=2, min_rows_kept=0.8))
    assert reason.startswith("3 of 4 rows kept 2 negatives, fewer than min_rows_kept 0.8 of them: of ") and \
        "(max_score_ratio 0.95) dropped 3," in reason and "leaving 1 row with fewer than 2" in reason and \
        "(or lower min_rows_kept to accept them)" in reason, reason


def test_training_mining_refuses_rows_it_cannot_fill(tmp_path, tiny_model_path):
    """``data.train.mine`` counts the same way before it encodes (the starting model is loaded by then)."""
    from embedkit.training.mine import mine_for_training
    from embedkit.validate import load_recipe_with_data

    pairs = write_pairs(tmp_path / "p.jsonl", [(f"q {i}", f"a {i}") for i in range(4)])
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"model: {{name: {tiny_model_path}, max_seq_length: 16}}\n"
        f"data: {{train: {{path: {pairs}, mine: {{num_negatives: 4}}}}, dev: null}}\n"
        "method: {name: contrastive}\ntraining: {batch_size: 2}\neval: {before: false, suite: none}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n", encoding="utf-8")
    recipe, data = load_recipe_with_data(recipe_path)
    with pytest.raises(DataError, match=r"^data\.train\.mine: 0 of 4 rows can get 4 negatives whatever the model: "
                                        r"4 rows give 4 distinct candidate texts; .* range_min \+ num_negatives = 4"):
        mine_for_training(recipe, data, None, tmp_path / "work", None)
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------------------------------------
# eval: two sets of one derived name


def test_ranking_names_tell_apart_sets_of_one_derived_name(tmp_path):
    from embedkit.evaluation.core import ranking_names

    x, y = tmp_path / "x" / "trecqa" / "dev.csv", tmp_path / "y" / "trecqa" / "dev.csv"
    assert ranking_names([("rerank", x, "test"), ("rerank", y, "test"), ("rerank", tmp_path / "toy" / "dev.csv",
                                                                          "test")]) == \
        ["x-trecqa-dev", "y-trecqa-dev", "toy-dev"]  # a name that is alone stays as it was
    assert ranking_names([("retrieval", tmp_path / "a" / "scifact", "test"),
                          ("retrieval", tmp_path / "b" / "scifact", "test"),
                          ("retrieval", tmp_path / "b" / "scifact", "dev")]) == \
        ["a-scifact-test", "b-scifact-test", "scifact-dev"]
    with pytest.raises(DataError, match=r"given twice as a rerank set"):
        ranking_names([("rerank", x, "test"), ("rerank", tmp_path / "x" / "." / "trecqa" / "dev.csv", "test")])


def test_recipe_final_sets_of_one_derived_name_load_under_distinct_names(tmp_path):
    from embedkit.evaluation.core import load_rankings

    x = write_rerank(tmp_path / "x" / "trecqa" / "dev.csv", [("q", 1, "a"), ("q", 0, "b")])
    y = write_rerank(tmp_path / "y" / "trecqa" / "dev.csv", [("r", 1, "c"), ("r", 0, "d")])
    sets = load_rankings([("rerank", str(x), "test"), ("rerank", str(y), "test")])
    assert [s.name for s in sets] == ["x-trecqa-dev", "y-trecqa-dev"]
    assert [s.queries[0].query for s in sets] == ["q", "r"]


def test_eval_keeps_one_result_per_file(tmp_path, tiny_model_path, capsys):
    """Before: ``--rerank x/trecqa/dev.csv --rerank y/trecqa/dev.csv`` stored both under ``trecqa-dev``: the
    second file's scores replaced the first's."""
    from sentence_transformers import SentenceTransformer

    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation.ranking import score_rerank

    rows = [(f"question {q}", int(i == 0), f"answer {q}.{i} about {q * i}") for q in range(4) for i in range(3)]
    x = write_rerank(tmp_path / "x" / "trecqa" / "dev.csv", rows)
    y = write_rerank(tmp_path / "y" / "trecqa" / "dev.csv", [(q, 1 - label, a) for q, label, a in rows])
    out = tmp_path / "res"
    assert main(["eval", tiny_model_path, "--rerank", str(x), "--rerank", str(y), "--suite", "none",
                 "-o", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())["rerank"]
    assert sorted(saved) == ["x-trecqa-dev", "y-trecqa-dev"]
    model = SentenceTransformer(tiny_model_path, device="cpu")
    for name, path in (("x-trecqa-dev", x), ("y-trecqa-dev", y)):
        assert saved[name]["map"] == pytest.approx(score_rerank(model, read_rerank(path))["map"], abs=1e-9)
        assert list(saved[name]["files"]) == [str(path)]
    capsys.readouterr()
    assert main(["eval", tiny_model_path, "--rerank", str(x), "--rerank", str(x), "--suite", "none",
                 "-o", str(tmp_path / "twice")]) == 2
    assert "given twice as a rerank set" in one_error(capsys)


# ----------------------------------------------------------------------------------------------------------
# merge: same vocabulary, other casing


def _cased(src: str, dst: Path) -> str:
    """``src`` with its tokenizer made cased: the same vocabulary, no lower-casing."""
    dst = Path(shutil.copytree(src, dst))
    config = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["do_lower_case"] = False
    (dst / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    tok["normalizer"]["lowercase"] = False
    (dst / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    return str(dst)


def test_merge_refuses_tokenizers_that_share_a_vocabulary_but_not_casing(tiny_model_path, tmp_path):
    """Before: merged, though 'Hello' is one token for one model and [UNK] for the other."""
    a = _save_variant(tiny_model_path, tmp_path / "a", 1)
    b = _cased(_save_variant(tiny_model_path, tmp_path / "b-src", 2), tmp_path / "b")
    with pytest.raises(MergeError) as err:
        merge([a, b], "average", output=tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"{b}: same vocabulary but its tokenizer reads text differently (do_lower_case=False, "
                              f"{a}'s has True; "), message
    assert "cannot be merged" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    assert merge([a, _save_variant(tiny_model_path, tmp_path / "c", 3)], "average") is not None  # same casing: fine
