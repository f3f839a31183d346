"""Readers for ranking data: answer-selection / reranking files and BEIR-layout retrieval folders.

Pure Python and strict, like :mod:`embedkit.data.sts`: a malformed line raises
:class:`~embedkit.errors.DataError` naming the file and line and what was expected.

- **Reranking** (``../shared/data/rerank/trecqa``): a CSV with a header ``qtext,label,atext``; label 1 means
  the candidate answers the question, 0 that it does not. :func:`read_rerank` groups the rows by question, in
  the order questions first appear; a question may recur later in the file (its rows are merged).
- **Retrieval** (the BEIR layout): ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl``
  (``_id``, ``text``) and ``qrels/<split>.tsv`` (a header, then ``query-id<TAB>corpus-id<TAB>score``).
  :func:`read_beir` returns the three, keeping only queries with at least one relevant document.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

from embedkit.data.sts import sha256_file
from embedkit.data.textio import json_objects, utf8_errors
from embedkit.errors import DataError

RERANK_COLUMNS = ("qtext", "label", "atext")


@dataclass
class RerankQuery:
    """One question with its labelled candidates (texts in file order)."""

    query: str
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)

    @property
    def scorable(self) -> bool:
        """Whether MAP / MRR are defined in the usual answer-selection sense: a positive and a negative."""
        return bool(self.positives) and bool(self.negatives)


@dataclass
class RerankSet:
    name: str
    queries: list[RerankQuery]
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256, for provenance

    def pairs(self) -> tuple[list[str], list[str]]:
        """(question, answer) for every positive candidate, in file order: training pairs."""
        anchors, positives = [], []
        for q in self.queries:
            anchors += [q.query] * len(q.positives)
            positives += q.positives
        return anchors, positives

    def candidates(self) -> list[str]:
        """Every candidate answer, label 1 and 0, in file order: a mining corpus."""
        return [a for q in self.queries for a in (*q.positives, *q.negatives)]


def _label(text: str, path: Path, lineno: int) -> int:
    if text.strip() not in ("0", "1"):
        raise DataError(f"{path}:{lineno}: label: expected 0 or 1, got {text!r}")
    return int(text)


def read_rerank(path: str | Path, name: str | None = None) -> RerankSet:
    """Read a reranking CSV (header ``qtext,label,atext``) into questions with positive and negative candidates."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a reranking CSV file (qtext,label,atext)")
    if not path.is_file():
        raise DataError(f"{path}: reranking file not found (expected a CSV with header qtext,label,atext)")
    by_query: dict[str, RerankQuery] = {}
    with utf8_errors(path), open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != RERANK_COLUMNS:
            raise DataError(f"{path}:1: expected the header qtext,label,atext, got {','.join(header or [])!r}")
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 columns (qtext,label,atext), got {len(row)}")
            qtext, label, atext = row
            if not qtext.strip() or not atext.strip():
                raise DataError(f"{path}:{lineno}: empty {'qtext' if not qtext.strip() else 'atext'}")
            q = by_query.setdefault(qtext, RerankQuery(qtext))
            (q.positives if _label(label, path, lineno) else q.negatives).append(atext)
    if not by_query:
        raise DataError(f"{path}: no rows after the header")
    return RerankSet(name or path.stem, list(by_query.values()), files={str(path): sha256_file(path)})


@dataclass
class BeirSet:
    name: str
    corpus: dict[str, str]  # doc id -> "title text" (title and text joined by a space when there is a title)
    queries: dict[str, str]  # query id -> text (only queries with a relevant document)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance > 0}
    files: dict[str, str] = field(default_factory=dict)


def _jsonl(path: Path, what: str) -> dict[str, dict]:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found (expected the BEIR layout: corpus.jsonl, queries.jsonl, "
                        "qrels/<split>.tsv)")
    out: dict[str, dict] = {}
    with utf8_errors(path):
        for lineno, row in json_objects(path):
            if not isinstance(row.get("_id"), (str, int)):
                raise DataError(f"{path}:{lineno}: expected an object with an '_id' and a 'text'")
            if not isinstance(row.get("text"), str):
                raise DataError(f"{path}:{lineno}: 'text': expected a string")
            key = str(row["_id"])
            if key in out:
                raise DataError(f"{path}:{lineno}: _id {key!r} appears twice")
            out[key] = row
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def ranking_name(kind: str, path: str | Path, split: str = "test") -> str:
    """``trecqa-dev`` for ``…/trecqa/dev.csv``; ``<folder>-<split>`` for a BEIR folder."""
    path = Path(path)
    return f"{path.parent.name}-{path.stem}" if kind == "rerank" else f"{path.name}-{split}"


def check_beir_layout(folder: str | Path, split: str = "test") -> Path:
    """The qrels file of ``split`` in a BEIR folder, after checking that the folder's three files exist (cheap:
    nothing is parsed; for validation before a large corpus is read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: retrieval folder not found (expected corpus.jsonl, queries.jsonl, qrels/)")
    for fname, what in (("corpus.jsonl", "corpus file"), ("queries.jsonl", "queries file")):
        if not (folder / fname).is_file():
            raise DataError(f"{folder / fname}: {what} not found (expected the BEIR layout: corpus.jsonl, "
                            "queries.jsonl, qrels/<split>.tsv)")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DataError(f"{qrels_path}: qrels for split {split!r} not found"
                        + (f"; this folder has: {', '.join(have)}" if have else ""))
    return qrels_path


# Folders read by validation, kept for the training run's own read of the same unchanged files (a large corpus is
# parsed once per run); each entry is handed out once.
_READ: dict[tuple, BeirSet] = {}
_KEEP = 4


def _signature(folder: Path, qrels_path: Path) -> tuple:
    files = (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path)
    return (str(folder.resolve()), *((st.st_ino, st.st_size, st.st_mtime_ns) for st in (f.stat() for f in files)))


def read_beir(folder: str | Path, split: str = "test", name: str | None = None) -> BeirSet:
    """Read a BEIR-layout folder; qrels with relevance ≤ 0 are dropped, ids not in corpus/queries are errors."""
    folder = Path(folder)
    qrels_path = check_beir_layout(folder, split)
    key = _signature(folder, qrels_path)
    if key in _READ:
        return replace(_READ.pop(key), name=name or folder.name)
    data = _read_beir(folder, qrels_path)
    while len(_READ) >= _KEEP:
        _READ.pop(next(iter(_READ)))
    _READ[key] = data
    return replace(data, name=name or folder.name)


def _read_beir(folder: Path, qrels_path: Path) -> BeirSet:
    corpus_rows = _jsonl(folder / "corpus.jsonl", "corpus file")
    query_rows = _jsonl(folder / "queries.jsonl", "queries file")
    qrels: dict[str, dict[str, int]] = {}
    with utf8_errors(qrels_path), open(qrels_path, encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or row == [""]:
                continue
            if lineno == 1 and not row[-1].strip().lstrip("-").isdigit():
                continue  # the header (query-id, corpus-id, score)
            if len(row) != 3:
                raise DataError(f"{qrels_path}:{lineno}: expected 3 tab-separated columns "
                                f"(query-id, corpus-id, score), got {len(row)}")
            qid, did, score = (c.strip() for c in row)
            try:
                rel = int(score)
            except ValueError:
                raise DataError(f"{qrels_path}:{lineno}: score: expected an integer, got {score!r}") from None
            if qid not in query_rows:
                raise DataError(f"{qrels_path}:{lineno}: query-id {qid!r} is not in queries.jsonl")
            if did not in corpus_rows:
                raise DataError(f"{qrels_path}:{lineno}: corpus-id {did!r} is not in corpus.jsonl")
            if rel > 0:
                qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise DataError(f"{qrels_path}: no relevant (score > 0) query-document pairs")
    corpus = {k: " ".join(p for p in (str(r.get("title") or "").strip(), r["text"]) if p)
              for k, r in corpus_rows.items()}
    queries = {k: query_rows[k]["text"] for k in qrels}
    files = {str(p): sha256_file(p) for p in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path)}
    return BeirSet(folder.name, corpus, queries, qrels, files)
