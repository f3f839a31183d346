"""Checkpoint manifests: a checkpoint counts only once every file in it is complete, and is verified before use.

When a checkpoint has been written (model, optimizer, scheduler, RNG, trainer state, method state), the trainer
writes ``embedkit_checkpoint.json`` into it last, atomically, listing every file with its size and SHA-256.
``--resume`` walks the checkpoints newest first and takes the first whose files all match; a checkpoint that a
full disk or a kill during a save left truncated is skipped with the reason, and so is one whose weights were
not finite when it was saved (the manifest's ``weights_finite``). Torch-free, so ``--resume`` with no
usable checkpoint answers before a model loads.
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
        elif not entry.name.endswith(".partial"):
            out += [entry.name] if not entry.is_dir() or entry.is_symlink() else [
                f"{entry.name}/{rel}" for rel in walk_files(entry)] or [entry.name + "/"]
    return sorted(out)


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
