"""``data.train.streaming``: the training set as a ``datasets.IterableDataset`` (docs: README, "Training on a
corpus larger than memory").

Claims: a streaming recipe of a method that needs no random access validates, every option that needs random
access or the set's length is refused in one line naming its key; the stream is the validated rows in seeded
shuffled passes (pass ``p`` with seed ``training.seed + p``), row ids stable across passes; training takes the
stream's rows in order, ``max_steps × batch`` of them; a run killed after a checkpoint and resumed ends bit for bit
where the uninterrupted run ends; a Hub dataset (here a local dataset folder, through the same
``load_dataset(..., streaming=True)`` call) streams too; under torchrun two processes train on disjoint rows whose
union per step is the one-process run's global batch, with the same losses and weights.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from _mp_helpers import (
    RECORD_LABELS,
    check_ok,
    final_weights,
    kill_resume_compare,
    max_abs_diff,
    results,
    run_embedkit,
    run_torchrun,
    step_losses,
    write_documents,
    write_recipe,
    write_sentences,
)

from embedkit.errors import RecipeError
from embedkit.validate import load_recipe


def _recipe(tmp: Path, model: str, method: str = "simcse-unsup", train: dict | None = None,
            training: dict | None = None, **sections: Any) -> dict[str, Any]:
    data = write_sentences(tmp, 48)
    recipe = {
        "model": {"name": model, "pooling": "cls", "max_seq_length": 16},
        "data": {"train": {"path": str(data), "streaming": True, **(train or {})}, "dev": None},
        "method": {"name": method},
        "training": {"batch_size": 8, "max_steps": 4, **(training or {})},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(tmp / "out")},
    }
    for key, value in sections.items():
        recipe[key] = value
    return recipe


@pytest.mark.parametrize("method", ["simcse-unsup", "esimcse", "contriever", "text2token"])
def test_streaming_recipe_validates(method: str, tmp_path: Path, tiny_model_path: str) -> None:
    recipe = load_recipe(_recipe(tmp_path, tiny_model_path, method, train={"shuffle_buffer": 64}))
    assert recipe.data.train.streaming is True and recipe.data.train.shuffle_buffer == 64


REFUSED = {
    "method needs random access": (dict(method="simcse-sup"), r"data\.train\.streaming: method 'simcse-sup' reads "
                                   r"its rows by index.*ccp, contriever, esimcse, simcse-unsup, text2token"),
    "epochs without max_steps": (dict(training={"max_steps": -1, "epochs": 2}),
                                 r"training\.max_steps: a stream has no length"),
    "group_by_length": (dict(training={"group_by_length": True}), r"training\.group_by_length: grouping by length"),
    "dataloader workers": (dict(training={"dataloader_workers": 2}), r"training\.dataloader_workers: a stream is read"),
    "esimcse word repetition": (dict(method="esimcse", params={"repetition": "word"}),
                                r"method\.repetition: word repetition keeps every raw sentence"),
    "text2token targets cache": (dict(method="text2token", params={"model_targets_cache": True}),
                                 r"method\.model_targets_cache: the cache holds the targets of every text"),
    "shuffle_buffer without streaming": (dict(train={"streaming": False, "shuffle_buffer": 100}),
                                         r"data\.train: .*shuffle_buffer is read only with streaming: true"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_streaming_refusals_name_the_key(case: str, tmp_path: Path, tiny_model_path: str) -> None:
    opts, message = REFUSED[case]
    recipe = _recipe(tmp_path, tiny_model_path, opts.get("method", "simcse-unsup"), opts.get("train"),
                     opts.get("training"))
    recipe["method"].update(opts.get("params", {}))
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(recipe)
    assert len(str(err.value).splitlines()) == 1, str(err.value)


def test_streaming_refuses_mining_held_out_dev_and_multitask(tmp_path: Path, tiny_model_path: str) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("anchor,positive\n" + "".join(f"q {i},p {i}\n" for i in range(40)), encoding="utf-8")
    mine = _recipe(tmp_path, tiny_model_path, "contrastive")
    mine["data"]["train"].update(path=str(pairs), mine={"num_negatives": 1})
    with pytest.raises(RecipeError, match=r"data\.train\.streaming: method 'contrastive' reads its rows by index"):
        load_recipe(mine)
    mine["method"]["name"] = "simcse-unsup"
    mine["data"]["train"]["columns"] = ["anchor"]
    with pytest.raises(RecipeError, match=r"data\.train\.mine: mining ranks every row"):
        load_recipe(mine)

    stsb = tmp_path / "train.csv"
    stsb.write_text("".join(f"main\tforum\t2012\t{i}\t{i % 5}.0\tthe cat {i} sat\tthe dog {i} ran\n"
                            for i in range(40)), encoding="utf-8")
    held = _recipe(tmp_path, tiny_model_path, "simcse-unsup", train={"path": str(stsb), "format": "stsb",
                                                                     "columns": ["sentence1"]})
    held["data"]["dev"] = {"kind": "stsb", "path": str(stsb), "split_from_train": 0.2}
    with pytest.raises(RecipeError, match=r"data\.dev\.split_from_train: holding a slice out of the streamed"):
        load_recipe(held)

    multi = _recipe(tmp_path, tiny_model_path)
    source = dict(multi["data"]["train"])
    multi["data"]["train"] = [{**source, "name": "a", "method": {"name": "simcse-unsup"}},
                              {**source, "streaming": False, "name": "b", "method": {"name": "simcse-unsup"}}]
    multi["method"] = {"name": "multitask", "sampler": "round_robin"}
    with pytest.raises(RecipeError, match=r"data\.train\.0\.streaming: a multi-task run draws each source's rows"):
        load_recipe(multi)


def test_stream_is_the_validated_rows_in_seeded_passes(tmp_path: Path, monkeypatch) -> None:
    """Each pass holds every row once, pass p shuffled with seed + p; row ids are file positions in every pass;
    the same seed gives the same stream, and skipping n rows gives its tail (what --resume reads)."""
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    from embedkit.data import stream
    from embedkit.data.sources import read_local
    from embedkit.data.stream import add_row_ids, passes_needed, skip_rows, training_stream

    path = tmp_path / "rows.txt"
    path.write_text("".join(f"row {i}\n" for i in range(30)), encoding="utf-8")
    data = read_local(str(path), "auto", None)
    data.keep_first(25)  # data.train.max_samples: the first 25 rows only
    base = add_row_ids(data.to_stream(["text"]))
    assert passes_needed(len(data), 10, 8) == 4  # 80 rows from 25
    rows = [(r["text"], r["label"]) for r in training_stream(base, 5, 10, 4)]
    assert len(rows) == 100
    assert all(text == f"row {i}" for text, i in rows), "row ids are the rows' positions in the file"
    passes = [[i for _, i in rows[25 * p:25 * (p + 1)]] for p in range(4)]
    assert all(sorted(p) == list(range(25)) for p in passes), "every row once per pass"
    assert passes[0] != list(range(25)) and passes[0] != passes[1], "shuffled, and differently in each pass"
    again = [r["label"] for r in training_stream(base, 5, 10, 4)]
    assert again == [i for _, i in rows]
    other = [r["label"] for r in training_stream(base, 6, 10, 4)]
    assert other != again and other[:75] == again[25:], "pass p is seeded training.seed + p"
    assert [r["label"] for r in skip_rows(training_stream(base, 5, 10, 4), 37)] == again[37:]
    monkeypatch.setattr(stream, "MAX_PASSES", 2)  # many passes: the cycle of the first MAX_PASSES repeats
    it = iter(training_stream(base, 5, 10, 7))
    cycled = [next(it)["label"] for _ in range(125)]
    assert cycled[:50] == again[:50] and cycled[50:100] == again[:50] and cycled[100:] == again[:25]


def test_ccp_streamed_rows_are_the_in_memory_rows(tmp_path: Path, tiny_model_path: str, monkeypatch) -> None:
    """CCP with streaming builds its rows into the data cache a document at a time (chunks of 7 rows here): the
    same rows, document ids and skipped count as the in-memory builder, a second read from the cache, and a short
    document refused with the same file:line message."""
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    from embedkit.data import sources
    from embedkit.errors import DataError
    from embedkit.methods.ccp.documents import build_rows, cached_rows
    from embedkit.validate import load_recipe_with_data

    monkeypatch.setattr(sources, "CHUNK_ROWS", 7)
    path = write_documents(tmp_path, n=6, sentences=4)
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\nA lonely line.\n\n" + text, encoding="utf-8")  # 13 documents, one of one sentence
    expected, skipped = build_rows(path, "paragraph", 2, short_documents="skip")
    recipe = _recipe(tmp_path, tiny_model_path, "ccp", train={"path": str(path)})
    recipe["method"].update(short_documents="skip")
    _, data = load_recipe_with_data(recipe)
    assert not data.in_memory and len(data) == len(expected) == 120
    assert {k: list(v) for k, v in data.columns.items()} == expected.columns
    assert skipped == 1 and cached_rows(path, "paragraph", 2, short_documents="skip")[1] is None  # a cache hit
    with pytest.raises(DataError) as streamed:
        cached_rows(path, "paragraph", 2)
    with pytest.raises(DataError) as in_memory:
        build_rows(path, "paragraph", 2)
    assert str(streamed.value) == str(in_memory.value) and ":13: document 7 has one sentence" in str(in_memory.value)


def _streaming_recipe(tmp: Path, model: str, method: str, training: dict, train: dict | None = None) -> Path:
    path = write_recipe(tmp, model, method, tmp / "out", training, train={"streaming": True, "shuffle_buffer": 16,
                                                                           **(train or {})})
    return path


def test_training_reads_the_stream_in_order(tmp_path: Path, tiny_model_path: str, monkeypatch) -> None:
    """Contriever (row ids in the ``label`` column) on 48 rows, batch 8, 10 steps: the trainer gets an
    IterableDataset and trains on the stream's first 80 rows, in order, across the pass boundary at row 48."""
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    import datasets

    from embedkit.data.stream import add_row_ids, training_stream
    from embedkit.training import run as run_mod
    from embedkit.training import trainer as tr

    recipe = _streaming_recipe(tmp_path, tiny_model_path, "contriever", {"max_steps": 10, "batch_size": 8})
    seen: list[list[int]] = []
    datasets_seen: list[Any] = []
    compute = tr.EmbedkitTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append(inputs["label"].tolist())
            datasets_seen.append(self.train_dataset)
        return compute(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(tr.EmbedkitTrainer, "compute_loss", spy)
    result = run_mod.train(str(recipe))
    assert result["train"]["global_step"] == 10
    assert isinstance(datasets_seen[0], datasets.IterableDataset)
    from embedkit.data.sources import read_local

    rows = read_local(str(tmp_path / "sentences.txt"), "auto", None)
    expected = [r["label"] for r in training_stream(add_row_ids(rows.to_stream(["text"])), 7, 16, 2)]
    assert [i for batch in seen for i in batch] == expected[:80]
    assert sorted(expected[:48]) == list(range(48)), "the first pass holds every row once"


@pytest.mark.parametrize("method", ["simcse-unsup", pytest.param("esimcse", marks=pytest.mark.slow)])
def test_streaming_sigkill_then_resume_matches_uninterrupted_run(method: str, tmp_path: Path,
                                                                 spread_model_path: str) -> None:
    """48 rows, batch 8, killed after the step-8 checkpoint (row 64 of the stream: in its second pass, shuffled
    with another seed), resumed: the same weights, method state and losses as the uninterrupted run, bit for
    bit (the resumed run skips the stream's first 64 rows)."""
    report = kill_resume_compare(tmp_path, spread_model_path, method, train={"streaming": True, "shuffle_buffer": 16},
                                 method_params={"queue_size": 16} if method == "esimcse" else None,
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8})
    assert report["killed"]["returncode"] == -signal.SIGKILL
    assert report["killed"]["checkpoints"] == ["checkpoint-8"]
    assert "streaming: resuming at row 64 of the stream" in report["resume_log"]
    assert report["global_step"] == (12, 12)
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    assert report["method_state_bitwise_mismatch"] == []
    full, resumed = report["losses"]
    assert [full[s] for s in range(9, 13)] == [resumed[s] for s in range(9, 13)]
    assert max(full.values()) - min(full.values()) > 1e-2, f"the loss must be live: {full}"


@pytest.mark.slow
def test_resume_without_the_skip_would_differ(tmp_path: Path, spread_model_path: str, monkeypatch) -> None:
    """The control of the test above: a resumed run that re-reads the stream from its start (no skip) ends
    elsewhere, so the bit-exact match says the skip lands on the exact row."""
    patch = tmp_path / "patch"
    monkeypatch.setenv("PYTHONPATH", f"{patch}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import embedkit.data.stream as s\ns.skip_rows = lambda stream, rows: stream\n", encoding="utf-8")
    report = kill_resume_compare(tmp_path, spread_model_path, "simcse-unsup",
                                 train={"streaming": True, "shuffle_buffer": 16},
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8})
    assert report["weights_bitwise_mismatch"], "without the skip the resumed run should train on other rows"


def test_hub_stream_from_a_local_dataset_folder(tmp_path: Path, tiny_model_path: str, monkeypatch) -> None:
    """``data.train.hub`` with streaming goes through ``load_dataset(..., streaming=True)`` (a local folder here:
    the Hub is not reachable), its columns selected and renamed to the method's roles; the rows are not known
    before training, so the passes repeat the one shuffled pass."""
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "hubset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"id": i, "sentence": f"the hub row number {i}"}) + "\n"
                                                for i in range(20)), encoding="utf-8")
    recipe = write_recipe(tmp_path, tiny_model_path, "contriever", tmp_path / "out", {"max_steps": 5},
                          train={"streaming": True, "shuffle_buffer": 8})
    data = yaml.safe_load(recipe.read_text())
    data["data"]["train"] = {"hub": str(folder), "columns": ["sentence"], "streaming": True, "shuffle_buffer": 8}
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    from embedkit.training import run as run_mod
    from embedkit.training import trainer as tr

    seen: list[int] = []
    compute = tr.EmbedkitTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.extend(inputs["label"].tolist())
        return compute(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(tr.EmbedkitTrainer, "compute_loss", spy)
    result = run_mod.train(str(recipe))
    assert result["train"]["global_step"] == 5 and len(seen) == 40
    assert sorted(seen[:20]) == list(range(20)) and seen[20:40] == seen[:20], "one shuffled pass, repeated"


@pytest.mark.multiproc
def test_two_processes_stream_disjoint_rows_and_equal_one_process(tmp_path: Path, spread_model_path: str,
                                                                  monkeypatch) -> None:
    """ESimCSE (row ids in ``label``), global batch 16: under torchrun each process trains on 8 rows of each
    global batch, the two halves disjoint and together the one-process run's batch of that step; the losses
    and final weights match the one-process run as for map-style data (tests/test_distributed.py)."""
    from _mp_helpers import ZERO_GRADIENT
    from test_distributed import TOL

    params = {"queue_size": 16}
    common = {"max_steps": 4, "seed": 11, "batch_size": 16}
    model = {"dropout": 0.0}
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    multi = write_recipe(tmp_path / "r2", spread_model_path, "esimcse", two_dir, common, model, params,
                         train={"streaming": True, "shuffle_buffer": 16})
    single = write_recipe(tmp_path / "r1", spread_model_path, "esimcse", one_dir, common, model, params,
                          train={"streaming": True, "shuffle_buffer": 16})
    rec2, rec1 = tmp_path / "rec2", tmp_path / "rec1"
    rec2.mkdir()
    rec1.mkdir()
    monkeypatch.setenv(RECORD_LABELS, str(rec2))
    check_ok(run_torchrun(["train", str(multi)], tmp_path, nproc=2), "torchrun --nproc_per_node 2")
    monkeypatch.setenv(RECORD_LABELS, str(rec1))
    check_ok(run_embedkit(["train", str(single)], tmp_path), "one process")

    def steps(file: Path) -> dict[int, list[int]]:
        return {r["step"]: r["rows"] for r in map(json.loads, file.read_text().splitlines())}

    r0, r1, one = steps(rec2 / "rank0.jsonl"), steps(rec2 / "rank1.jsonl"), steps(rec1 / "rank0.jsonl")
    assert sorted(r0) == sorted(r1) == sorted(one) == [1, 2, 3, 4]
    for step in one:
        assert len(r0[step]) == len(r1[step]) == 8 and not set(r0[step]) & set(r1[step]), step
        assert r0[step] + r1[step] == one[step], f"step {step}: the global batch, split in order"
    trained = [i for s in one for i in one[s]]
    assert len(set(trained)) == 48 and len(trained) == 64, "every row of the first pass, then the second pass"

    a, b = step_losses(one_dir), step_losses(two_dir)
    for step in a:
        assert abs(a[step] - b[step]) < TOL * max(1.0, abs(a[step])), (step, a[step], b[step])
    w1, w2 = final_weights(one_dir), final_weights(two_dir)
    compared = {k: v for k, v in w1.items() if not k.endswith(ZERO_GRADIENT)}
    assert max_abs_diff(compared, {k: w2[k] for k in compared}) < 1e-4
    assert results(two_dir)["train"]["world_size"] == 2
