"""Bad recipe and data inputs: each is refused in one line naming the file, line (and key or column) and what
was expected, quickly, before any model loads and with nothing written."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _mp_helpers import run_timed

from embedkit.data import textio
from embedkit.data.sources import read_hub, read_local
from embedkit.data.sts import read_sick, read_sts_subset, read_stsb
from embedkit.errors import DataError, RecipeError
from embedkit.methods import get_method
from embedkit.recipe import parse_override, resolve_recipe_path
from embedkit.validate import load_recipe, load_recipe_with_data

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """\
description: bad inputs
model: {{name: sentence-transformers/all-MiniLM-L6-v2}}  # packaged: no Hub needed
data:
  train: {{path: {data}}}
  dev: null
method: {{name: {method}}}
training: {{batch_size: 8}}
output: {{dir: {out}}}
"""

BOMB = "".join(  # 342 bytes: 9 ** 9 strings once expanded
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    + [f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")]
)


def recipe_file(tmp_path: Path, data: Path | str, method: str = "cosent", text: str = RECIPE) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text.format(data=data, method=method, out=tmp_path / "out"), encoding="utf-8")
    return path


def pairs_csv(tmp_path: Path, score_of_row_2: str = "0.4", sep: str = ",", name: str = "pairs.csv") -> Path:
    rows = [f"first {i}{sep}second {i}{sep}{score_of_row_2 if i == 2 else i / 10}" for i in range(5)]
    path = tmp_path / name
    path.write_text(f"sentence1{sep}sentence2{sep}score\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path  # row i is on line i + 2


def bad_byte_file(tmp_path: Path, name: str, head: str, line: str, lines: int, bad_line: int) -> tuple[Path, int]:
    """A file of ``lines`` copies of ``line`` (numbered) after ``head``, whose line ``bad_line`` starts with byte
    0xff, far beyond the text decoder's first chunk; returns the path and the absolute offset of the bad byte."""
    body = head + "".join(line.format(i=i) for i in range(lines))
    data = body.encode("utf-8")
    offset = len("".join(body.splitlines(keepends=True)[: bad_line - 1]).encode("utf-8"))
    path = tmp_path / name
    path.write_bytes(data[:offset] + b"\xff" + data[offset + 1 :])
    return path, offset


# ------------------------------------------------------------------------------------------------------------
# 6. Column types per role: CoSENT's score is a number, read from CSV, TSV and JSONL.


def test_csv_score_that_is_not_a_number_names_file_line_and_column(tmp_path):
    path = recipe_file(tmp_path, pairs_csv(tmp_path, "high"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (
        f"{path}:4: data.train.path: {tmp_path / 'pairs.csv'}:4: column 'score': expected a finite number "
        "(a score), got 'high'"
    )


@pytest.mark.parametrize("score", ["nan", "inf", "-Infinity", ""])
def test_non_finite_or_empty_score_is_refused(tmp_path, score):
    with pytest.raises(RecipeError, match=rf"pairs\.csv:4: column 'score': expected a finite number .*got '{score}'"):
        load_recipe(recipe_file(tmp_path, pairs_csv(tmp_path, score)))


@pytest.mark.parametrize("sep,name", [(",", "pairs.csv"), ("\t", "pairs.tsv")])
def test_csv_and_tsv_scores_become_floats(tmp_path, sep, name):
    recipe, data = load_recipe_with_data(recipe_file(tmp_path, pairs_csv(tmp_path, "0.25", sep, name)))
    assert get_method(recipe.method.name).column_types() == ("text", "text", "score")  # what read_hub gets
    assert data.columns["score"] == [0.0, 0.1, 0.25, 0.3, 0.4]
    assert data.columns["sentence1"][0] == "first 0"


def test_jsonl_numeric_score_is_accepted_and_bad_ones_named(tmp_path):
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": s} for i, s in enumerate([1, 0.5, "0.25"])]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _, data = load_recipe_with_data(recipe_file(tmp_path, jsonl))
    assert data.columns["score"] == [1.0, 0.5, 0.25] and all(type(s) is float for s in data.columns["score"])
    for bad in (True, "high", None, [1]):
        jsonl.write_text("".join(json.dumps({**r, "score": bad if i == 1 else r["score"]}) + "\n"
                                 for i, r in enumerate(rows)), encoding="utf-8")
        with pytest.raises(RecipeError, match=r"pairs\.jsonl:2: key 'score': expected a finite number"):
            load_recipe(recipe_file(tmp_path, jsonl))


def test_text_column_of_a_scored_pair_must_be_text(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"sentence1": "a", "sentence2": 7, "score": 1}) + "\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"pairs\.jsonl:1: key 'sentence2' must be a non-empty string, got 7"):
        load_recipe(recipe_file(tmp_path, jsonl))


def test_sentence_triples_are_not_scored_pairs(tmp_path):
    """Three text columns given to CoSENT: the third is named as not a score, not trained on as a string."""
    csv_file = tmp_path / "nli.csv"
    csv_file.write_text("sent0,sent1,hard_neg\nan anchor,a positive,a negative\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"nli\.csv:2: column 'hard_neg': expected a finite number"):
        load_recipe(recipe_file(tmp_path, csv_file))


def test_read_hub_converts_score_columns(tmp_path):
    pytest.importorskip("datasets")
    jsonl = tmp_path / "hub.jsonl"
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": s} for i, s in enumerate(["0.5", "1", "high"])]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    types = ("text", "text", "score")
    data = read_hub("json", "train", None, None, data_files=str(jsonl), types=types)
    assert data.columns["score"] == [0.5, 1.0] and data.columns["sentence1"] == ["a 0", "a 1"]
    assert read_hub("json", "train", None, None, data_files=str(jsonl)).columns["score"] == ["0.5", "1"]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"json \(train\): row 3: column 'score': expected a finite number .*'high'"):
        read_hub("json", "train", None, None, data_files=str(jsonl), types=types)


# ------------------------------------------------------------------------------------------------------------
# 7. YAML alias bombs, size and depth.


def _limited() -> None:
    """Child processes here get 2 GiB of address space: an alias bomb that is not refused fails, not swaps."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_alias_bomb_is_refused_at_once(tmp_path):
    """In a child process with a time and memory limit: unrefused, the bomb expands to 9**9 strings."""
    assert len(BOMB.encode()) == 342
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    code = (
        "import sys, time; from embedkit.errors import RecipeError; from embedkit.recipe import _key_lines; "
        "from embedkit.validate import load_recipe\n"
        "text = open(sys.argv[1]).read(); start = time.perf_counter(); _key_lines(text)\n"
        "assert time.perf_counter() - start < 1.0, 'key lines are slow'\n"
        "start = time.perf_counter()\n"
        "try: load_recipe(sys.argv[1])\n"
        "except RecipeError as err: print(err)\n"
        "assert time.perf_counter() - start < 1.0, 'refusal is slow'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=20,
                          preexec_fn=_limited)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout == f"{path}:1: YAML anchors and aliases (&a) are not allowed in recipes; write the values out\n"


def test_an_alias_alone_is_refused_with_its_line(tmp_path, sentences_file):
    text = RECIPE + "eval: *nothing\n"
    with pytest.raises(RecipeError, match=r"r\.yaml:9: YAML anchors and aliases \(\*nothing\) are not allowed"):
        load_recipe(recipe_file(tmp_path, sentences_file, "simcse-unsup", text))
    with pytest.raises(RecipeError, match=r"YAML anchors and aliases \(&x\) are not allowed"):
        parse_override("training.seed=&x 1")


def test_recipe_over_one_mib_is_refused(tmp_path, sentences_file):
    path = recipe_file(tmp_path, sentences_file, "simcse-unsup", RECIPE + "#" * (1 << 20) + "\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: recipe file is 1,04\d,\d\d\d bytes; expected at most 1,048,576"):
        load_recipe(path)


def test_deep_nesting_is_refused(tmp_path, sentences_file):
    text = RECIPE + "description: " + "[" * 50000 + "]" * 50000 + "\n"
    with pytest.raises(RecipeError, match=r"r\.yaml:9: nested more than 32 levels deep"):
        load_recipe(recipe_file(tmp_path, sentences_file, "simcse-unsup", text))


# ------------------------------------------------------------------------------------------------------------
# 8. Shipped recipes by bare name only.


def test_path_ending_like_a_shipped_recipe_must_exist(tmp_path):
    missing = tmp_path / "some" / "quickstart.yaml"
    with pytest.raises(RecipeError) as err:
        resolve_recipe_path(missing)
    assert str(err.value) == f"{missing}: recipe file not found"
    with pytest.raises(RecipeError, match=r"^some/dir/quickstart: recipe file not found$"):
        resolve_recipe_path("some/dir/quickstart")
    assert resolve_recipe_path("quickstart") == ROOT / "recipes" / "quickstart.yaml"
    assert resolve_recipe_path("quickstart.yaml") == ROOT / "recipes" / "quickstart.yaml"


# ------------------------------------------------------------------------------------------------------------
# 9a / 12. Not UTF-8: the line and the absolute byte offset of the bad byte.


def test_recipe_not_utf8_names_line_and_offset(tmp_path, sentences_file):
    text = RECIPE.format(data=sentences_file, method="simcse-unsup", out=tmp_path / "out")
    data = text.replace("bad inputs", "caf\xe9").encode("latin-1")
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:1: byte 0xe9 at offset 16 is not valid UTF-8; expected UTF-8 text"


@pytest.mark.parametrize("fmt,head,line", [
    ("txt", "", "sentence number {i} with some padding to make the file long\n"),
    ("csv", "a,b,c\n", "anchor {i},positive {i} with padding,negative {i} with padding\n"),
    ("jsonl", "", '{{"text": "sentence number {i} with some padding to make it long"}}\n'),
])
def test_data_file_not_utf8_names_line_and_absolute_offset(tmp_path, fmt, head, line):
    path, offset = bad_byte_file(tmp_path, f"data.{fmt}", head, line, lines=4000, bad_line=2719)
    assert offset > 100_000  # far past the text decoder's chunk: its err.start is not the file offset
    with pytest.raises(DataError) as err:
        read_local(str(path), "auto", None)
    assert str(err.value) == f"{path}:2719: byte 0xff at offset {offset} is not valid UTF-8; expected UTF-8 text"


def test_sts_readers_not_utf8_name_line_and_offset(tmp_path):
    stsb, offset = bad_byte_file(tmp_path, "sts-dev.csv", "", "g\tf\t2012\t{i}\t1.0\tsentence a\tsentence b\n",
                                 lines=5000, bad_line=4001)
    expected = f"{stsb}:4001: byte 0xff at offset {offset} is not valid UTF-8; expected UTF-8 text"
    with pytest.raises(DataError, match=f"^{expected}$"):
        read_stsb(stsb)
    with pytest.raises(DataError, match=f"^{expected}$"):
        read_local(str(stsb), "stsb", None)
    head = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
    sick, offset = bad_byte_file(tmp_path, "SICK_x.txt", head, "{i}\ta cat sits\ta cat sleeps\t3.0\tNEUTRAL\n",
                                 lines=5000, bad_line=3000)
    with pytest.raises(DataError, match=rf"SICK_x\.txt:3000: byte 0xff at offset {offset} is not valid UTF-8"):
        read_sick(sick)
    gold, offset = bad_byte_file(tmp_path, "STS.gs.x.txt", "", "{i}\n", lines=5000, bad_line=4500)
    inputs = tmp_path / "STS.input.x.txt"
    inputs.write_text("a\tb\n" * 5000, encoding="utf-8")
    with pytest.raises(DataError, match=rf"STS\.gs\.x\.txt:4500: byte 0xff at offset {offset} is not valid"):
        read_sts_subset(inputs, gold)


def test_utf8_error_position_across_chunk_boundaries(monkeypatch):
    """A bad byte in any chunk, and a multi-byte character split between two chunks (valid) or cut off at
    the end of the file (invalid), are placed exactly."""
    monkeypatch.setattr(textio, "_CHUNK", 7)
    good = "é\n€ line\nab😀c\n".encode() * 3
    assert textio.utf8_error_at(io.BytesIO(good)) is None
    for pos in range(len(good)):
        if good[pos] & 0xC0 == 0x80:
            continue  # a continuation byte: overwriting it makes its lead byte the bad one
        data = good[:pos] + b"\xff" + good[pos + 1 :]
        assert textio.utf8_error_at(io.BytesIO(data)) == (good[:pos].count(b"\n") + 1, pos, 0xFF)
    assert textio.utf8_error_at(io.BytesIO(good + b"x\n\xe2\x82")) == (good.count(b"\n") + 2, len(good) + 2, 0xE2)


# ------------------------------------------------------------------------------------------------------------
# 11b. Duplicate keys.


def test_duplicate_key_names_both_lines_and_key_path(tmp_path, sentences_file):
    text = RECIPE.replace("training: {{batch_size: 8}}", "training:\n  batch_size: 8\n  seed: 1\n  batch_size: 16")
    path = recipe_file(tmp_path, sentences_file, "simcse-unsup", text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:10: training.batch_size: duplicate key (first at line 8)"
    top = RECIPE + "model: {{name: other/model}}\n"
    with pytest.raises(RecipeError, match=r"r\.yaml:9: model: duplicate key \(first at line 2\)"):
        load_recipe(recipe_file(tmp_path, sentences_file, "simcse-unsup", top))


# ------------------------------------------------------------------------------------------------------------
# 17. An explicit path must exist; the Hub stands in only for an absent {data_dir}.

HUB_RECIPE = RECIPE.replace(
    "  train: {{path: {data}}}\n  dev: null\n",
    "  train: {{path: '{data}', hub: some/hub-set}}\n  dev: {{path: '{{data_dir}}/sts-dev.csv', hub: some/dev-set}}\n",
)


def test_explicit_missing_path_with_hub_fallback_is_an_error(tmp_path, capsys):
    path = recipe_file(tmp_path, "/no/such-file.txt", "simcse-unsup", HUB_RECIPE)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, data_dir=str(tmp_path))
    assert str(err.value) == f"{path}:4: data.train.path: file not found: /no/such-file.txt"
    (tmp_path / "sts-dev.csv").write_text("", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"^command line: data\.train\.path: file not found: /no/x\.txt$"):
        load_recipe(path, ["data.train.path=/no/x.txt"], data_dir=str(tmp_path))
    assert capsys.readouterr().err == ""  # no fallback notice: nothing falls back


def test_explicit_missing_dev_path_is_an_error(tmp_path, sentences_file):
    path = recipe_file(tmp_path, sentences_file, "simcse-unsup", HUB_RECIPE)
    with pytest.raises(RecipeError, match=r"^command line: data\.dev\.path: file not found: /no/dev\.csv$"):
        load_recipe(path, ["data.dev.path=/no/dev.csv"], data_dir=str(tmp_path))


def test_absent_data_dir_falls_back_to_the_hub_with_a_notice(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EMBEDKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/public or ../shared/data here
    import embedkit.validate

    reached = []  # the Hub is probed after the notes are gathered; here it answers (test_bad_inputs_models: when not)
    monkeypatch.setattr(embedkit.validate, "check_recipe_refs", lambda *a, **k: reached.append(k))
    monkeypatch.setattr(embedkit.validate, "check_hub_dataset", lambda name, *a: reached.append(name))  # dev's copy
    path = recipe_file(tmp_path, "{data_dir}/train.txt", "simcse-unsup", HUB_RECIPE)
    _, data = load_recipe_with_data(path)
    assert reached == [{"hub_data": True}, "some/dev-set"]
    assert data is None  # the Hub dataset is read when training starts
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        f"embedkit: note: {path}:4: data.train.path: no data folder for '{{data_dir}}/train.txt' (pass --data-dir "
        "or set $EMBEDKIT_DATA); training reads the Hub dataset some/hub-set instead",
        f"embedkit: note: {path}:5: data.dev.path: no data folder for '{{data_dir}}/sts-dev.csv' (pass --data-dir "
        "or set $EMBEDKIT_DATA); STS-B dev comes from the Hub dataset some/dev-set (validation) instead",
    ]
    _, data = load_recipe_with_data(path, data_dir=str(tmp_path / "empty"))  # a data folder without the file
    assert data is None
    assert f"data.train.path: {tmp_path / 'empty' / 'train.txt'}: not found; training reads the Hub dataset " \
           "some/hub-set instead" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# The command line: one line, fast, nothing written.


@pytest.mark.parametrize("case", ["bomb", "duplicate", "latin1", "score", "missing"])
def test_cli_refuses_in_one_line_fast(tmp_path, sentences_file, case):
    if case == "bomb":
        path = tmp_path / "r.yaml"
        path.write_text(BOMB, encoding="utf-8")
    elif case == "duplicate":
        path = recipe_file(tmp_path, sentences_file, "simcse-unsup", RECIPE + "output: {{dir: x}}\n")
    elif case == "latin1":
        path = recipe_file(tmp_path, sentences_file, "simcse-unsup")
        path.write_bytes(path.read_bytes().replace(b"bad inputs", b"caf\xe9"))
    elif case == "score":
        path = recipe_file(tmp_path, pairs_csv(tmp_path, "high"))
    else:
        path = recipe_file(tmp_path, "/no/such-file.txt", "simcse-unsup", HUB_RECIPE)
    proc, cpu = run_timed([sys.executable, "-m", "embedkit.cli", "train", str(path)],
                          capture_output=True, text=True, timeout=20, preexec_fn=_limited)
    assert cpu < 1.5, f"{cpu:.1f} CPU seconds"  # no torch import (that alone takes ~2 s)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"embedkit: error: {path}:")
    assert not (tmp_path / "out").exists()


def test_drop_last_with_fewer_rows_than_a_batch_is_refused(tmp_path):
    """5 rows, batch 8, drop_last: every batch would be dropped and the run would train 0 steps."""
    recipe = recipe_file(tmp_path, pairs_csv(tmp_path), text=RECIPE.replace("batch_size: 8", "batch_size: 8, "
                                                                              "drop_last: true"))
    with pytest.raises(RecipeError) as err:
        load_recipe_with_data(str(recipe))
    assert f"{recipe}:7: training.batch_size: the training data has 5 rows, fewer than one global batch (8)" \
        in str(err.value) and "drop_last" in str(err.value)
    load_recipe_with_data(str(recipe_file(tmp_path, pairs_csv(tmp_path))))  # without drop_last: a short batch trains
