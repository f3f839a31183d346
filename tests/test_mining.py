"""Hard-negative mining (embedkit.mining.mine_negatives, `embedkit data mine`, `data.train.mine`): labelled
positives never come back as negatives, the false-negative filter drops exactly the candidates above its
threshold, the rank window and the seed are honoured, the CLI writes its three files or refuses in one line, and
a training run mines once and reads its own file back on resume."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from embedkit.cli import main
from embedkit.errors import RecipeError
from embedkit.mining import mine_negatives
from embedkit.recipe import MineSection


def settings(**kw) -> MineSection:
    return MineSection(**{"seed": 0, **kw})


def angle_encoder(cosines: dict[str, float]):
    """Unit vectors in 2-D with cos(anchor 'q', t) = cosines[t] exactly as given (anchor 'q' is [1, 0])."""
    def encode(texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            c = 1.0 if t == "q" else cosines[t]
            rows.append([c, math.sqrt(max(0.0, 1 - c * c))])
        return torch.tensor(rows, dtype=torch.float64)
    return encode


# Scores of the candidates against the anchor 'q'; the positive 'p' scores 0.8.
SCORES = {"p": 0.8, "c90": 0.90, "c78": 0.78, "c77": 0.77, "c74": 0.74, "c71": 0.71, "c65": 0.65, "c50": 0.50,
          "c30": 0.30, "c10": 0.10}
CANDIDATES = [t for t in SCORES if t != "p"]


def mine_constructed(**kw):
    return mine_negatives(None, ["q"], ["p"], settings(**{"range_max": 9, **kw}), corpus=CANDIDATES,
                          encoder=angle_encoder(SCORES), backend="torch")


def test_ratio_filter_drops_exactly_the_candidates_above_ratio_times_positive():
    mined = mine_constructed(num_negatives=3, max_score_ratio=0.95)  # threshold 0.95 * 0.8 = 0.76
    dropped = {t for t in CANDIDATES if SCORES[t] > 0.95 * 0.8}
    assert dropped == {"c90", "c78", "c77"}
    assert sorted(mined.dropped_scores.round(6).tolist()) == sorted(SCORES[t] for t in dropped)
    assert mined.negatives == [["c74", "c71", "c65"]]  # the best three of what is left
    assert mined.stats["dropped_by_filter"] == 3 and mined.stats["dropped_by_ratio"] == 3


def test_margin_filter_drops_exactly_the_candidates_above_positive_minus_margin():
    mined = mine_constructed(num_negatives=2, max_score_ratio=None, margin=0.12)  # threshold 0.68
    assert {round(s, 6) for s in mined.dropped_scores} == {0.90, 0.78, 0.77, 0.74, 0.71}
    assert mined.negatives == [["c65", "c50"]]
    assert mined.stats["dropped_by_margin"] == 5 and mined.stats["dropped_by_ratio"] == 0
    both = mine_constructed(num_negatives=2, max_score_ratio=0.95, margin=0.12)
    assert both.negatives == [["c65", "c50"]] and both.stats["dropped_by_filter"] == 5


def test_no_filter_keeps_the_top_candidates():
    mined = mine_constructed(num_negatives=3, max_score_ratio=None)
    assert mined.negatives == [["c90", "c78", "c77"]] and mined.dropped_scores.size == 0


def test_filter_uses_each_rows_own_positive():
    """Two rows of one anchor: the positive scoring 0.8 and one scoring 0.6 set different thresholds."""
    scores = {**SCORES, "p2": 0.6}
    mined = mine_negatives(None, ["q", "q"], ["p", "p2"], settings(num_negatives=2, range_max=9),
                           corpus=CANDIDATES, encoder=angle_encoder(scores), backend="torch")
    # row 1: drop > 0.76; row 2: drop > 0.57. Neither positive is a candidate of the anchor.
    assert mined.negatives == [["c74", "c71"], ["c50", "c30"]]


def test_rows_short_of_k_are_dropped_and_counted():
    mined = mine_constructed(num_negatives=3, max_score_ratio=0.95, range_max=5)  # window c90..c71: 2 survive
    assert mined.anchors == [] and mined.stats["rows_short"] == 1 and mined.stats["rows"] == 0


def random_encoder(texts: list[str]) -> torch.Tensor:
    """Deterministic pseudo-random unit vectors per text; a positive 'A|i' sits close to its anchor 'A'."""
    out = []
    for t in texts:
        base = t.split("|")[0]
        v = np.random.default_rng(zlib.crc32(base.encode())).normal(size=16)
        if "|" in t:
            v = v + 0.3 * np.random.default_rng(zlib.crc32(t.encode())).normal(size=16)
        out.append(v / np.linalg.norm(v))
    return torch.tensor(np.array(out), dtype=torch.float32)


def pairs_with_several_positives(n_anchors: int = 12, per: int = 3) -> tuple[list[str], list[str]]:
    anchors, positives = [], []
    for a in range(n_anchors):
        for i in range(per):
            anchors.append(f"anchor {a}")
            positives.append(f"anchor {a}|{i}")  # near its anchor: the top candidates of the anchor
    return anchors, positives


def test_labelled_positives_of_the_anchor_are_never_negatives():
    anchors, positives = pairs_with_several_positives()
    labelled = {a: {p for a2, p in zip(anchors, positives) if a2 == a} for a in anchors}
    mined = mine_negatives(None, anchors, positives, settings(num_negatives=4, max_score_ratio=None),
                           encoder=random_encoder, backend="torch")
    assert len(mined.anchors) == len(anchors)
    for a, negs in zip(mined.anchors, mined.negatives):
        assert not set(negs) & labelled[a] and a not in negs and len(set(negs)) == 4
    # Without removal the positives would have been the top candidates: the removal did something.
    assert mined.stats["dropped_labelled_positive"] >= len(anchors) * 2


def test_rank_window_is_respected():
    anchors, positives = pairs_with_several_positives(8, 1)
    corpus = [f"doc {i}" for i in range(40)]
    mined = mine_negatives(None, anchors, positives, settings(num_negatives=3, range_min=2, range_max=5,
                                                              max_score_ratio=None),
                           corpus=corpus, encoder=random_encoder, backend="torch")
    texts = list(dict.fromkeys([*anchors, *positives, *corpus]))
    table = dict(zip(texts, random_encoder(texts)))
    pool = list(dict.fromkeys([*corpus, *positives]))
    for a, p, negs in zip(mined.anchors, mined.positives, mined.negatives):
        ranked = sorted((t for t in pool if t != p), key=lambda t: -float(table[a] @ table[t]))
        assert negs == ranked[2:5]


def test_random_sampling_is_deterministic_for_a_seed_and_stays_in_the_kept_set():
    anchors, positives = pairs_with_several_positives(10, 2)
    corpus = [f"doc {i}" for i in range(60)]

    def run(seed: int, strategy: str = "random"):
        return mine_negatives(None, anchors, positives, settings(num_negatives=3, range_max=20, seed=seed,
                                                                 max_score_ratio=None, sampling_strategy=strategy),
                              corpus=corpus, encoder=random_encoder, backend="torch")

    a, b, c, top = run(1), run(1), run(2), run(1, "top")
    assert a.negatives == b.negatives
    assert a.negatives != c.negatives
    window = run(1, "top")
    assert window.negatives != a.negatives
    full = mine_negatives(None, anchors, positives, settings(num_negatives=20, range_max=20, max_score_ratio=None),
                          corpus=corpus, encoder=random_encoder, backend="torch")
    for sampled, allowed in zip(a.negatives, full.negatives):
        assert set(sampled) <= set(allowed)
        assert sampled == [t for t in allowed if t in sampled]  # written best first
    assert top.negatives == [row[:3] for row in full.negatives]


def test_settings_refuse_a_window_too_small_for_k():
    with pytest.raises(ValueError, match="does not fit the rank window"):
        MineSection(num_negatives=5, range_min=2, range_max=4)
    with pytest.raises(ValueError, match="greater than range_min"):
        MineSection(range_min=5, range_max=5)


# ----------------------------------------------------------------------------------------------------------
# CLI and recipe hook on the tiny model


def write_pairs(folder: Path, n: int = 24) -> Path:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = []
    for i in range(n):
        a = f"where is the {words[i % 12]} of {words[(i * 5) % 12]} number {i} ?"
        rows.append({"anchor": a, "positive": f"the {words[i % 12]} lives near {words[(i * 7) % 12]} {i}"})
        if i % 3 == 0:  # a second labelled positive for some anchors
            rows.append({"anchor": a, "positive": f"a {words[(i * 7) % 12]} answer about {words[i % 12]} {i}"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_writes_the_three_files(tmp_path, spread_model_path, capsys):
    pairs = write_pairs(tmp_path)
    out = tmp_path / "out" / "mined.jsonl"
    rc = main(["data", "mine", "--pairs", str(pairs), "--model", spread_model_path, "--num-negatives", "2",
               "--max-score-ratio", "none", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = read_jsonl(out)
    given = [json.loads(line) for line in pairs.read_text().splitlines()]
    labelled: dict[str, set] = {}
    for r in given:
        labelled.setdefault(r["anchor"], set()).add(r["positive"])
    assert len(rows) == len(given)
    assert list(rows[0]) == ["anchor", "positive", "negative_1", "negative_2"]
    for r in rows:
        assert not {r["negative_1"], r["negative_2"]} & labelled[r["anchor"]]
    stats = json.loads((tmp_path / "out" / "mined.stats.json").read_text())
    assert stats["rows"] == len(rows) and stats["settings"]["max_score_ratio"] is None
    assert stats["unique_texts"] == len({*labelled, *(r["positive"] for r in given)})
    png = (tmp_path / "out" / "mined.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob("*.partial"))


@pytest.mark.parametrize("args, message", [
    (["--num-negatives", "0"], "--num-negatives: "),
    (["--range-min", "3", "--range-max", "4", "--num-negatives", "2"], "does not fit the rank window"),
    (["--max-score-ratio", "1.5"], "--max-score-ratio: "),
    (["--corpus", "missing.txt"], "missing.txt: corpus data file not found"),
])
def test_cli_refuses_bad_settings_in_one_line(tmp_path, tiny_model_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    pairs = write_pairs(tmp_path)
    rc = main(["data", "mine", "--pairs", str(pairs), "--model", tiny_model_path, "-o", "x.jsonl", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_refuses_bad_pairs_naming_file_and_line(tmp_path, tiny_model_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": ""}\n', encoding="utf-8")
    rc = main(["data", "mine", "--pairs", str(bad), "--model", tiny_model_path, "-o", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}:2:" in err and "positive" in err and len(err.strip().splitlines()) == 1, err
    three = tmp_path / "three.csv"
    three.write_text("q,a,b\nx,y,z\n", encoding="utf-8")
    rc = main(["data", "mine", "--pairs", str(three), "--model", tiny_model_path, "-o", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "expected columns 'anchor' and 'positive'" in err
    rc = main(["data", "mine", "--pairs", str(three), "--model", tiny_model_path, "-o", str(tmp_path / "o.csv")])
    assert rc == 2 and "ending in .jsonl" in capsys.readouterr().err


def test_rerank_file_as_pairs_and_corpus(tmp_path, spread_model_path, capsys):
    """A reranking CSV gives its label-1 pairs; its label-0 answers join the corpus (--candidates, default)."""
    csv = tmp_path / "rr.csv"
    lines = ["qtext,label,atext"]
    for q in range(4):
        lines += [f"question {q} about {w} ?,{int(i < 2)},answer {i} of {q} on {w}"
                  for i, w in enumerate(["red", "green", "blue", "pink", "grey"])]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "m.jsonl"
    assert main(["data", "mine", "--pairs", str(csv), "--model", spread_model_path, "--num-negatives", "3",
                 "--max-score-ratio", "none", "-o", str(out)]) == 0, capsys.readouterr().err
    rows = read_jsonl(out)
    assert len(rows) == 8 and {r["positive"].split()[1] for r in rows} == {"0", "1"}
    stats = json.loads((tmp_path / "m.stats.json").read_text())
    assert stats["corpus"] == 20
    for r in rows:  # a question's own two positives never; other answers (label 0 included) may be
        q = r["anchor"].split()[1]
        assert all(not (n.startswith(("answer 0 of", "answer 1 of")) and n.split()[3] == q)
                   for n in (r["negative_1"], r["negative_2"], r["negative_3"]))
    again = ["data", "mine", "--pairs", str(csv), "--model", spread_model_path, "--num-negatives", "3",
             "--max-score-ratio", "none", "--no-candidates", "-o", str(out)]
    capsys.readouterr()
    assert main(again) == 2  # an existing OUT.jsonl is replaced only with --overwrite, as `embedkit encode` does
    assert capsys.readouterr().err.strip() == f"embedkit: error: --output {out}: already exists; pass --overwrite " \
        "to replace it"
    assert len(read_jsonl(out)) == 8
    assert main([*again, "--overwrite"]) == 0
    assert json.loads((tmp_path / "m.stats.json").read_text())["corpus"] == 8


def mine_recipe(tmp: Path, model: str, method: str = "simcse-sup", k: int = 1, fmt: str | None = None,
                data: Path | None = None, **mine) -> Path:
    data = data or write_pairs(tmp)
    recipe = {
        "model": {"name": model, "pooling": "mean", "max_seq_length": 16},
        "data": {"train": {"path": str(data), **({"format": fmt} if fmt else {}),
                           "mine": {"num_negatives": k, "max_score_ratio": None, **mine}}, "dev": None},
        "method": {"name": method},
        "training": {"batch_size": 8, "max_steps": 2, "logging_steps": 1, "seed": 3, "save_steps": 2},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(tmp / "run")},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def test_recipe_refuses_mining_for_a_method_without_negative_columns(tmp_path, tiny_model_path):
    from embedkit.validate import load_recipe

    with pytest.raises(RecipeError,
                       match=r"recipe.yaml:\d+: data.train.mine: method 'simcse-unsup' reads text; mining gives"):
        load_recipe(mine_recipe(tmp_path, tiny_model_path, method="simcse-unsup"))
    with pytest.raises(RecipeError, match="mine.candidates needs format: rerank"):
        load_recipe(mine_recipe(tmp_path, tiny_model_path, candidates=True))
    with pytest.raises(RecipeError, match=r"data.train.mine.corpus: file not found: .*nope.txt"):
        load_recipe(mine_recipe(tmp_path, tiny_model_path, corpus=str(tmp_path / "nope.txt")))


def test_recipe_hook_adds_the_columns_and_is_reused_on_resume(tmp_path, spread_model_path, monkeypatch):
    from embedkit.training import mine as hook
    from embedkit.training.run import train
    from embedkit.validate import load_recipe_with_data

    recipe_path = mine_recipe(tmp_path, spread_model_path, k=1)
    results = train(str(recipe_path))
    mined_file = tmp_path / "run" / "mined" / "train.jsonl"
    rows = read_jsonl(mined_file)
    assert list(rows[0]) == ["anchor", "positive", "negative_1"]
    assert (tmp_path / "run" / "mined" / "train.stats.json").is_file()
    assert (tmp_path / "run" / "mined" / "train.png").is_file()
    assert results["train"]["global_step"] == 2
    before = mined_file.read_bytes()

    # What setup does on --resume: the same recipe and work folder read the file back, no mining.
    recipe, data = load_recipe_with_data(recipe_path)
    monkeypatch.setattr(hook, "run_mining", lambda *a, **k: pytest.fail("mined again on resume"))
    again = hook.mine_for_training(recipe, data, None, tmp_path / "run", None)
    assert again.columns == {c: [r[c] for r in rows] for c in rows[0]}
    assert mined_file.read_bytes() == before
    # Other settings are not the run's: mined anew.
    recipe.data.train.mine = recipe.data.train.mine.model_copy(update={"seed": 99})
    with pytest.raises(pytest.fail.Exception, match="mined again"):
        hook.mine_for_training(recipe, data, None, tmp_path / "run", None)


def test_train_format_rerank_reads_label_one_pairs(tmp_path, tiny_model_path):
    from embedkit.data.sources import read_local

    csv = tmp_path / "rr.csv"
    csv.write_text("qtext,label,atext\nq1,1,a1\nq1,0,a2\nq1,1,a3\nq2,0,b1\nq2,1,b2\n", encoding="utf-8")
    data = read_local(str(csv), "rerank", None)
    assert data.columns == {"anchor": ["q1", "q1", "q2"], "positive": ["a1", "a3", "b2"]}


def test_unit_vectors_without_a_process_group_encode_everything(tiny_model_path, monkeypatch):
    """Single process: one encode call over all texts (the sharded path is tested under torchrun)."""
    from embedkit import mining
    from embedkit.mining import unit_vectors
    from embedkit.model_ref import load_model

    model, _ = load_model(tiny_model_path)
    seen = []
    real = mining.encode
    monkeypatch.setattr(mining, "encode",
                        lambda m, texts, *a, **k: seen.append(len(texts)) or real(m, texts, *a, **k))
    out = unit_vectors(model, [f"text {i}" for i in range(10)], device="cpu")
    assert seen == [10] and out.shape[0] == 10
    assert torch.allclose(out.norm(dim=1), torch.ones(10), atol=1e-5)


def test_settings_object_from_namespace_works_with_the_engine():
    """The engine reads plain attributes: a namespace with the MineSection keys is enough (DebCSE-style reuse)."""
    ns = SimpleNamespace(num_negatives=1, range_min=0, range_max=3, max_score_ratio=None, margin=None,
                         sampling_strategy="top", seed=0, batch_size=8)
    mined = mine_negatives(None, ["q"], ["p"], ns, corpus=CANDIDATES, encoder=angle_encoder(SCORES),
                           backend="torch")
    assert mined.negatives == [["c90"]]


# ----------------------------------------------------------------------------------------------------------
# torchrun: each process encodes its shard, and the mined file is the single process's


COUNTING_DRIVER = """
import json, os, sys
from embedkit import encoding
real = encoding.encode
def counting(model, texts, *args, **kwargs):
    with open(os.environ["COUNT_FILE"] + "." + os.environ.get("RANK", "0"), "a") as fh:
        fh.write(json.dumps(len(texts)) + "\\n")
    return real(model, texts, *args, **kwargs)
encoding.encode = counting
from embedkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.multiproc
def test_two_processes_mine_the_same_file_each_encoding_its_shard(tmp_path, spread_model_path):
    import subprocess
    import sys

    from _mp_helpers import check_ok, child_env

    pairs = write_pairs(tmp_path, n=30)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"an unrelated line {i} about nothing in particular" for i in range(41)) + "\n")
    driver = tmp_path / "driver.py"
    driver.write_text(COUNTING_DRIVER, encoding="utf-8")
    args = ["data", "mine", "--pairs", str(pairs), "--model", spread_model_path, "--corpus", str(corpus),
            "--num-negatives", "3", "--sampling-strategy", "random", "--seed", "5",
            "--min-rows-kept", "0.25"]  # the filter keeps 18 of 40 rows, under the default half
    runs = {}
    for nproc in (1, 2):
        env = {**child_env(tmp_path), "COUNT_FILE": str(tmp_path / f"count{nproc}")}
        out = tmp_path / f"mined{nproc}.jsonl"
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        proc = subprocess.run([*launcher, str(driver), *args, "-o", str(out)], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=300)
        check_ok(proc, f"data mine with {nproc} process(es)")
        runs[nproc] = out.read_bytes()
    assert runs[1] == runs[2] and runs[1].count(b"\n") >= 10  # the filter leaves ~18 of 40
    n_texts = json.loads((tmp_path / "mined1.stats.json").read_text())["unique_texts"]
    single = [json.loads(x) for x in (tmp_path / "count1.0").read_text().split()]
    shards = [[json.loads(x) for x in (tmp_path / f"count2.{r}").read_text().split()] for r in (0, 1)]
    assert single == [n_texts]
    assert shards == [[math.ceil(n_texts / 2)], [n_texts - math.ceil(n_texts / 2)]]


def test_recipe_hook_on_a_rerank_file_knows_every_positive_and_adds_its_candidates(tmp_path, spread_model_path):
    from embedkit.modeling import build_model
    from embedkit.training.mine import mine_for_training
    from embedkit.validate import load_recipe_with_data

    csv = tmp_path / "rr.csv"
    lines = ["qtext,label,atext"]
    for q in range(5):
        lines += [f"question {q} about {w} ?,{int(i < 3)},answer {i} of {q} on {w}"
                  for i, w in enumerate(["red", "green", "blue", "pink", "grey", "teal"])]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe, data = load_recipe_with_data(mine_recipe(tmp_path, spread_model_path, fmt="rerank", data=csv, k=1))
    assert len(data) == 15  # the label-1 pairs
    mined = mine_for_training(recipe, data, build_model(recipe.model), tmp_path / "work", None)
    stats = json.loads((tmp_path / "work" / "mined" / "train.stats.json").read_text())
    assert stats["corpus"] == 30  # every candidate answer, label 0 too
    for a, n in zip(mined.columns["anchor"], mined.columns["negative_1"]):
        q = a.split()[1]
        assert not (n.split()[3] == q and n.split()[1] in ("0", "1", "2")), (a, n)


def test_faiss_backend_mines_what_torch_mines():
    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install faiss-cpu)")
    anchors, positives = pairs_with_several_positives(10, 2)
    corpus = [f"doc {i}" for i in range(50)]
    runs = [mine_negatives(None, anchors, positives, settings(num_negatives=3, range_min=1, range_max=12),
                           corpus=corpus, encoder=random_encoder, backend=b) for b in ("torch", "faiss")]
    assert runs[0].negatives == runs[1].negatives and runs[0].stats == runs[1].stats
