"""Training data as memory-mapped Arrow from reading to the trainer (issue #28, item 1): local files converted once
into the data cache in a streaming pass with the errors of a whole-file read, found there the second time,
``max_samples`` applied without reading the rest, Hub datasets kept as loaded, the overlap index bounded."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from embedkit.data import cache, sources
from embedkit.data.sources import read_local, read_train_source
from embedkit.errors import DataError


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache" / "data"
    cache.discard_pending()


def _lines(n: int) -> list[str]:
    return [f"sentence number {i} about the {('cat', 'dog', 'bird')[i % 3]}" for i in range(n)]


def test_second_read_finds_the_rows_in_the_cache(tmp_path, data_cache, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text("first\n\n  second  \r\nthird\n", encoding="utf-8")
    with cache.until_accepted():
        first = read_local(str(path), "auto", None)
    assert dict(first.columns) == {"text": ["first", "second", "third"]} and len(first) == 3
    assert not first.in_memory
    entries = sorted(p.name for p in data_cache.iterdir())
    assert [Path(e).suffix for e in entries] == [".arrow", ".json"]  # one complete entry, no partial file
    cache._pending.clear()  # as a new process: only what is on disk

    def broken(*_a, **_k):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(sources, "iter_text", broken)
    again = read_local(str(path), "auto", None)
    assert dict(again.columns) == dict(first.columns) and again.sha256 == first.sha256
    # Another content is another entry (keyed by the file's hash), read in full.
    path.write_text("other\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="read again"):
        read_local(str(path), "auto", None)


def test_trainer_gets_the_memory_mapped_cache_file(tmp_path, data_cache):
    path = tmp_path / "pairs.csv"
    path.write_text("s1,s2,score\na,b,0.5\nc,d, 1 \n", encoding="utf-8")
    data = read_local(str(path), "auto", None, types=("text", "text", "score"))
    ds = data.to_dataset(["sentence1", "sentence2", "score"])
    assert ds.column_names == ["sentence1", "sentence2", "score"]
    assert ds[:] == {"sentence1": ["a", "c"], "sentence2": ["b", "d"], "score": [0.5, 1.0]}
    assert [Path(f["filename"]).parent for f in ds.cache_files] == [data_cache]  # no copy through lists


def test_max_samples_keeps_the_first_rows_without_reading_the_rest(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(_lines(1000)) + "\n", encoding="utf-8")
    data = read_local(str(path), "auto", None)
    data.keep_first(5)
    assert len(data) == 5 and data.columns["text"] == _lines(5)
    assert sum(len(b["text"]) for b in data.batches(2)) == 5
    assert len(data.to_dataset(["text"])) == 5


def test_hub_max_samples_selects_before_any_column_is_read(tmp_path, monkeypatch):
    import datasets

    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": str(i % 5)} for i in range(500)]
    jsonl = tmp_path / "hub.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    read_sizes: list[int] = []
    original = datasets.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        if isinstance(key, str):
            read_sizes.append(len(self))
        return out

    monkeypatch.setattr(datasets.Dataset, "__getitem__", spy)
    src = SimpleNamespace(hub="json", split="train", config=None, columns=None, data_files=str(jsonl), max_samples=3)
    data = read_train_source(src, "cosent", ("sentence1", "sentence2", "score"), ("text", "text", "score"))
    assert max(read_sizes) == 3  # only the score column of the kept rows, to check and convert it
    ds = data.to_dataset(["sentence1", "sentence2", "score"])
    assert ds[:] == {"sentence1": ["a 0", "a 1", "a 2"], "sentence2": ["b 0", "b 1", "b 2"], "score": [0.0, 1.0, 2.0]}


@pytest.mark.parametrize("rows", [1, 2, 3])  # chunks of 1, 2 or 3 rows: the same errors as a whole-file read
def test_chunked_errors_are_those_of_a_whole_file_read(tmp_path, monkeypatch, rows):
    monkeypatch.setattr(sources, "CHUNK_ROWS", rows)
    path = tmp_path / "d.csv"
    types = ("text", "text", "score")
    # A bad score early and an empty first column later: the first column's problem is reported.
    path.write_text("a,b,s\nx,y,1\nx,y,bad\nx,y,2\n,y,3\nx,y,4\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:5: column 'a' is empty"):
        read_local(str(path), "auto", None, types=types)
    # A row the reader refuses, after both: it wins, as the whole file was read before any value was checked.
    path.write_text("a,b,s\nx,y,bad\n,y,3\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:4: expected 3 fields like the header, got 2"):
        read_local(str(path), "auto", None, types=types)
    path.write_text("a,b,s\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv: the training set is empty"):
        read_local(str(path), "auto", None, types=types)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"a": "x", "b": 1}\n{"a": "y", "b": "z"}\n{"a": "", "b": "z"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:3: key 'a' must be a non-empty string, got ''"):
        read_local(str(jsonl), "auto", None)


def test_a_refused_file_or_command_leaves_no_cache_entry(tmp_path, data_cache):
    path = tmp_path / "d.csv"
    path.write_text("a,b\nx,y\nx,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:3: column 'b' is empty"):
        read_local(str(path), "auto", None)
    assert not data_cache.exists() or not list(data_cache.iterdir())
    # A good file read by a command refused afterwards (its output folder, say): removed with the refusal.
    path.write_text("a,b\nx,y\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="refused"), cache.until_accepted():
        read_local(str(path), "auto", None)
        raise RuntimeError("refused")
    assert not list(data_cache.iterdir())
    with cache.until_accepted():
        read_local(str(path), "auto", None)
    assert sorted(p.suffix for p in data_cache.iterdir()) == [".arrow", ".json"]


def test_validation_holds_one_chunk_of_a_large_file(tmp_path, monkeypatch):
    """Python memory at its peak while a 200,000-line file (~9 MB; ~25 MB as a list of strings) is checked and
    converted: a chunk, not the file."""
    monkeypatch.setattr(sources, "_TEXT_BLOCK", 1 << 16, raising=False)
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(0, 200_000, 1000):
            fh.write("\n".join(_lines(1000)) + f" {i}\n")
    tracemalloc.start()
    try:
        data = read_local(str(path), "auto", None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) == 200_000
    assert peak < 3_000_000, f"peak {peak / 1e6:.1f} MB of Python memory"


def test_cache_entry_damaged_is_converted_again(tmp_path, data_cache):
    path = tmp_path / "corpus.txt"
    path.write_text("one\ntwo\n", encoding="utf-8")
    with cache.until_accepted():
        read_local(str(path), "auto", None)
    arrow = next(data_cache.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:10])  # truncated: its record's size no longer matches
    assert dict(read_local(str(path), "auto", None).columns) == {"text": ["one", "two"]}


def test_overlap_keeps_only_evaluation_hashes_and_reuses_them(tmp_path, monkeypatch):
    from embedkit.evaluation.overlap import EvalSet, TrainIndex, eval_index, measure_all

    path = tmp_path / "pairs.csv"
    path.write_text("a,b\nA man plays.,a woman sings\nx y,z w\nfoo,bar\n", encoding="utf-8")
    data = read_local(str(path), "auto", None)
    sets = [EvalSet("sts", "pairs", pairs=[("a man plays", "A woman sings."), ("q", "r")],
                    texts=["a man plays", "A woman sings.", "q", "r", "x y"])]
    full = TrainIndex()
    full.add_rows(dict(data.columns), "train")
    kept = TrainIndex(keep=eval_index(sets))
    kept.add_data(data, "train")
    assert measure_all(kept, sets) == measure_all(full, sets)
    assert measure_all(kept, sets)["sts"]["pairs_norm_pct"] == 50.0
    assert len(kept.texts_norm) < len(full.texts_norm) and kept.rows == full.rows == 3
    # The kept hashes are stored beside the cache entry: a second index reads them, not the rows.
    monkeypatch.setattr(type(data), "batches", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-read")))
    again = TrainIndex(keep=eval_index(sets))
    again.add_data(data, "train")
    assert measure_all(again, sets) == measure_all(full, sets)


def test_entry_key_depends_on_settings():
    base = cache.entry_key("0" * 64, {"format": "csv", "columns": ["a"], "types": ["text"]})
    assert base != cache.entry_key("0" * 64, {"format": "csv", "columns": ["a"], "types": ["score"]})
    assert base != cache.entry_key("1" * 64, {"format": "csv", "columns": ["a"], "types": ["text"]})


def test_normalize_ascii_fast_path_is_the_definition():
    """The overlap walks every training text through normalize(); its ASCII shortcut must give NFKC, case-folded,
    punctuation removed, white space (\\x1c-\\x1f included, as str.split has it) collapsed."""
    import random
    import unicodedata

    from embedkit.evaluation.overlap import _punctuation, normalize

    rng = random.Random(0)
    texts = ["".join(chr(rng.randrange(128)) for _ in range(rng.randrange(40))) for _ in range(20000)]
    texts += ["A man, plays!\x1c the GUITAR.", "  tabs\tand\x0bvt  ", "Straße", "ﬁne – “quoted”"]
    for t in texts:
        want = " ".join(unicodedata.normalize("NFKC", t).casefold().translate(_punctuation()).split())
        assert normalize(t) == want, repr(t)


def test_arrow_arrays_built_from_buffers_equal_pyarrows_conversion():
    import pyarrow as pa

    for values in (["a", "bé", "ﬁne", "x" * 300], ["plain", "ascii"], ["\U0001f600 emoji", "z"]):
        assert cache.to_arrow(values, pa.string()).equals(pa.array(values, type=pa.string()))
    assert cache.to_arrow([1.0, -2.5, 3e300], pa.float64()).equals(pa.array([1.0, -2.5, 3e300], pa.float64()))
