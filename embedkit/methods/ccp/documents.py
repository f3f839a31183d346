"""CCP's data builder: a text file of documents → (anchor sentence, context positive, document id) rows.

Torch-free (validation reads the whole file through here, with file and line in every error).

How a file holds its documents (``method.documents``):

* ``line`` — one document a line (a line is split into sentences);
* ``paragraph`` — documents separated by one or more blank lines;
* ``chunk`` — the file has no document boundaries (e.g. a corpus of one sentence a line whose boundaries were
  lost): every ``chunk_lines`` consecutive non-blank lines form a pseudo-document; the last chunk takes the
  remainder, and a remainder of a single line joins the chunk before it.

A document's text is its lines joined with spaces, split into sentences by :func:`split_sentences`; with
``split_sentences: false`` each non-blank line is one sentence instead (a file already one sentence a line).

The rows: for the sentences ``s_0 … s_{m−1}`` of a document, each ``s_i`` is an anchor once for every other
sentence ``s_j`` of the same document with ``1 ≤ |i − j| ≤ window`` (both directions: ``(s_i, s_j)`` and
``(s_j, s_i)`` are two rows). A positive with the anchor's very text (a sentence repeated in a document) is
left out. The third column is the document's index (``label``: sentence-transformers hands it to the loss as
``labels``), which the loss uses to keep the document's other sentences out of the anchor's negatives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from embedkit.data import cache, sources
from embedkit.data.sources import TrainData
from embedkit.data.sts import sha256_file
from embedkit.data.textio import utf8_errors
from embedkit.errors import DataError

LAYOUTS = ("line", "paragraph", "chunk")

# Words that end in a full stop without ending a sentence (titles, "e.g.", month names Brown-style news uses).
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e cf al no nos vol fig gov gen col lt sgt capt rep sen rev hon
inc ltd co corp dept univ jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m u.s u.k
""".split())

# A candidate boundary: terminal punctuation, any closing quotes/brackets, whitespace, then what can open a
# sentence (an upper-case letter or a digit, possibly after an opening quote or bracket).
_BOUNDARY = re.compile(r"([.!?…]+[\"'”’)\]]*)\s+(?=[\"'“‘(\[]*[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, by a small rule-based splitter.

    None of embedkit's dependencies splits sentences (nltk's punkt and spaCy are not dependencies, and punkt
    needs a model download), so the rule is written here: a sentence ends at ``.``, ``!``, ``?`` or ``…``
    (with any closing quotes or brackets) followed by white space and an upper-case letter or digit, except
    after a known abbreviation (:data:`ABBREVIATIONS`, e.g. "Mr.", "Gov.", "U.S.") or a single-letter initial
    ("J. M. Cheshire"). It does not try to be right on every text: a lower-case sentence start is not split,
    and an abbreviation that does end a sentence keeps the next sentence attached. Whitespace runs collapse
    to one space."""
    text = " ".join(text.split())
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if m.group(1).startswith("."):
            word = text[start:m.start()].rsplit(" ", 1)[-1].lstrip("\"'“‘([").lower()
            if word in ABBREVIATIONS or len(word) == 1 and word.isalpha():
                continue
        out.append(text[start:m.end(1)])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return [s for s in out if s]


@dataclass
class Document:
    """A document's first line in the file and its sentences, in order."""

    line: int
    sentences: list[str]


def _blocks(path: Path, layout: str, chunk_lines: int | None) -> Iterator[tuple[int, list[str]]]:
    """(first line, the document's non-blank lines) for each document of the file, in file order, read a line at
    a time (the last document is held back one document: a one-line chunk remainder joins it)."""
    held: tuple[int, list[str]] | None = None
    with utf8_errors(path), open(path, encoding="utf-8") as fh:
        current: list[str] = []
        first = 0
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            done = None
            if layout == "line":
                done = (lineno, [line]) if line else None
            elif not line:
                if layout == "paragraph" and current:
                    done, current = (first, current), []
            else:
                if not current:
                    first = lineno
                current.append(line)
                if layout == "chunk" and len(current) == chunk_lines:
                    done, current = (first, current), []
            if done is not None:
                if held is not None:
                    yield held
                held = done
        if current:
            if layout == "chunk" and len(current) == 1 and held is not None:
                held[1].extend(current)  # a one-line remainder has no context of its own
            else:
                if held is not None:
                    yield held
                held = (first, current)
        if held is not None:
            yield held


def iter_documents(path: str | Path, layout: str = "paragraph", chunk_lines: int | None = None,
                   split: bool = True) -> Iterator[Document]:
    """The documents of a UTF-8 text file, one at a time (see the module docstring for ``layout``); ``split``:
    split each document's text into sentences with :func:`split_sentences`, else each non-blank line is one
    sentence."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "chunk" and (chunk_lines is None or chunk_lines < 2):
        raise ValueError("layout 'chunk' needs chunk_lines >= 2")
    for first, lines in _blocks(Path(path), layout, chunk_lines):
        sentences = split_sentences(" ".join(lines)) if split else [" ".join(x.split()) for x in lines]
        yield Document(first, sentences)


def read_documents(path: str | Path, layout: str = "paragraph", chunk_lines: int | None = None,
                   split: bool = True) -> list[Document]:
    """Every document of the file (:func:`iter_documents`)."""
    return list(iter_documents(path, layout, chunk_lines, split))


def context_pairs(documents: list[Document], window: int) -> tuple[list[str], list[str], list[int]]:
    """(anchors, positives, document ids): every ordered pair of distinct sentences of one document at most
    ``window`` sentences apart; the id is the document's position in ``documents``."""
    anchors, positives, ids = [], [], []
    for d, doc in enumerate(documents):
        s = doc.sentences
        for i, anchor in enumerate(s):
            for j in range(max(0, i - window), min(len(s), i + window + 1)):
                if j != i and s[j] != anchor:
                    anchors.append(anchor)
                    positives.append(s[j])
                    ids.append(d)
    return anchors, positives, ids


def _kept(path: str | Path, docs: Iterable[Document], layout: str, chunk_lines: int | None,
          short_documents: str, skipped: list[int]) -> Iterator[Document]:
    """The documents with two distinct sentences; a shorter one is refused (``short_documents: error``) or left
    out and counted in ``skipped[0]``. An empty file, or one whose every document is left out, is refused."""
    k = 0
    kept = False
    for k, doc in enumerate(docs, start=1):
        if len(set(doc.sentences)) >= 2:
            kept = True
            yield doc
            continue
        if short_documents == "skip":
            skipped[0] += 1
            continue
        n = len(doc.sentences)
        what = "one sentence" if n <= 1 else f"{n} sentences but no two distinct ones"
        hint = ("; documents: line reads one document a line, documents: paragraph blank-line separated "
                "ones" if layout == "line" else "")
        raise DataError(f"{path}:{doc.line}: document {k} has {what}, so no context positive; CCP needs at least "
                        "two distinct sentences per document: merge or remove it, or set "
                        f"method.short_documents: skip to leave such documents out{hint}")
    if not k:
        raise DataError(f"{path}: the training set is empty (no non-blank line); CCP reads documents: "
                        + {"line": "one a line", "paragraph": "blank-line separated",
                           "chunk": f"every {chunk_lines} lines"}[layout])
    if not kept:
        raise DataError(f"{path}: none of its {k} document(s) has two distinct sentences (all skipped); "
                        "CCP needs at least two per document")


def build_rows(path: str | Path, layout: str, window: int, chunk_lines: int | None = None, split: bool = True,
               short_documents: str = "error") -> tuple[TrainData, int]:
    """The training rows of a document file, and the number of documents left out.

    A document with fewer than two distinct sentences has no context positive: with ``short_documents:
    error`` it is refused (``file:line`` of the document), with ``skip`` it is left out (and counted). An
    empty file, or one where no document has two sentences, is refused."""
    skipped = [0]
    kept = list(_kept(path, read_documents(path, layout, chunk_lines, split), layout, chunk_lines, short_documents,
                      skipped))
    skipped = skipped[0]
    anchors, positives, ids = context_pairs(kept, window)
    sentences = sum(len(d.sentences) for d in kept)
    description = (f"documents:{path} ({len(kept)} documents ({layout}), {sentences} sentences, "
                   f"window {window})")
    data = TrainData({"anchor": anchors, "positive": positives, "label": ids}, description, sha256_file(Path(path)))
    return data, skipped


def cached_rows(path: str | Path, layout: str, window: int, chunk_lines: int | None = None, split: bool = True,
                short_documents: str = "error") -> tuple[TrainData, int | None] | None:
    """:func:`build_rows`' rows written to the data cache (:mod:`embedkit.data.cache`) a chunk at a time, for a
    streamed run: memory holds one document and one chunk of rows. Returns the rows and the documents left out
    (``None`` when the rows came from the cache), or ``None`` when the cache cannot be written."""
    file = Path(path)
    sha = sha256_file(file)
    names, types = ["anchor", "positive", "label"], ["text", "text", cache.ID]
    key = cache.entry_key(sha, {"format": "ccp-documents", "layout": layout, "window": window,
                                "chunk_lines": chunk_lines, "split": split, "short_documents": short_documents,
                                "columns": names, "types": types})
    counts: list[int] = []  # [documents left out], once the file is converted

    def fill(writer: cache.EntryWriter) -> cache.ArrowRows:
        counts.append(0)
        buffer: tuple[list, list, list] = ([], [], [])
        for d, doc in enumerate(_kept(path, iter_documents(path, layout, chunk_lines, split), layout, chunk_lines,
                                      short_documents, counts)):
            for column, values in zip(buffer, context_pairs([doc], window), strict=True):
                column.extend(values if column is not buffer[2] else [d] * len(values))
            if len(buffer[0]) >= sources.CHUNK_ROWS:
                writer.write(dict(zip(names, buffer, strict=True)))
                buffer = ([], [], [])
        if buffer[0]:
            writer.write(dict(zip(names, buffer, strict=True)))
        return writer.commit()

    rows = cache.lookup_or_write(key, names, types, str(path), fill)
    if rows is None:
        return None
    skipped = counts[0] if counts else None
    return TrainData(None, f"documents:{path} ({layout}, window {window}, streamed)", sha, rows=rows), skipped
