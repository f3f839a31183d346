"""The reranking and BEIR readers: grouping, counts on the shared TREC QA files, and one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from embedkit.data.ranking import read_beir, read_rerank
from embedkit.errors import DataError


def test_trecqa_groups_questions_as_the_file_holds_them(data_dir):
    for split, n_questions, n_rows in (("train", 93, 4718), ("dev", 81, 1148)):
        path = data_dir / "rerank" / "trecqa" / f"{split}.csv"
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        got = read_rerank(path)
        assert len(got.queries) == n_questions == len({r["qtext"] for r in rows})
        assert sum(len(q.positives) + len(q.negatives) for q in got.queries) == n_rows == len(rows)
        anchors, positives = got.pairs()
        assert len(anchors) == sum(r["label"] == "1" for r in rows)
        assert {(a, p) for a, p in zip(anchors, positives)} == {
            (r["qtext"], r["atext"]) for r in rows if r["label"] == "1"}


def test_rerank_merges_a_question_that_recurs(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("qtext,label,atext\nq1,1,a\nq2,0,b\nq1,0,c\n", encoding="utf-8")
    got = read_rerank(f)
    assert [(q.query, q.positives, q.negatives) for q in got.queries] == [("q1", ["a"], ["c"]), ("q2", [], ["b"])]
    assert [q.scorable for q in got.queries] == [True, False]
    assert got.candidates() == ["a", "c", "b"]


@pytest.mark.parametrize("text, expected", [
    ("question,label,answer\nq,1,a\n", r"r\.csv:1: expected the header qtext,label,atext"),
    ("qtext,label,atext\nq,yes,a\n", r"r\.csv:2: label: expected 0 or 1, got 'yes'"),
    ("qtext,label,atext\nq,1\n", r"r\.csv:2: expected 3 columns"),
    ("qtext,label,atext\n", r"r\.csv: no rows after the header"),
])
def test_rerank_errors_name_file_and_line(tmp_path, text, expected):
    f = tmp_path / "r.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        read_rerank(f)


def _beir(tmp_path, qrels: str):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "text": "two"}]), encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]), encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return tmp_path


def test_beir_keeps_queries_with_a_relevant_document(tmp_path):
    got = read_beir(_beir(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n"))
    assert got.corpus == {"d1": "T one", "d2": "two"}
    assert got.queries == {"q1": "first"} and got.qrels == {"q1": {"d1": 1}}


@pytest.mark.parametrize("qrels, expected", [
    ("query-id\tcorpus-id\tscore\nq9\td1\t1\n", r"test\.tsv:2: query-id 'q9' is not in queries\.jsonl"),
    ("query-id\tcorpus-id\tscore\nq1\td9\t1\n", r"test\.tsv:2: corpus-id 'd9' is not in corpus\.jsonl"),
    ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test\.tsv:2: score: expected an integer"),
])
def test_beir_errors_name_file_and_line(tmp_path, qrels, expected):
    with pytest.raises(DataError, match=expected):
        read_beir(_beir(tmp_path, qrels))


def test_beir_names_the_missing_split(tmp_path):
    with pytest.raises(DataError, match=r"qrels for split 'dev' not found; this folder has: test"):
        read_beir(_beir(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\n"), split="dev")
