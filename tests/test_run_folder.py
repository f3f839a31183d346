"""No run is ever lost: ``--overwrite`` replaces only an embedkit run and only once the new run has finished, one
writer per output folder, ``--resume`` never touches a finished run, skips a corrupt checkpoint and refuses a
recipe whose meaning changed, and a refusal writes nothing (docs/reliability.md)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _mp_helpers import run_timed, write_recipe

from embedkit.errors import RecipeError
from embedkit.training import rundir
from embedkit.training.checkpoints import COMPLETE_MARKER, newest_intact
from embedkit.training.run import train


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256 (what "unchanged" means below)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def finished_run(tmp_path, tiny_model_path):
    """A finished 6-step run with checkpoints at steps 3 and 6, kept whole (``write_recipe``: all), so
    ``interrupted`` makes it resumable."""
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out,
                          training={"max_steps": 6, "save_steps": 3})
    train(str(recipe))
    return recipe, out


def interrupted(out: Path) -> None:
    """Make a finished run look killed after its last checkpoint: no results.json."""
    (out / "results.json").unlink()


def break_model(monkeypatch) -> None:
    """The next run fails after its output folder was reserved (as a bad model or a crash would)."""
    import embedkit.modeling

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure while loading the model")

    monkeypatch.setattr(embedkit.modeling, "build_model", fail)


# 1. --overwrite ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["cwd", "home", "tilde", "root"])
def test_overwrite_refuses_cwd_home_and_root(target, tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("keep me")
    out = {"cwd": ".", "home": str(tmp_path / "home"), "tilde": "~", "root": "/"}[target]
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", Path(out))
    before = tree_digest(tmp_path)
    with pytest.raises(RecipeError, match=r"--overwrite never replaces it"):
        train(str(recipe), overwrite=True)
    assert tree_digest(tmp_path) == before


def test_overwrite_refuses_a_folder_embedkit_did_not_create(tmp_path, tiny_model_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("a,b\n")
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out)
    with pytest.raises(RecipeError, match=r"replaces only folders that embedkit created"):
        train(str(recipe), overwrite=True)
    assert (out / "data.csv").read_text() == "a,b\n" and sorted(p.name for p in out.iterdir()) == ["data.csv"]


def test_overwrite_refuses_a_run_folder_holding_foreign_files(finished_run, tiny_model_path):
    recipe, out = finished_run
    (out / "my_notes.md").write_text("mine")
    before = tree_digest(out)
    with pytest.raises(RecipeError, match=r"holds files that embedkit did not write \(my_notes\.md\)"):
        train(str(recipe), overwrite=True)
    assert tree_digest(out) == before


def test_failed_overwrite_leaves_the_finished_run_intact(finished_run, monkeypatch):
    recipe, out = finished_run
    before = tree_digest(out)
    break_model(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(str(recipe), overwrite=True)
    assert tree_digest(out) == before
    assert not rundir.staging_path(out).exists(), "a failed new run leaves no staging folder behind"


def test_successful_overwrite_replaces_the_run(finished_run):
    recipe, out = finished_run
    old = json.loads((out / "results.json").read_text())
    results = train(str(recipe), ["training.seed=8"], overwrite=True)
    new = json.loads((out / "results.json").read_text())
    assert new["recipe"]["training"]["seed"] == 8 and old["recipe"]["training"]["seed"] == 7
    assert results["train"]["global_step"] == 6
    assert not rundir.staging_path(out).exists()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".out")) == []
    marker = rundir.read_marker(out)
    assert marker["finished"] and "model.safetensors" in marker["entries"]
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["a"]).shape[0] == 1


@pytest.mark.parametrize("stop_in", ["save_final", "finish"])
def test_interrupted_overwrite_is_resumed_then_swapped_in(stop_in, finished_run, monkeypatch):
    """An --overwrite run stopped after its checkpoints (before or after its results were written): the old run
    stays intact, and --resume completes the new run and only then puts it in place."""
    import embedkit.training.run as run_module

    recipe, out = finished_run
    before = tree_digest(out)
    target = run_module if stop_in == "save_final" else rundir.RunFolder
    original = getattr(target, stop_in)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, stop_in, stop)
    with pytest.raises(KeyboardInterrupt):
        train(str(recipe), ["training.seed=8"], overwrite=True)
    assert tree_digest(out) == before
    staging = rundir.staging_path(out)
    assert (staging / "checkpoints" / "checkpoint-6").is_dir(), "the new run's checkpoints are kept"
    monkeypatch.setattr(target, stop_in, original)
    results = train(str(recipe), ["training.seed=8"], resume=True)
    assert results["train"]["global_step"] == 6
    assert not staging.exists()
    assert json.loads((out / "results.json").read_text())["recipe"]["training"]["seed"] == 8


def test_failed_fresh_run_leaves_nothing_behind(tmp_path, tiny_model_path, monkeypatch):
    out = tmp_path / "new"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out)
    break_model(monkeypatch)
    with pytest.raises(RuntimeError):
        train(str(recipe))
    assert not out.exists()


# 2. one writer per folder -----------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from embedkit.training.rundir import RunFolder
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
folder = RunFolder(out, out); folder.lock(out)
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_into_a_locked_folder_fails_at_once_naming_the_holder(finished_run):
    recipe, out = finished_run
    before = tree_digest(out)
    holder = hold_lock(out)
    try:
        for kwargs in ({}, {"overwrite": True}):
            start = time.perf_counter()
            with pytest.raises(RecipeError) as err:
                train(str(recipe), **kwargs)
            assert f"output.dir {out}: in use by another embedkit run (pid {holder.pid} on " in str(err.value)
            assert time.perf_counter() - start < 3
    finally:
        holder.kill()
        holder.wait()
    assert {k: v for k, v in tree_digest(out).items() if not k.startswith(".embedkit.lock")} == {
        k: v for k, v in before.items() if not k.startswith(".embedkit.lock")}


def test_lock_of_a_killed_process_does_not_block(finished_run, tmp_path, tiny_model_path):
    recipe, out = finished_run
    holder = hold_lock(out)
    holder.kill()
    holder.wait()
    assert train(str(recipe), overwrite=True)["train"]["global_step"] == 6
    fresh = tmp_path / "fresh"
    killed = hold_lock(fresh)
    killed.kill()  # leaves only its lock files behind
    killed.wait()  # its lock is free once it has exited (a kill returns before; timeout-0 locks raced it)
    recipe = write_recipe(tmp_path / "r2", tiny_model_path, "simcse-unsup", fresh)
    assert train(str(recipe))["train"]["global_step"] == 4


# 3. --resume of a finished run -----------------------------------------------------------------------------


def test_resume_of_a_finished_run_changes_nothing(finished_run, capsys):
    recipe, out = finished_run
    before = tree_digest(out)
    results = train(str(recipe), resume=True)
    assert results["train"]["global_step"] == 6
    assert tree_digest(out) == before
    assert "this run finished (step 6" in capsys.readouterr().out


# 4. a corrupt newest checkpoint ----------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_resume_skips_a_corrupt_checkpoint_and_says_why(damaged, finished_run, capsys):
    recipe, out = finished_run
    interrupted(out)
    _truncate(out / "checkpoints" / "checkpoint-6" / damaged)
    capsys.readouterr()
    results = train(str(recipe), resume=True)
    log = capsys.readouterr().out
    assert f"skipping checkpoint-6: {damaged} has" in log and "(truncated?)" in log
    assert "resuming from" in log and "checkpoint-3" in log
    assert results["train"]["global_step"] == 6


def test_checkpoint_manifest_lists_every_file_and_catches_a_flipped_byte(finished_run):
    _, out = finished_run
    ckpt = out / "checkpoints" / "checkpoint-6"
    manifest = json.loads((ckpt / COMPLETE_MARKER).read_text())
    on_disk = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()
                     and p.name != COMPLETE_MARKER)
    assert sorted(manifest["files"]) == on_disk and "model.safetensors" in on_disk
    assert newest_intact(out / "checkpoints")[0] == ckpt
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one byte different
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    found, skipped = newest_intact(out / "checkpoints")
    assert found == out / "checkpoints" / "checkpoint-3"
    assert skipped == [("checkpoint-6", "model.safetensors does not match its checksum (corrupted?)")]


# 5. --resume with a recipe that changed its meaning -------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("training.batch_size=4", "training.batch_size"),
    ("method.name=esimcse", "method.name"),
    ("training.seed=1", "training.seed"),
    ("model.max_seq_length=12", "model.max_seq_length"),
])
def test_resume_refuses_a_changed_recipe_listing_the_keys(override, key, finished_run):
    recipe, out = finished_run
    interrupted(out)
    before = tree_digest(out)
    with pytest.raises(RecipeError, match=rf"differs from the run's: {key} "):
        train(str(recipe), [override], resume=True)
    assert tree_digest(out) == before


def test_resume_refuses_changed_training_data(finished_run):
    recipe, out = finished_run
    interrupted(out)
    data = Path(rundir.read_marker(out)["recipe"]["data"]["train"]["path"])
    data.write_text(data.read_text() + "one more sentence\n")
    with pytest.raises(RecipeError, match="data.train changed since the run started"):
        train(str(recipe), resume=True)


def test_resume_takes_keys_newer_than_the_run_at_their_value(finished_run):
    """A run started by an embedkit that had no ``method.temperature`` key yet resumes (the key is not a change)."""
    recipe, out = finished_run
    interrupted(out)
    marker = rundir.read_marker(out)
    del marker["recipe"]["method"]["temperature"]
    (out / rundir.MARKER).write_text(json.dumps(marker))
    assert train(str(recipe), resume=True)["train"]["global_step"] == 6


def test_resume_accepts_a_change_of_reporting_keys(finished_run):
    recipe, out = finished_run
    interrupted(out)
    results = train(str(recipe), ["training.logging_steps=2", "description=more logs"], resume=True)
    assert results["train"]["global_step"] == 6


# 9. output.dir that is a file; 14. --resume with no checkpoint writes nothing, fast -------------------------


def test_output_dir_that_is_a_file_is_one_line_in_check_and_train(tmp_path, tiny_model_path):
    target = tmp_path / "out"
    target.write_text("not a folder")
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", target)
    with pytest.raises(RecipeError, match=r"output\.dir .*out: is a file; expected a folder"):
        train(str(recipe))
    proc = subprocess.run([sys.executable, "-m", "embedkit.cli", "check", str(recipe)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "is a file; expected a folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_without_a_complete_checkpoint_is_fast_and_writes_nothing(tmp_path, tiny_model_path):
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # killed during its first save
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out)
    proc, cpu = run_timed([sys.executable, "-m", "embedkit.cli", "train", str(recipe), "--resume"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no complete checkpoint to resume from" in proc.stderr
    assert cpu < 1.5, f"took {cpu:.1f} CPU seconds"  # answered before a model (or torch) loads
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["checkpoints",
                                                                              "checkpoints/checkpoint-4"]
