"""Every command that writes keeps train's promises (embedkit.outputs, docs/reliability.md "Outputs"): never
into or over an input, a training run's folder or files it did not write; --overwrite replaces only its own
files; symbolic links followed, dangling ones refused; filesystem faults (read-only, permission, no space) end in
one ``embedkit: error:`` line naming the path, and a checkpoint save that fails leaves the previous one intact.

Tests run as root, and root ignores ``chmod``: a read-only folder or a full disk is simulated by making the
operating-system calls that write under a folder fail as the kernel would (``deny_writes``), or the writer that
fills the disk raise what it raises on a full disk (torch's ``inline_container.cc`` RuntimeError)."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from _mp_helpers import write_recipe

from embedkit.cli import main
from embedkit.errors import EmbedkitError, RecipeError
from embedkit.outputs import FileSet, check_target, fs_error, resolve_output
from embedkit.training.checkpoints import COMPLETE_MARKER, verify
from embedkit.training.run import train


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links as their target's text) with its SHA-256: what "unchanged" means."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file() and not p.name.endswith(".embedkit.lock"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line
             and not line.startswith("[embedkit]")]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("embedkit: error: "), err[-3000:]
    return lines[0]


def deny_writes(monkeypatch, folder: Path, code: int = errno.EACCES) -> None:
    """Make every write under ``folder`` fail with ``code`` (EACCES: permission; EROFS: read-only; ENOSPC: full),
    as the kernel does for a user who may not write there: opening for writing, creating, renaming, removing."""
    root = os.path.realpath(folder)

    def inside(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        p = os.path.realpath(os.fsdecode(path))
        return p == root or p.startswith(root + os.sep)

    def fail(path):
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    real_open = os.open

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            fail(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    for name in ("mkdir", "rename", "replace", "unlink", "remove", "rmdir"):
        real = getattr(os, name)

        def wrapped(*args, _real=real, **kwargs):
            for a in args[:2]:
                if inside(a):
                    fail(a)
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapped)
    real_io_open = io.open

    def io_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            fail(file)
        return real_io_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: a finished run (checkpoints 1 and 2), two small sentence-transformers models, pairs


@pytest.fixture(scope="module")
def run_template(tmp_path_factory, tiny_model_path) -> Path:
    root = tmp_path_factory.mktemp("run")
    recipe = write_recipe(root, tiny_model_path, "simcse-unsup", root / "run",
                          training={"max_steps": 2, "save_steps": 1})
    train(str(recipe))
    return root / "run"


@pytest.fixture()
def run(run_template, tmp_path) -> Path:
    """A copy of a finished two-step run with checkpoint-1 and checkpoint-2."""
    return Path(shutil.copytree(run_template, tmp_path / "run", symlinks=True))


@pytest.fixture(scope="module")
def models(tiny_model_path, tmp_path_factory) -> dict[str, str]:
    import torch
    from sentence_transformers import SentenceTransformer

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        model = SentenceTransformer(tiny_model_path, device="cpu")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.02)
        model.save(str(root / name), create_model_card=False)
        out[name] = str(root / name)
    return out


def write_pairs(folder: Path) -> Path:
    path = folder / "p.jsonl"
    rows = [{"anchor": f"question {i} about topic {i % 5}", "positive": f"answer {i} on topic {i % 5}"}
            for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_rerank(folder: Path) -> Path:
    path = folder / "rr.csv"
    lines = ["qtext,label,atext"] + [f"question {q} ?,{int(i == 0)},answer {i} of {q}" for q in range(3)
                                     for i in range(3)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# 1. Lost or changed files: the examples


def test_merge_of_a_runs_checkpoints_into_the_run_is_refused(run, capsys):
    before = tree(run)
    ck = run / "checkpoints"
    rc = main(["merge", str(ck / "checkpoint-1"), str(ck / "checkpoint-2"), "-o", str(run), "--overwrite"])
    assert rc == 2
    assert "is a training run's folder" in one_error(capsys)
    assert tree(run) == before


def test_merge_into_the_current_model_folder_keeps_the_users_file(models, tmp_path, monkeypatch, capsys):
    here = Path(shutil.copytree(models["a"], tmp_path / "work"))
    (here / "thesis.md").write_text("years of work", encoding="utf-8")
    before = tree(here)
    monkeypatch.chdir(here)
    assert main(["merge", models["a"], models["b"], "-o", ".", "--overwrite"]) == 2
    assert "is the current folder" in one_error(capsys)
    assert tree(here) == before


def test_merge_into_a_folder_inside_an_input_is_refused(models, capsys):
    before = tree(Path(models["a"]))
    assert main(["merge", models["a"], models["b"], "-o", str(Path(models["a"]) / "merged")]) == 2
    assert "lies inside the input" in one_error(capsys)
    assert tree(Path(models["a"])) == before


def test_merge_overwrite_replaces_its_own_output_only(models, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", models["a"], models["b"], "-o", str(out)]) == 0
    manifest = json.loads((out / ".embedkit-output.json").read_text(encoding="utf-8"))
    assert manifest["command"] == "merge" and "model.safetensors" in manifest["files"]
    assert main(["merge", models["b"], models["a"], "-o", str(out), "--overwrite"]) == 0  # its own: replaced
    capsys.readouterr()
    (out / "1_Pooling" / "my-notes.txt").write_text("mine", encoding="utf-8")  # a user's file, one level down
    before = tree(out)
    assert main(["merge", models["a"], models["b"], "-o", str(out), "--overwrite"]) == 2
    assert "did not write (1_Pooling/my-notes.txt)" in one_error(capsys)
    assert tree(out) == before
    other = tmp_path / "evald"  # another command's folder is not merge's to replace
    other.mkdir()
    (other / ".embedkit-output.json").write_text(json.dumps({"command": "eval", "files": []}), encoding="utf-8")
    (other / "results.json").write_text("{}", encoding="utf-8")
    assert main(["merge", models["a"], models["b"], "-o", str(other), "--overwrite"]) == 2
    assert "holds the output of embedkit eval" in one_error(capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or lock left behind


def test_mine_refuses_its_own_input_as_output(tiny_model_path, tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    before = pairs.read_bytes()
    rc = main(["data", "mine", "--pairs", str(pairs), "--model", tiny_model_path, "-o", str(pairs), "--overwrite"])
    assert rc == 2
    assert "is the input" in one_error(capsys)
    assert pairs.read_bytes() == before


def test_mine_never_replaces_a_users_sidecars(tiny_model_path, tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    (tmp_path / "m.stats.json").write_text('{"my": "numbers"}', encoding="utf-8")
    (tmp_path / "m.png").write_bytes(b"my chart")
    before = tree(tmp_path)
    args = ["data", "mine", "--pairs", str(pairs), "--model", tiny_model_path, "--num-negatives", "1",
            "--max-score-ratio", "none", "-o", str(tmp_path / "m.jsonl")]
    assert main(args) == 2
    assert "m.stats.json (written with it) already exists" in one_error(capsys)
    assert main([*args, "--overwrite"]) == 2
    assert "is not a file that embedkit data mine wrote" in one_error(capsys)
    assert tree(tmp_path) == before


def test_mine_overwrite_replaces_its_own_three_files_and_no_others(tiny_model_path, tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    args = ["data", "mine", "--pairs", str(pairs), "--model", tiny_model_path, "--num-negatives", "1",
            "--max-score-ratio", "none", "-o", str(tmp_path / "m.jsonl")]
    assert main(args) == 0
    stats = json.loads((tmp_path / "m.stats.json").read_text(encoding="utf-8"))
    assert set(stats["files"]) == {"m.jsonl", "m.png"}
    assert stats["files"]["m.png"] == hashlib.sha256((tmp_path / "m.png").read_bytes()).hexdigest()
    assert main([*args, "--overwrite"]) == 0  # its own three files: replaced
    capsys.readouterr()
    (tmp_path / "m.png").write_bytes(b"the user's own chart now")  # no longer the chart mine wrote
    before = tree(tmp_path)
    assert main([*args, "--overwrite"]) == 2
    assert "m.png (written with it) is not a file" in one_error(capsys)
    assert tree(tmp_path) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_eval_into_a_run_keeps_the_runs_results(run, tmp_path, capsys):
    rerank = write_rerank(tmp_path)
    before = tree(run)
    assert main(["eval", str(run), "--rerank", str(rerank), "-o", str(run)]) == 2
    assert "is a training run's folder" in one_error(capsys)
    assert main(["eval", str(run), "--rerank", str(rerank), "-o", str(run / "eval")]) == 2
    assert "lies inside the training run folder" in one_error(capsys)
    assert tree(run) == before


def test_eval_updates_its_own_folder_and_refuses_anyone_elses(models, tmp_path, capsys):
    rerank = write_rerank(tmp_path)
    out = tmp_path / "ev"
    args = ["eval", models["a"], "--rerank", str(rerank), "-o", str(out)]
    assert main(args) == 0
    assert main(args) == 0  # a re-run updates eval's own folder, as it always did
    assert json.loads((out / ".embedkit-output.json").read_text())["files"] == ["results.json"]
    capsys.readouterr()
    (out / "summary.md").write_text("my summary", encoding="utf-8")
    before = tree(out)
    assert main(args) == 2
    assert "did not write (summary.md)" in one_error(capsys)
    assert tree(out) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"mine": 1}', encoding="utf-8")  # not eval's results
    assert main(["eval", models["a"], "--rerank", str(rerank), "-o", str(mine)]) == 2
    assert "did not write (results.json)" in one_error(capsys)
    assert main(["eval", models["a"], "--rerank", str(rerank), "-o", models["a"]]) == 2
    assert "is the model" in one_error(capsys)


def test_eval_accepts_its_folder_from_before_the_manifest(models, tmp_path):
    rerank = write_rerank(tmp_path)
    out = tmp_path / "ev"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"arguments": {}, "versions": {}}), encoding="utf-8")
    (out / "sts.png").write_bytes(b"png")
    assert main(["eval", models["a"], "--rerank", str(rerank), "-o", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["rerank"]


def test_encode_and_diagnose_never_write_into_a_run_or_a_model(run, models, tmp_path, capsys, tiny_model_path):
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n", encoding="utf-8")
    before_run, before_model = tree(run), tree(Path(models["a"]))
    assert main(["encode", models["a"], str(texts), "-o", str(run / "e.npy")]) == 2
    assert "lies inside the training run folder" in one_error(capsys)
    assert main(["encode", models["a"], str(texts), "-o", str(Path(models["a"]) / "e.npy")]) == 2
    assert "lies inside the model" in one_error(capsys)
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", tmp_path / "unused")
    assert main(["data", "diagnose", str(recipe), "-o", str(run)]) == 2
    assert "is a training run's folder" in one_error(capsys)
    assert tree(run) == before_run and tree(Path(models["a"])) == before_model


def test_train_overwrite_refuses_a_users_file_inside_a_checkpoint(run, tmp_path, tiny_model_path):
    (run / "checkpoints" / "checkpoint-2" / "note.md").write_text("why step 2 matters", encoding="utf-8")
    before = tree(run)
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", run)
    with pytest.raises(RecipeError, match=r"did not write \(checkpoints/checkpoint-2/note.md\)"):
        train(str(recipe), overwrite=True)
    assert tree(run) == before


def test_train_overwrite_refuses_a_users_file_in_a_model_subfolder(run, tmp_path, tiny_model_path):
    (run / "1_Pooling" / "extra.txt").write_text("mine", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", run)
    with pytest.raises(RecipeError, match=r"did not write \(1_Pooling/extra.txt\)"):
        train(str(recipe), overwrite=True)
    marker = json.loads((run / ".embedkit-run.json").read_text(encoding="utf-8"))
    assert "1_Pooling/config.json" in marker["files"] and "model.safetensors" in marker["files"]


def test_a_run_never_goes_inside_another_run(run, tmp_path, tiny_model_path, capsys):
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", run / "again")
    before = tree(run)
    for command in ("check", "train"):
        assert main([command, str(recipe)]) == 2
        assert "lies inside the training run folder" in one_error(capsys)
    assert tree(run) == before


def test_checkpoint_rotation_on_resume_keeps_a_checkpoint_holding_a_users_note(tmp_path, tiny_model_path, monkeypatch):
    from embedkit.training.trainer import EmbedkitTrainer

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out,
                          training={"max_steps": 4, "save_steps": 1, "save_total_limit": 2})
    step = EmbedkitTrainer.training_step

    def killed_after_two(self, *args, **kwargs):
        if self.state.global_step >= 2:
            raise RuntimeError("simulated kill after step 2")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(EmbedkitTrainer, "training_step", killed_after_two)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(str(recipe))
    monkeypatch.setattr(EmbedkitTrainer, "training_step", step)
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    (ck / "checkpoint-1" / "note.md").write_text("compare with step 1", encoding="utf-8")
    result = train(str(recipe), resume=True)
    assert result["train"]["global_step"] == 4
    assert (ck / "checkpoint-1" / "note.md").read_text(encoding="utf-8") == "compare with step 1"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-1", "checkpoint-4"]  # 2 and 3 rotated away


# ---------------------------------------------------------------------------------------------------------------
# 2. Symbolic links: followed when they lead somewhere, refused when they dangle


def test_train_overwrite_through_a_symlinked_output_dir_keeps_the_link(run, tmp_path, tiny_model_path):
    link = tmp_path / "latest"
    link.symlink_to(run, target_is_directory=True)
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", link,
                          training={"max_steps": 1, "save_steps": 1})
    for _ in range(2):  # the second --overwrite used to fail ("Cannot call rmtree on a symbolic link")
        result = train(str(recipe), overwrite=True)
        assert result["train"]["global_step"] == 1
        assert link.is_symlink() and link.resolve() == run.resolve()
        assert json.loads((run / "results.json").read_text())["train"]["global_step"] == 1
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_dangling_symlinks_are_one_line_in_check_train_and_every_command(tmp_path, tiny_model_path, models,
                                                                        capsys):
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "unmounted" / "runs")
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", link)
    assert main(["check", str(recipe)]) == 2
    assert "is a symbolic link to" in one_error(capsys)
    assert main(["train", str(recipe)]) == 2
    assert "which does not exist" in one_error(capsys)
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n", encoding="utf-8")
    assert main(["merge", models["a"], models["b"], "-o", str(link)]) == 2
    assert "is a symbolic link to" in one_error(capsys)
    assert main(["encode", models["a"], str(texts), "-o", str(link / "e.npy")]) == 2
    assert f"goes through {link}" in one_error(capsys)
    assert not (tmp_path / "unmounted").exists()


def test_merge_through_a_symlink_replaces_the_target_and_keeps_the_link(models, tmp_path):
    real = tmp_path / "real"
    assert main(["merge", models["a"], models["b"], "-o", str(real)]) == 0
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    first = (real / "model.safetensors").read_bytes()
    assert main(["merge", models["a"], models["b"], "--weights", "1,3", "-o", str(link), "--overwrite"]) == 0
    assert link.is_symlink() and (real / "model.safetensors").read_bytes() != first


def test_resolve_output_follows_links_and_leaves_plain_paths_as_given(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "t")
    assert resolve_output(tmp_path / "l" / "x", "-o") == (tmp_path / "t" / "x").resolve()
    assert resolve_output("relative/out", "-o") == Path("relative/out")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(EmbedkitError, match="link loop"):
        resolve_output(tmp_path / "loop", "-o")


# ---------------------------------------------------------------------------------------------------------------
# 3. Filesystem faults: one line naming the path and what to do


@pytest.mark.parametrize("code, words", [(errno.EACCES, "permission denied"),
                                         (errno.EROFS, "the filesystem is read-only")])
def test_read_only_output_folder_is_one_line_for_every_command(code, words, tmp_path, tiny_model_path, models,
                                                               monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    pairs = write_pairs(tmp_path)
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", locked / "run")
    deny_writes(monkeypatch, locked, code)
    commands = [
        ["train", str(recipe)],
        ["merge", models["a"], models["b"], "-o", str(locked / "merged")],
        ["data", "mine", "--pairs", str(pairs), "--model", tiny_model_path, "-o", str(locked / "m.jsonl")],
        ["encode", models["a"], str(texts), "-o", str(locked / "e.npy")],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        line = one_error(capsys)
        assert str(locked) in line and words in line and "choose" in line, line
    assert list(locked.iterdir()) == []


def test_no_space_while_writing_embeddings_keeps_the_old_file(models, tmp_path, monkeypatch, capsys):
    import numpy as np

    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    out.write_bytes(b"the earlier embeddings")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    assert main(["encode", models["a"], str(texts), "-o", str(out), "--overwrite"]) == 2
    line = one_error(capsys)
    assert "no space left on the device" in line and "free on its disk" in line and str(out) in line
    assert out.read_bytes() == b"the earlier embeddings" and sorted(p.name for p in tmp_path.iterdir()) == [
        "e.npy", "t.txt"]


def test_full_disk_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, tiny_model_path, monkeypatch, capsys):
    import torch

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out, training={"max_steps": 3, "save_steps": 1})
    real_save = torch.save

    def full_at_step_2(obj, f, *args, **kwargs):
        if "checkpoint-2" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_2)
    assert main(["train", str(recipe)]) == 2
    line = one_error(capsys)
    assert "checkpoint-2" in line and "torch could not write the file" in line
    assert "the incomplete checkpoint-2 was removed; checkpoint-1 is intact" in line and "--resume" in line
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-1"] and verify(ck / "checkpoint-1") is None
    monkeypatch.setattr(torch, "save", real_save)
    assert train(str(recipe), resume=True)["train"]["global_step"] == 3  # the space is back: it continues


def test_a_save_that_clearly_does_not_fit_is_refused_before_it_starts(tmp_path, tiny_model_path, monkeypatch,
                                                                     capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out, training={"max_steps": 2, "save_steps": 1})
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage

    def fills_after_one_checkpoint(path):
        if (out / "checkpoints" / "checkpoint-1" / COMPLETE_MARKER).is_file():
            return usage(10**9, 10**9 - 2048, 2048)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", fills_after_one_checkpoint)
    assert main(["train", str(recipe)]) == 2
    line = one_error(capsys)
    assert "checkpoint-2: needs about" in line and "only 2.0 KB free" in line
    assert "not started, so checkpoint-1 is intact" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert verify(out / "checkpoints" / "checkpoint-1") is None


def test_fs_error_names_path_reason_and_advice(tmp_path):
    err = fs_error(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x")), doing="writing")
    assert str(err) == f"{tmp_path / 'x'}: the filesystem is read-only while writing; choose an output on a " \
        "writable disk"
    torch_err = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                             "data/0: file write failed")
    assert "torch could not write the file" in str(fs_error(torch_err, tmp_path, subject="checkpoint-3"))


def test_a_file_set_is_all_or_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    files = FileSet()
    files.path(tmp_path / "a.txt").write_text("new a")
    files.path(tmp_path / "b.txt")  # never written: the writer failed
    files.discard()
    assert (tmp_path / "a.txt").read_text() == "old a" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_check_target_refuses_a_folder_output_holding_an_input(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text("{}\n")
    with pytest.raises(EmbedkitError, match="holds the input"):
        check_target(tmp_path / "data", "-o", "data", [("input", tmp_path / "data" / "p.jsonl")], folder=True)


def test_train_overwrite_replaces_a_run_that_selected_on_a_dev_set(tmp_path, tiny_model_path):
    """sentence-transformers' trainer makes ``checkpoints/eval/`` at every evaluation (its evaluators' CSV folder;
    embedkit's write nothing there). The finished run leaves no such empty folder, and an empty one (a run
    finished before this) is not a user's file: --overwrite of a run with a dev set works. A file in it is."""
    dev = tmp_path / "sts-dev.csv"
    dev.write_text("".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i % 5}.0\ta man plays tune {i}\tsomeone "
                           f"plays {i}\n" for i in range(12)), encoding="utf-8")
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", out, dev={"path": str(dev)},
                          training={"max_steps": 2, "eval_steps": 1, "save_steps": 2})
    first = train(str(recipe))
    assert first["train"]["best_dev_spearman"] is not None, "the dev set was evaluated"
    assert not (out / "checkpoints" / "eval").exists()
    (out / "checkpoints" / "eval").mkdir()  # as a run finished by an earlier embedkit left it
    assert train(str(recipe), ["training.seed=8"], overwrite=True)["train"]["global_step"] == 2
    (out / "checkpoints" / "eval").mkdir()
    (out / "checkpoints" / "eval" / "mine.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"did not write \(checkpoints/eval/mine.csv\)"):
        train(str(recipe), overwrite=True)
