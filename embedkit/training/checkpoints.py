"""Checkpoint manifests: a checkpoint counts only once every file in it is complete, and is verified before use.

When a checkpoint has been written (model, optimizer, scheduler, RNG, trainer state, method state), the trainer
writes ``embedkit_checkpoint.json`` into it last, atomically, listing every file with its size and SHA-256.
``--resume`` walks the checkpoints newest first and takes the first whose files all match; a checkpoint that a
full disk or a kill during a save left truncated is skipped with the reason, and so is one whose weights were
not finite when it was saved (the manifest's ``weights_finite``), or whose training state was removed when
its run finished. Torch-free, so ``--resume`` with no usable checkpoint answers before a model loads.

**Keeping checkpoints after the run** (``output.keep_checkpoints``): once a run has
finished (``results.json`` written), its checkpoints are only weights to merge or inspect; the training state
that ``--resume`` needed (optimizer moments, scheduler, RNG, the loss's own state: :data:`TRAINING_STATE`) is
removed (``weights``, the default), along with every checkpoint but the selected one (``best``) or the whole
``checkpoints/`` folder (``none``); ``all`` keeps everything. :func:`plan_keep` decides what goes and records it
(in ``results.json``); :func:`apply_keep` removes it, and rewrites each trimmed checkpoint's manifest so that
it still lists exactly the files in it. A checkpoint holding a file embedkit did not write is never removed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

from embedkit.data.sts import sha256_file
from embedkit.outputs import walk_files
from embedkit.paths import atomic_path

COMPLETE_MARKER = "embedkit_checkpoint.json"
# sentence-transformers' trainer makes <output_dir>/eval at every evaluation for its evaluators' CSV files;
# embedkit's evaluators write none there, so an empty one is the trainer's, not a user's.
TRAINER_EVAL_DIR = "eval"
METHOD_STATE_FILE = "embedkit_method_state.safetensors"  # the loss's own state (a head, a queue, a stage)
# What a checkpoint holds only for ``--resume`` (the trainer's names; the first path part of a file): the
# optimizer's moments (twice the trainable weights under AdamW), schedule, loss scaler, RNG states, the trainer's
# arguments, the loss's own state, and DeepSpeed's ``global_step*/`` shards with their ``latest`` and script.
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "optimizer_*", "scheduler.pt", "scaler.pt", "rng_state*.pth",
                  "training_args.bin", METHOD_STATE_FILE, "global_step*", "latest", "zero_to_fp32.py")
# What the trainer writes into a checkpoint, for one whose save was interrupted before its manifest: model and
# tokenizer files, optimizer, scheduler, RNG and trainer state, embedkit's method state (a sub-module's config).
TRAINER_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.json", "*.model", "vocab.txt", "merges.txt",
                 "README.md", "tokenizer*")


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, sha256}}`` for every file under ``folder`` except the manifest itself."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != COMPLETE_MARKER and not rel.endswith(".partial"):
            out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def write_manifest(folder: str | os.PathLike, **info: Any) -> Path:
    """Write the manifest of ``folder`` (call once all its files are written); returns its path."""

    folder = Path(folder)
    manifest = {**info, "files": file_entries(folder)}
    with atomic_path(folder / COMPLETE_MARKER) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return folder / COMPLETE_MARKER


def verify(folder: Path) -> str | None:
    """``None`` when ``folder`` is an intact checkpoint, else why it is not (one short clause)."""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return "incomplete (no manifest: the save did not finish)"
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"its manifest {COMPLETE_MARKER} does not parse"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(manifest, dict) and manifest.get("weights_finite") is False:
        return "its weights are not finite (NaN or ±inf: training had diverged by this save)"
    if isinstance(manifest, dict) and manifest.get("training_state_removed"):
        return (f"its training state ({', '.join(manifest['training_state_removed'])}) was removed when the run "
                "finished (output.keep_checkpoints); it holds the weights only")
    if files is None:
        return None  # written by an embedkit before manifests listed files: complete, not verifiable
    for rel, entry in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{rel} has {size:,} bytes, the manifest says {entry['size']:,} (truncated?)"
        if sha256_file(path) != entry["sha256"]:
            return f"{rel} does not match its checksum (corrupted?)"
    return None


def checkpoint_foreign(folder: Path) -> list[str]:
    """Files of one checkpoint that embedkit did not write: those its manifest does not list (a checkpoint whose
    save was interrupted has none: then those unlike anything the trainer writes, :data:`TRAINER_FILES`)."""
    manifest = manifest_of(folder) or None
    if manifest is not None and not isinstance(manifest.get("files"), dict):
        return []  # written before manifests listed files: accepted, as :func:`verify` does
    listed = manifest["files"] if manifest is not None else None
    out = []
    for rel in walk_files(folder):
        if rel == COMPLETE_MARKER or rel.endswith(".partial"):
            continue
        if listed is not None and rel not in listed:
            out.append(rel)
        elif listed is None and not any(fnmatch.fnmatch(Path(rel).name, p) for p in TRAINER_FILES):
            out.append(rel)
    return out


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """Files under a run's ``checkpoints/`` folder that embedkit did not write (relative to it, sorted)."""
    folder = Path(folder)
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and _step(entry) is not None:
            out += [f"{entry.name}/{rel}" for rel in checkpoint_foreign(entry)]
        elif entry.name == TRAINER_EVAL_DIR and entry.is_dir() and not entry.is_symlink() and not any(
                entry.iterdir()):
            continue  # the trainer's empty eval/ (TRAINER_EVAL_DIR)
        elif not entry.name.endswith(".partial"):
            out += [entry.name] if not entry.is_dir() or entry.is_symlink() else [
                f"{entry.name}/{rel}" for rel in walk_files(entry)] or [entry.name + "/"]
    return sorted(out)


def drop_trainer_eval_dir(folder: str | os.PathLike) -> None:
    """Remove the trainer's ``eval/`` under a run's ``checkpoints/`` folder when it is empty (a file in it is kept:
    it is someone's)."""
    try:
        (Path(folder) / TRAINER_EVAL_DIR).rmdir()
    except OSError:  # absent, or not empty
        pass


def rotate(folder: str | os.PathLike, limit: int | None, best: str | os.PathLike | None = None,
           keep_newest: bool = True) -> list[tuple[str, list[str]]]:
    """Delete the oldest checkpoints beyond ``limit``, as the trainer's ``save_total_limit`` does (the newest, unless
    ``keep_newest`` is off, and the ``best`` are always kept), except a checkpoint that holds a file embedkit did
    not write: that one is kept, and returned with those files, so rotation never deletes a user's file."""
    if not limit or limit <= 0:
        return []
    steps = [(s, p) for p in Path(folder).glob("checkpoint-*")
             if p.is_dir() and not p.is_symlink() and (s := _step(p)) is not None]
    found = [p for _, p in sorted(steps)]
    if len(found) <= limit and keep_newest:
        return []
    protected = ({os.path.realpath(found[-1])} if keep_newest else set()) | (
        {os.path.realpath(best)} if best else set())
    keep, remaining, kept = max(limit, len(protected)), len(found), []
    for path in found:
        if remaining <= keep:
            break
        if os.path.realpath(path) in protected:
            continue
        foreign = checkpoint_foreign(path)
        if foreign:
            kept.append((path.name, foreign))
            continue
        shutil.rmtree(path, ignore_errors=True)
        remaining -= 1
    return kept


def _step(folder: Path) -> int | None:
    try:
        return int(folder.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def newest_intact(folder: str | os.PathLike) -> tuple[Path | None, list[tuple[str, str]]]:
    """The intact checkpoint with the highest step under ``folder`` and the newer ones skipped, with why."""
    found = [(s, p) for p in Path(folder).glob("checkpoint-*") if p.is_dir() and (s := _step(p)) is not None]
    skipped = []
    for _, path in sorted(found, reverse=True):
        reason = verify(path)
        if reason is None:
            return path, skipped
        skipped.append((path.name, reason))
    return None, skipped


def complete_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints whose manifest exists, newest (highest step) first (unverified: cheap, for messages)."""
    steps = [(s, p) for p in Path(folder).glob("checkpoint-*") if (s := _step(p)) is not None
             and (p / COMPLETE_MARKER).is_file()]
    return [p for _, p in sorted(steps, reverse=True)]


def manifest_of(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's manifest, or ``{}`` when it is missing or does not parse."""
    try:
        manifest = json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def latest_complete(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step whose manifest exists (unverified: cheap, for messages)."""
    found = complete_checkpoints(folder)
    return found[0] if found else None


def is_training_state(rel: str) -> bool:
    """Whether a checkpoint's file (path relative to it) is :data:`TRAINING_STATE`."""
    first = rel.split("/", 1)[0]
    return any(fnmatch.fnmatch(first, pattern) for pattern in TRAINING_STATE)


def _bytes(folder: Path, rels: list[str]) -> int:
    return sum((folder / rel).stat().st_size for rel in rels if (folder / rel).is_file())


def plan_keep(folder: str | os.PathLike, keep: str, best: str | os.PathLike | None) -> dict[str, Any]:
    """What a finished run keeps of its ``checkpoints/`` folder under ``keep`` (``output.keep_checkpoints``), as the
    record ``results.json`` holds and :func:`apply_keep` carries out: ``kept`` and ``removed`` checkpoints, the
    ``training_state_removed`` file names, the bytes of the folder ``before`` and ``after``, and
    ``kept_for_user_files`` (a checkpoint holding a file embedkit did not write stays, trimmed). ``best``: the
    selected checkpoint (the trainer's ``best_model_checkpoint``); without one, the newest complete checkpoint."""
    folder = Path(folder)
    record: dict[str, Any] = {"keep": keep, "kept": [], "removed": [], "training_state_removed": [],
                              "folder_removed": False, "kept_for_user_files": {}, "bytes_before": 0,
                              "bytes_after": 0}
    if not folder.is_dir():
        return record
    found = sorted((s, p) for p in folder.glob("checkpoint-*")
                   if p.is_dir() and not p.is_symlink() and (s := _step(p)) is not None)
    everything = walk_files(folder)
    record["bytes_before"] = _bytes(folder, everything)
    complete = [p for _, p in found if (p / COMPLETE_MARKER).is_file()]
    selected = (folder / Path(best).name) if best and (folder / Path(best).name) in complete else (
        complete[-1] if complete else None)
    if keep == "all":
        record["kept"] = [p.name for _, p in found]
        record["bytes_after"] = record["bytes_before"]
        return record
    state: set[str] = set()
    after = 0
    for _, path in found:
        files = [rel for rel in walk_files(path) if rel != COMPLETE_MARKER]
        foreign = checkpoint_foreign(path)
        stays = path in complete and (keep == "weights" or (keep == "best" and path == selected))
        if not stays and not foreign:
            record["removed"].append(path.name)
            continue
        if not stays:
            record["kept_for_user_files"][path.name] = foreign
        record["kept"].append(path.name)
        trimmed = [rel for rel in files if rel not in foreign and is_training_state(rel)] if (
            path in complete) else []  # an incomplete checkpoint lists nothing: only a user's file keeps it
        state.update(rel.split("/", 1)[0] for rel in trimmed)
        after += _bytes(path, [rel for rel in files if rel not in trimmed]) + _bytes(path, [COMPLETE_MARKER])
    loose = checkpoint_foreign_loose(folder)
    after += _bytes(folder, loose)
    record["training_state_removed"] = sorted(state)
    record["folder_removed"] = keep == "none" and not record["kept"] and not loose
    record["bytes_after"] = after
    return record


def checkpoint_foreign_loose(folder: Path) -> list[str]:
    """Files in a ``checkpoints/`` folder outside its checkpoint folders (a user's; ``.partial`` leftovers are
    embedkit's), relative to it."""
    return [rel for rel in foreign_files(folder) if _step(folder / rel.split("/", 1)[0]) is None
            or not (folder / rel.split("/", 1)[0]).is_dir()]


def apply_keep(folder: str | os.PathLike, record: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Carry out :func:`plan_keep`'s record (again, after an interruption: what is gone stays gone). Each kept
    checkpoint loses its training state and gets a manifest listing what is left (``training_state_removed``
    names what went, so ``--resume`` skips it); a removed one goes whole, unless a file embedkit did not write
    appeared in it since: then it stays, and is returned with those files."""
    folder = Path(folder)
    if record.get("keep", "all") == "all" or not folder.is_dir():
        return []
    spared = []
    for name in record.get("removed", []):
        path = folder / name
        if not path.is_dir():
            continue
        foreign = checkpoint_foreign(path)
        if foreign:
            spared.append((name, foreign))
            continue
        shutil.rmtree(path)
    for name in record.get("kept", []):
        path = folder / name
        manifest = manifest_of(path)
        files = manifest.get("files")
        if not isinstance(files, dict):
            continue  # incomplete, or from before manifests listed files: left as it is
        trimmed = [rel for rel in files if is_training_state(rel)]
        if not trimmed:
            continue
        for rel in trimmed:  # the files first, then the manifest: it never lists a file that is gone for good
            target = path / rel
            if target.is_file() or target.is_symlink():
                target.unlink()
        for sub in sorted({rel.split("/", 1)[0] for rel in trimmed if "/" in rel}):
            if (path / sub).is_dir() and not any(p.is_file() for p in (path / sub).rglob("*")):
                shutil.rmtree(path / sub)
        removed = sorted({*manifest.get("training_state_removed", []), *(r.split("/", 1)[0] for r in trimmed)})
        kept = {rel: entry for rel, entry in files.items() if rel not in trimmed}
        with atomic_path(path / COMPLETE_MARKER) as tmp:
            tmp.write_text(json.dumps({**manifest, "files": kept, "training_state_removed": removed}, indent=1),
                           encoding="utf-8")
    if record.get("folder_removed") and not spared:
        for entry in folder.iterdir():  # only .partial leftovers can be left: plan_keep saw no user's file
            if entry.name.endswith(".partial"):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    return spared
