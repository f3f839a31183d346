"""data/fetch_public.py writes files that embedkit's STS readers read back unchanged (Hub mocked)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from embedkit.data.sts import read_sick, read_sts_year, read_stsb

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("fetch_public", ROOT / "data" / "fetch_public.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_load_dataset(name, split):
    if name == "RobZamp/sick":  # the `sick` schema: SemEval_set says which split each pair is from
        return {"pair_ID": [1, 2, 3], "sentence_A": ["s a", "t\ta", "u a"], "sentence_B": ["s b", "t b", "u b"],
                "relatedness_score": [4.5, 3.0, 1.0], "SemEval_set": ["TRAIN", "TEST", "TEST"]}
    scale = 1.0 if name == "sentence-transformers/stsb" else 5.0
    return {"sentence1": [f"{name} a\tb", "two"], "sentence2": ["x", "y\nz"], "score": [0.2 * scale, 0.8 * scale]}


def test_fetch_writes_senteval_layout(tmp_path):
    written = load_script().fetch(tmp_path, load_dataset=fake_load_dataset)
    assert not list(tmp_path.rglob("*.partial"))
    year = read_sts_year(tmp_path / "sts" / "STS12")
    assert year.sentences1 == ["mteb/sts12-sts a b", "two"] and year.sentences2 == ["x", "y z"]
    assert year.scores == pytest.approx([1.0, 4.0])
    dev = read_stsb(tmp_path / "sts" / "stsbenchmark" / "sts-dev.csv")
    assert dev.scores == pytest.approx([1.0, 4.0])  # [0, 1] on the Hub → 0–5 in the files
    test = read_sick(tmp_path / "sts" / "sick" / "SICK_test_annotated.txt")
    assert test.sentences1 == ["t a", "u a"] and test.scores == [3.0, 1.0]  # SemEval's test pairs only
    assert len(read_sick(tmp_path / "sts" / "sick" / "SICK_all_semeval2014.txt")) == 2  # mteb's union, apart
    assert len(written) == 15
