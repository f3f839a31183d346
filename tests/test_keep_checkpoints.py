"""``output.keep_checkpoints``: what a finished run keeps of its checkpoints (docs/reliability.md).

A finished run's checkpoints were whole: the optimizer's two moments per weight, the schedule, RNG and the
loss's own state, which only ``--resume`` of an unfinished run reads. Now, once ``results.json`` is written,
``weights`` (the default) keeps each checkpoint's model and trainer state only, ``best`` the selected checkpoint
only, ``none`` no ``checkpoints/`` folder, ``all`` everything. A run that has not finished keeps everything.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _mp_helpers import kill_resume_compare, write_recipe

from embedkit.errors import EmbedkitError, RecipeError
from embedkit.training import checkpoints, rundir
from embedkit.training.checkpoints import COMPLETE_MARKER
from embedkit.training.run import train

STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "embedkit_method_state.safetensors"}
WEIGHTS = {"model.safetensors", "config.json", "modules.json", "tokenizer.json", "trainer_state.json",
           COMPLETE_MARKER}


def tree(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def run(tmp_path: Path, model: str, keep: str | None, name: str = "out") -> tuple[Path, Path]:
    """A finished 6-step run (checkpoints at 3 and 6), ``keep`` None: the default."""
    out = tmp_path / name
    recipe = write_recipe(tmp_path / f"{name}-recipe", model, "simcse-unsup", out,
                          training={"max_steps": 6, "save_steps": 3},
                          output={"keep_checkpoints": keep} if keep else {})
    train(str(recipe))
    return recipe, out


@pytest.fixture()
def whole_and_default(tmp_path, tiny_model_path):
    return run(tmp_path, tiny_model_path, "all", "whole"), run(tmp_path, tiny_model_path, None, "default")


def test_default_keeps_each_checkpoints_weights_and_drops_its_training_state(whole_and_default):
    (_, whole), (_, out) = whole_and_default
    for name in ("checkpoint-3", "checkpoint-6"):
        full, trimmed = whole / "checkpoints" / name, out / "checkpoints" / name
        assert STATE <= {p.name for p in full.iterdir()}, "all: every checkpoint whole"
        names = {p.name for p in trimmed.iterdir()}
        assert WEIGHTS <= names and not names & STATE, sorted(names)
        manifest = json.loads((trimmed / COMPLETE_MARKER).read_text())
        on_disk = sorted(p.relative_to(trimmed).as_posix() for p in trimmed.rglob("*") if p.is_file()
                         and p.name != COMPLETE_MARKER)
        assert sorted(manifest["files"]) == on_disk, "the manifest lists exactly what is left"
        assert manifest["training_state_removed"] == sorted(STATE)
    assert rundir.foreign_files(out) == [], "--overwrite still recognises every file as embedkit's"
    # The checkpoints folder shrinks by the training state (here the optimizer's moments are twice the weights).
    before = sum(tree(whole / "checkpoints").values())
    after = sum(tree(out / "checkpoints").values())
    record = json.loads((out / "results.json").read_text())["checkpoints"]
    assert record["keep"] == "weights" and record["kept"] == ["checkpoint-3", "checkpoint-6"]
    assert record["removed"] == [] and record["training_state_removed"] == sorted(STATE)
    assert abs(record["bytes_before"] - before) < 0.01 * before and abs(record["bytes_after"] - after) < 0.01 * after
    assert after < 0.5 * before, (after, before)
    assert json.loads((whole / "results.json").read_text())["checkpoints"]["bytes_after"] == before


def test_trimmed_checkpoints_still_load_and_merge(whole_and_default, tmp_path):
    """Users merge checkpoints (``merge RUN/checkpoints/checkpoint-N``): a trimmed one is a whole model."""
    from sentence_transformers import SentenceTransformer

    from embedkit.merging import merge

    _, (_, out) = whole_and_default
    ckpts = [out / "checkpoints" / f"checkpoint-{s}" for s in (3, 6)]
    merge([str(c) for c in ckpts], "average", output=str(tmp_path / "soup"))
    soup = SentenceTransformer(str(tmp_path / "soup"), device="cpu")
    assert soup.encode(["a sentence"]).shape == (1, 32)


@pytest.mark.parametrize("keep", [None, "none"])
def test_resume_of_a_finished_trimmed_run_changes_nothing(keep, tmp_path, tiny_model_path, capsys):
    recipe, out = run(tmp_path, tiny_model_path, keep)
    assert (out / "checkpoints").is_dir() == (keep is None)
    before = tree(out)
    capsys.readouterr()
    assert train(str(recipe), resume=True)["train"]["global_step"] == 6
    assert "this run finished (step 6" in capsys.readouterr().out
    assert tree(out) == before
    proc = subprocess.run([sys.executable, "-m", "embedkit.cli", "check", str(recipe), "--resume"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "embedkit.cli", "train", str(recipe), "--resume"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "this run finished (step 6" in proc.stdout, proc.stderr
    assert tree(out) == before


def test_none_removes_the_checkpoints_folder_and_overwrite_still_works(tmp_path, tiny_model_path):
    recipe, out = run(tmp_path, tiny_model_path, "none")
    assert not (out / "checkpoints").exists()
    assert (out / "model.safetensors").is_file() and (out / "results.json").is_file()
    marker = rundir.read_marker(out)
    assert "checkpoints" not in marker["entries"] and not any(f.startswith("checkpoints/") for f in marker["files"])
    assert rundir.foreign_files(out) == []
    assert train(str(recipe), ["training.seed=8"], overwrite=True)["train"]["global_step"] == 6


def test_a_trimmed_checkpoint_is_never_resumed_from(whole_and_default, capsys):
    """Were a finished run's results.json lost, --resume must not continue from a checkpoint without its
    optimizer state (transformers would silently start a fresh optimizer): it says why it skips each."""
    _, (recipe, out) = whole_and_default
    (out / "results.json").unlink()
    with pytest.raises(RecipeError, match="no intact checkpoint to resume from"):
        train(str(recipe), resume=True)
    log = capsys.readouterr().out
    assert "skipping checkpoint-6: its training state (embedkit_method_state.safetensors, optimizer.pt" in log
    assert "skipping checkpoint-3:" in log


def test_best_keeps_the_selected_checkpoint_only(whole_and_default, tmp_path):
    (_, whole), _ = whole_and_default
    folder = Path(shutil.copytree(whole / "checkpoints", tmp_path / "copy"))
    newest = checkpoints.plan_keep(folder, "best", None)
    assert newest["kept"] == ["checkpoint-6"] and newest["removed"] == ["checkpoint-3"], "no dev set: the newest"
    record = checkpoints.plan_keep(folder, "best", "/elsewhere/staging/checkpoints/checkpoint-3")
    assert record["kept"] == ["checkpoint-3"] and record["removed"] == ["checkpoint-6"]
    assert checkpoints.apply_keep(folder, record) == []
    assert [p.name for p in folder.iterdir()] == ["checkpoint-3"]
    names = {p.name for p in (folder / "checkpoint-3").iterdir()}
    assert WEIGHTS <= names and not names & STATE
    assert checkpoints.foreign_files(folder) == []
    assert sum(tree(folder).values()) <= record["bytes_after"] * 1.01
    assert checkpoints.apply_keep(folder, record) == [], "carried out again (after a stop): nothing changes"


def test_a_checkpoint_holding_a_users_file_is_kept(whole_and_default, tmp_path):
    (_, whole), _ = whole_and_default
    folder = Path(shutil.copytree(whole / "checkpoints", tmp_path / "copy"))
    (folder / "checkpoint-3" / "note.md").write_text("my notes")
    record = checkpoints.plan_keep(folder, "none", None)
    assert record["removed"] == ["checkpoint-6"] and record["kept_for_user_files"] == {"checkpoint-3": ["note.md"]}
    assert not record["folder_removed"]
    checkpoints.apply_keep(folder, record)
    assert (folder / "checkpoint-3" / "note.md").read_text() == "my notes"
    assert not (folder / "checkpoint-3" / "optimizer.pt").exists() and not (folder / "checkpoint-6").exists()
    assert checkpoints.foreign_files(folder) == ["checkpoint-3/note.md"]


def test_a_run_that_fails_at_the_end_keeps_every_checkpoint_whole(tmp_path, tiny_model_path, monkeypatch):
    import embedkit.training.run as run_module

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out, training={"max_steps": 6, "save_steps": 3},
                          output={"keep_checkpoints": "none"})
    save_final = run_module.save_final

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module, "save_final", fail)
    with pytest.raises(EmbedkitError, match="no space left on the device.*checkpoints are intact"):
        train(str(recipe))
    for name in ("checkpoint-3", "checkpoint-6"):
        assert STATE <= {p.name for p in (out / "checkpoints" / name).iterdir()}
    monkeypatch.setattr(run_module, "save_final", save_final)
    assert train(str(recipe), resume=True)["checkpoints"]["keep"] == "none"
    assert not (out / "checkpoints").exists()


def test_interrupted_overwrite_without_checkpoints_is_swapped_in_on_resume(tmp_path, tiny_model_path, monkeypatch):
    """An --overwrite run with ``none`` that finished but was stopped before its swap: --resume finds its staging
    folder (no checkpoints, results.json) and puts it in place; the stop itself removed nothing."""
    recipe, out = run(tmp_path, tiny_model_path, "none")
    original = rundir.RunFolder.finish

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.RunFolder, "finish", stop)
    with pytest.raises(KeyboardInterrupt):
        train(str(recipe), ["training.seed=8"], overwrite=True)
    staging = rundir.staging_path(out)
    assert (staging / "results.json").is_file() and not (staging / "checkpoints").exists()
    monkeypatch.setattr(rundir.RunFolder, "finish", original)
    assert train(str(recipe), ["training.seed=8"], resume=True)["train"]["global_step"] == 6
    assert not staging.exists()
    assert json.loads((out / "results.json").read_text())["recipe"]["training"]["seed"] == 8


def test_bad_value_is_one_line_naming_file_line_key_and_the_choices(tmp_path, tiny_model_path):
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out",
                          output={"keep_checkpoints": "last"})
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if "keep_checkpoints" in text)
    expected = (f"{recipe}:{line}: output.keep_checkpoints: Input should be 'all', 'weights', 'best' or 'none' "
                "(got 'last')")
    with pytest.raises(RecipeError) as err:
        train(str(recipe))
    assert str(err.value) == expected
    proc = subprocess.run([sys.executable, "-m", "embedkit.cli", "check", str(recipe)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"embedkit: error: {expected}"
    assert not (tmp_path / "out").exists()


def test_killed_run_resumes_bit_exact_and_is_trimmed_only_when_finished(tmp_path, spread_model_path):
    """The default keeps everything until the run finishes: a run SIGKILLed after its first checkpoint resumes
    from it bit for bit (optimizer, scheduler, RNG and loss state were all there)."""
    report = kill_resume_compare(tmp_path, spread_model_path, "simcse-unsup", keep_checkpoints=None,
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8})
    killed = report["killed"]
    assert killed["returncode"] == -signal.SIGKILL and killed["checkpoints"] == ["checkpoint-8"]
    assert STATE <= set(killed["checkpoint_files"]), killed["checkpoint_files"]
    assert "resuming from" in report["resume_log"] and "checkpoint-8" in report["resume_log"]
    assert report["global_step"] == (12, 12)
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    for out in (tmp_path / "uninterrupted", tmp_path / "killed"):
        for ckpt in (out / "checkpoints").iterdir():
            assert not {p.name for p in ckpt.iterdir()} & STATE, ckpt
