"""The output folder of a training run: what may be written there, by whom, and how a run is never lost.

Guarantees (docs/reliability.md):

* **One writer per folder.** A run holds an exclusive ``filelock`` lock on ``<out>/.embedkit.lock`` from before
  it writes anything until it exits; a second run into the same folder fails at once naming the process that
  holds it. The lock is an OS (``flock``) lock, so one left by a killed process is released with it.
* **A finished run is never modified or deleted**, except by an explicit ``--overwrite`` of a folder that is
  recognisably an embedkit run (its ``.embedkit-run.json`` marker, and no file anywhere under it, checkpoints
  included, that embedkit did not write: a finished run's marker lists its files, each checkpoint's manifest its
  own) and only once
  the new run has finished: ``--overwrite`` trains into a hidden staging folder beside ``out`` and swaps it in at
  the end; if the new run fails, the old one is untouched. ``--resume`` of a finished run changes nothing.
* **Resume picks the newest intact checkpoint** (see :mod:`embedkit.training.checkpoints`) and refuses a recipe
  whose meaning changed since the run started.
* **Output paths and faults as every command's** (:mod:`embedkit.outputs`): a symbolic link to a folder is
  followed (the run is written, staged and swapped at the link's target; the link stays), a dangling one is
  refused; a folder nothing can be written in is named in one line before the model loads.

Nothing here imports torch: every refusal answers before a model loads, and writes nothing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from embedkit.distributed import is_main
from embedkit.errors import EmbedkitError, RecipeError
from embedkit.outputs import (
    RUN_MARKER,
    check_writable,
    forbidden_targets,
    remove,
    resolve_output,
    run_folder_of,
    walk_files,
    writing,
)
from embedkit.paths import atomic_path
from embedkit.training import checkpoints
from embedkit.version import __version__

MARKER = RUN_MARKER  # the first file of every output folder embedkit creates
LOCK = ".embedkit.lock"
OWNER = ".embedkit.lock.json"  # who holds the lock (the lock file itself stays empty: flock needs no content)
RESULTS = "results.json"  # written last: its presence marks a finished run
CHECKPOINTS = "checkpoints"
# What a run writes before it finishes; a finished run's marker lists its own top-level entries instead.
RUN_ENTRIES = {MARKER, LOCK, OWNER, "recipe.yaml", "logs", "mlruns", "wandb", "mined", CHECKPOINTS,
               ".final-model.partial", RESULTS + ".partial"}  # logs, mlruns, wandb: the experiment trackers'
# What those folders hold while a run is unfinished (a finished run's marker lists every file instead); the
# trackers' own folders (mlruns, wandb: training.report_to) hold whatever their library writes.
RUN_FILES = {"logs": "events.out.tfevents.*", "mined": "train*", "mlruns": "*", "wandb": "*"}

# Keys that may differ between a run and its --resume: they change when and how the run reports, not what it
# trains. Everything else (model, data, method, batch size, steps, seed, ...) is part of the run's meaning.
RESUMABLE_KEYS = (
    "description",
    "training.logging_steps",
    "training.report_to",
    "training.dataloader_workers",
    "eval.before",
    "eval.suite",
    "eval.mteb",
    "output.push_to_hub",
    "output.private",
    "output.license",
    "output.keep_checkpoints",  # what is kept once the run has finished
)


def staging_path(out: Path) -> Path:
    """Where an ``--overwrite`` run trains until it has finished: a hidden sibling of ``out``."""
    return out.parent / f".{out.name}.embedkit-staging"


def resume_work(out: Path) -> Path:
    """The folder ``--resume`` continues: an interrupted ``--overwrite`` run's staging folder when it holds
    checkpoints or its results (it finished, and ``output.keep_checkpoints: none`` removed its checkpoints, but
    it was stopped before the swap), else ``out``."""
    staging = staging_path(out)
    return staging if (staging / CHECKPOINTS).is_dir() or (staging / RESULTS).is_file() else out


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The run marker of ``folder``, or ``None`` when it has none (or it does not parse)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def foreign_files(folder: Path) -> list[str]:
    """Every file under a run folder, checkpoints included, that embedkit did not write (relative, sorted).

    A finished run's marker lists each file the run wrote outside ``checkpoints/``; an unfinished run holds only
    :data:`RUN_ENTRIES` with the files :data:`RUN_FILES` names; each checkpoint's manifest lists its files
    (:func:`embedkit.training.checkpoints.foreign_files`). A run finished by an embedkit whose marker listed its
    top-level entries only is checked at the top level (and in its checkpoints)."""
    marker = read_marker(folder) or {}
    listed = marker.get("files")
    legacy = set(marker.get("entries", [])) if listed is None else set()
    out = []
    for rel in walk_files(folder):
        top, _, rest = rel.partition("/")
        if (top == CHECKPOINTS and rest) or rel.endswith(".partial") or top.endswith(".partial"):
            continue  # checkpoints below; leftovers of an interrupted atomic write are embedkit's
        if listed is not None:
            if rel not in listed and not (not rest and top in RUN_ENTRIES):
                out.append(rel)
        elif top not in RUN_ENTRIES | legacy:
            out.append(rel)
        elif rest and top in RUN_FILES and top not in legacy and not fnmatch.fnmatch(Path(rest).name,
                                                                                     RUN_FILES[top]):
            out.append(rel)
    if (folder / CHECKPOINTS).is_dir():
        out += [f"{CHECKPOINTS}/{rel}" for rel in checkpoints.foreign_files(folder / CHECKPOINTS)]
    return sorted(out)


def check_overwritable(out: Path) -> None:
    """Refuse ``--overwrite`` of anything but a folder that is recognisably an embedkit run."""
    what = forbidden_targets().get(out.resolve())
    if what:
        raise RecipeError(f"output.dir {out}: is {what}; --overwrite never replaces it, choose another output.dir")
    if read_marker(out) is None:
        raise RecipeError(
            f"output.dir {out}: --overwrite replaces only folders that embedkit created (with a {MARKER} marker); "
            "this one is not, so it is left alone: remove it yourself or choose another output.dir"
        )
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RecipeError(
            f"output.dir {out}: holds files that embedkit did not write ({shown}); --overwrite would delete them, "
            "so it refuses: move them out or choose another output.dir"
        )


def recipe_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved recipes (outside :data:`RESUMABLE_KEYS`)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        if key not in saved:
            continue  # a key the run's embedkit did not have yet: the run had its behaviour, the default's
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            if "name" in a and a.get("name") != b.get("name"):  # another method/model: its parameters follow
                out.append(f"{path}.name ({a.get('name')!r} -> {b.get('name')!r})")
                continue
            out += recipe_differences(a, b, f"{path}.")
        elif a != b and path not in RESUMABLE_KEYS:
            out.append(f"{path} ({a!r} -> {b!r})")
    return out


@dataclass
class RunFolder:
    """An output folder reserved for one run.

    ``work`` is where this run writes (``out``, or the staging folder of an ``--overwrite``); :meth:`finish`
    moves a staged run into place. Use as a context manager: the lock is released on exit, and a run that
    fails before it wrote a checkpoint removes the folder it created (nothing half-written is left behind).
    """

    out: Path
    work: Path
    staged: bool = False
    created: bool = False  # ``work`` was absent or empty before this run
    out_created: bool = False  # ``out`` did not exist before this run
    _locks: list[Any] = field(default_factory=list)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and is_main():
                self._clean_failed()
        finally:
            self.release()

    def _clean_failed(self) -> None:
        """A failed run that wrote no checkpoint leaves nothing behind (one with checkpoints can be resumed; one
        that finished, and may have removed its checkpoints, failed after its results: it is kept as it is)."""
        checkpoints = self.work / CHECKPOINTS
        if not self.created or (checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))) or (
                self.work / RESULTS).is_file():
            return
        self.release()
        if self.staged:
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.work.is_dir():
            for entry in self.work.iterdir():
                if entry.name in RUN_ENTRIES:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if self.out_created and self.out.is_dir() and {p.name for p in self.out.iterdir()} <= {LOCK, OWNER}:
            shutil.rmtree(self.out, ignore_errors=True)

    def release(self) -> None:
        while self._locks:
            lock = self._locks.pop()
            owner = Path(lock.lock_file).parent / OWNER
            if owner.is_file() and _holder_pid(owner) == os.getpid():
                owner.unlink()  # only while held: a finished run's folder ends as it was
            lock.release()

    def lock(self, folder: Path) -> None:
        """Take the exclusive lock of ``folder`` (created if needed) or fail naming its holder."""
        self._locks.append(_acquire(folder, self.out))
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}
        (folder / OWNER).write_text(json.dumps(owner), encoding="utf-8")

    def write_marker(self, **info: Any) -> None:
        marker = read_marker(self.work) or {"created": time.strftime("%Y-%m-%d %H:%M:%S")}
        marker.update(info, embedkit=__version__)
        _write_json(self.work / MARKER, marker)

    def finish(self) -> None:
        """Record the finished run's entries in its marker and, for a staged run, swap it into ``out``."""
        if not is_main():
            return
        entries = sorted(p.name for p in self.work.iterdir())
        files = [rel for rel in walk_files(self.work) if not rel.startswith(CHECKPOINTS + "/")
                 and rel not in (MARKER, OWNER)]  # checkpoints list theirs in their manifests
        self.write_marker(entries=entries, files=files, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        if not self.staged:
            return
        # Two renames: until the second one ``out`` is the old, complete run; a crash between them leaves the
        # old run complete in ``.<name>.embedkit-replaced`` and the new one in the staging folder.
        old = self.out.parent / f".{self.out.name}.embedkit-replaced"
        remove(old)  # a link left by an embedkit that did not follow links is removed, never its target
        self.out.rename(old)
        self.work.rename(self.out)
        self.work = self.out
        shutil.rmtree(old, ignore_errors=True)


def probe_lock(folder: Path, out: Path) -> None:
    """Fail now, naming the holder, when another run holds ``folder``'s lock (creates nothing)."""
    if (folder / LOCK).is_file():
        _acquire(folder, out).release()


def _acquire(folder: Path, out: Path) -> Any:
    """``folder``'s lock, held, or one line naming the run that holds it."""

    lock = FileLock(str(folder / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RecipeError(f"output.dir {out}: in use by another embedkit run ({_holder(folder)}); "
                          "wait for it to finish or choose another output.dir") from None
    return lock


def _holder_pid(owner: Path) -> int | None:
    try:
        return int(json.loads(owner.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _holder(folder: Path) -> str:
    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}: {owner['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no details"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")


def check_output_path(out: Path) -> Path:
    """``output.dir`` must be a folder (or not exist yet); used by ``check`` and ``train``. Returns it with
    symbolic links followed (a dangling link is refused: :func:`embedkit.outputs.resolve_output`)."""
    try:
        resolved = resolve_output(out, "output.dir")
    except EmbedkitError as err:
        raise RecipeError(str(err)) from None
    if resolved.exists() and not resolved.is_dir():
        raise RecipeError(f"output.dir {out}: is a file; expected a folder (new, or an earlier run's)")
    outer = run_folder_of(Path(os.path.abspath(resolved)).parent)
    if outer is not None:
        raise RecipeError(f"output.dir {out}: lies inside the training run folder {outer}; a run never goes inside "
                          "another (that run's --overwrite would refuse it, its push would upload it): choose "
                          "another output.dir")
    return resolved


def check_open(out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Every refusal of :func:`open_run`, read-only: nothing is created, locked or written (``embedkit check``
    runs it with the same flags as ``train``). Only the primary process checks the folder itself. Returns the
    folder a link resolves to (:func:`check_output_path`)."""
    out = check_output_path(out)
    if resume and overwrite:
        raise RecipeError("--resume and --overwrite: choose one (resume continues a run, overwrite replaces it)")
    if not is_main():
        return out
    probe_lock(out, out)  # a run in progress is named before any other refusal
    if resume:
        if not resume_work(out).is_dir():
            raise RecipeError(f"output.dir {out}: does not exist; nothing to resume")
        return out
    holds_files = out.exists() and any(p.name not in (LOCK, OWNER) for p in out.iterdir())
    if holds_files and not overwrite:
        raise RecipeError(
            f"output.dir {out} already holds files; use --resume to continue that run, --overwrite to replace "
            "it, or choose another output.dir"
        )
    if holds_files:
        check_overwritable(out)
    return out


def open_run(out: Path, *, resume: bool, overwrite: bool) -> RunFolder:
    """Reserve ``out`` for a run: every refusal happens here, before anything is written.

    * a fresh run needs ``out`` absent or empty;
    * ``--overwrite`` needs ``out`` absent, empty or an embedkit run folder (see :func:`check_overwritable`) and
      always trains into the staging folder (so every process knows where from the flags alone);
    * ``--resume`` continues an interrupted ``--overwrite`` run in its staging folder when one is there, else
      the run in ``out``; the caller checks checkpoints and the recipe.

    Only the primary process (rank 0) checks, locks and writes; the others compute the same paths.
    """
    out = check_open(out, resume=resume, overwrite=overwrite)
    staging = staging_path(out)
    if resume:
        work = resume_work(out)
        if not is_main():
            return RunFolder(out, work, staged=work != out)
    elif not is_main():
        return RunFolder(out, staging if overwrite else out, staged=overwrite)
    if resume:
        check_writable(work, f"output.dir {out}")
        folder = RunFolder(out, work, staged=work != out)
        folder.lock(out)
        if folder.staged:
            folder.lock(work)
        return folder
    check_writable(out, f"output.dir {out}")  # the run's folder (or where it will be created)
    if overwrite:
        check_writable(out.parent, f"output.dir {out}")  # the staging folder and the swap
    folder = RunFolder(out, staging if overwrite else out, staged=overwrite, created=True,
                       out_created=not out.exists())
    with writing(out, "creating it", f"output.dir {out}"):
        out.mkdir(parents=True, exist_ok=True)
    folder.lock(out)  # held until the end (and the swap): no other run may start on this folder meanwhile
    if overwrite:
        if staging.exists():  # left by a killed --overwrite run; ours to replace while we hold out's lock
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        folder.lock(staging)
    folder.write_marker()
    return folder
