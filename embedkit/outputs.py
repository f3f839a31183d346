"""Where a command writes, and the promises every command that writes keeps (docs/reliability.md, "Outputs").

``train`` (through :mod:`embedkit.training.rundir`), ``merge``, ``data mine``, ``data diagnose``, ``eval`` and
``encode`` write through this module, and so will any later command (an ``export``): check the target with
:func:`check_file_output` or :func:`open_folder` before anything loads, write through the object it returns, and
every promise below holds without code of its own.

* **Never into or over an input, a training run, or files the command did not write.** An output may not be an
  input, lie inside an input folder, hold an input (a folder output), or be or lie inside a training run's folder
  (its ``.embedkit-run.json`` marker: only ``train`` writes there). A folder output records the files it wrote in
  ``.embedkit-output.json``; ``--overwrite`` (and a report command's re-run into its own folder) replaces a folder
  only when every file in it is listed there, by the same command. A file output replaces an existing file only
  with ``--overwrite``, and its sidecars (``data mine``'s ``OUT.stats.json`` and ``OUT.png``) only when they are
  an earlier run's of the same command.
* **Symbolic links are followed; dangling ones are refused.** An output path through a link to an existing file
  or folder is resolved and written as its target: the link stays a link and now shows the new output. A link
  whose target does not exist (or a loop) is refused in one line: creating the target could put the output on a
  disk the user did not mean (an unmounted or mistyped target).
* **All or nothing.** Each file is written under a temporary ``.NAME.<pid>.partial`` name beside its target and
  renamed into place only once every file of the output was written (:class:`FileSet`); a folder output is built
  in a staging folder beside its target and swapped in with two renames. A failure leaves the old output as it
  was.
* **One writer.** A ``filelock`` lock (an OS ``flock``) beside the output is held while it is written.
* **Filesystem faults are one line** (:func:`fs_error`, :func:`writing`): read-only, permission, no space, a link
  loop: ``embedkit: error: <path>: <what went wrong>; <what to do>``. Every output folder is probed for writing
  before a model loads (:func:`check_writable`), and a save that clearly needs more room than the disk has is
  refused before it starts (:func:`require_space`).

Nothing here imports torch: every refusal answers before a model loads.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from embedkit.errors import EmbedkitError
from embedkit.version import __version__

RUN_MARKER = ".embedkit-run.json"  # a training run's folder (embedkit.training.rundir.MARKER)
MANIFEST = ".embedkit-output.json"  # what a command wrote into its output folder

Inputs = Sequence[tuple[str, str | os.PathLike]]  # (how a message names it, path)


# ---------------------------------------------------------------------------------------------------------
# Filesystem faults as one line


# errno -> (what happened, what to do)
_FAULTS = {
    errno.EACCES: ("permission denied", "make it writable for this user or choose another output"),
    errno.EPERM: ("operation not permitted", "make it writable for this user or choose another output"),
    errno.EROFS: ("the filesystem is read-only", "choose an output on a writable disk"),
    errno.ENOSPC: ("no space left on the device", "free space on that disk or choose an output on another one"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or choose an output on another disk"),
    errno.ELOOP: ("too many levels of symbolic links (a link loop)", "fix the link or choose another output"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter output name"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another output path"),
    errno.EISDIR: ("it is a folder", "choose a file name"),
    errno.EFBIG: ("the file is too large for this filesystem", "choose an output on another disk"),
    errno.EIO: ("input/output error", "check the disk, then choose another output or try again"),
}
_TORCH_WRITE = re.compile(r"PytorchStreamWriter|inline_container|file write failed|unexpected pos")
_OS_CODE = re.compile(r"(?:os error |code: )(\d+)")


def _fault(err: BaseException) -> tuple[int | None, str] | None:
    """``(errno or None, detail)`` when ``err`` is a failure to write a file, else ``None``.

    Covers ``OSError`` and the two libraries that write past Python: torch's zip writer raises a ``RuntimeError``
    without an errno (``[enforce fail at inline_container.cc:…] . PytorchStreamWriter failed writing file …``),
    safetensors an exception carrying the OS error's code in its text."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno, err.strerror or str(err)
    text = str(err)
    if isinstance(err, RuntimeError) and _TORCH_WRITE.search(text):
        return None, "torch could not write the file (" + text.strip().splitlines()[-1][-120:].strip(" .") + ")"
    if type(err).__name__ == "SafetensorError" and (m := _OS_CODE.search(text)):
        return int(m.group(1)), text.strip().splitlines()[-1][-120:]
    return None


def is_write_failure(err: BaseException) -> bool:
    return _fault(err) is not None


def filesystem_fault(err: BaseException) -> EmbedkitError | None:
    """The one line for a filesystem fault that reached the command line unconverted (read-only, permission, no
    space, a link loop ... on any path), else ``None`` (a missing file or a network error is not one)."""
    fault = _fault(err)
    if fault is None or (fault[0] is not None and fault[0] not in _FAULTS):
        return None
    return fs_error(err, doing="using it")


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


def size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fs_error(err: BaseException, path: str | os.PathLike | None = None, doing: str = "writing",
             subject: str | None = None, hint: str | None = None) -> EmbedkitError:
    """One line for a filesystem fault: ``<subject or path>: <what happened> while <doing>; <what to do>``.

    ``subject`` names what was being written (``-o out``, ``checkpoint-4``) when it says more than the path;
    ``hint`` is added after the advice (e.g. which earlier checkpoint is intact)."""
    fault = _fault(err)
    code, detail = fault if fault is not None else (None, str(err))
    path = path if path is not None else getattr(err, "filename", None)
    reason, advice = _FAULTS.get(code, (detail, "check the disk and the path, then try again"))
    if code in (errno.ENOSPC, errno.EDQUOT, None) and path is not None:
        free = free_bytes(Path(path))
        if free is not None:
            reason += f", {size_text(free)} free on its disk"
            if code is None:
                advice = "if the disk is full, free space or choose an output on another disk"
    at = f" ({path})" if subject and path is not None and str(path) not in subject else ""
    head = subject or (str(path) if path is not None else "output")
    return EmbedkitError(f"{head}{at}: {reason} while {doing}; {advice}" + (f"; {hint}" if hint else ""))


@contextmanager
def writing(path: str | os.PathLike, doing: str = "writing", subject: str | None = None,
            hint: str | None = None) -> Iterator[None]:
    """Turn a filesystem fault inside the block into one :func:`fs_error` line (other errors pass through)."""
    try:
        yield
    except EmbedkitError:
        raise
    except Exception as err:
        if not is_write_failure(err):
            raise
        raise fs_error(err, path, doing, subject, hint) from None


def check_writable(folder: str | os.PathLike, subject: str) -> None:
    """Create and remove a probe file in ``folder`` (or its closest existing ancestor, where the folder would be
    created): one line now, before a model loads, if nothing can be written there."""
    where = nearest_existing(Path(folder))
    if not where.is_dir():
        raise EmbedkitError(f"{subject}: {where} is a file, not a folder; choose another output")
    probe = where / f".embedkit-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason, advice = _FAULTS.get(err.errno, (err.strerror or str(err), "choose another output"))
        raise EmbedkitError(f"{subject}: {reason} for a new file in {where}; {advice}") from None


def require_space(folder: str | os.PathLike, needed: int, subject: str, hint: str | None = None) -> None:
    """Refuse a save that clearly does not fit: fewer bytes free on ``folder``'s disk than ``needed`` (an estimate
    from the model's size, a lower bound of what the save writes)."""
    free = free_bytes(Path(folder))
    if free is not None and free < needed:
        raise EmbedkitError(
            f"{subject}: needs about {size_text(needed)}, only {size_text(free)} free on the disk of "
            f"{nearest_existing(Path(folder))}; free space or choose an output on another disk"
            + (f"; {hint}" if hint else ""))


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by a state dict's tensors (or an iterable of tensors): what saving them writes at least."""
    values = tensors.values() if hasattr(tensors, "values") else tensors
    return sum(t.numel() * t.element_size() for t in values)


def remove(path: Path) -> None:
    """Remove a file, a link (never its target) or a folder tree; missing is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------------------
# Where an output may go


def resolve_output(path: str | os.PathLike, flag: str) -> Path:
    """The output path with symbolic links followed (unchanged when there are none); a dangling link or a loop
    on the way is refused in one line."""
    given = Path(path).expanduser()
    absolute = Path(os.path.abspath(given))
    for part in (absolute, *absolute.parents):
        if part.is_symlink() and not part.exists():
            try:
                target = os.readlink(part)
            except OSError:
                target = "?"
            where = "is" if part == absolute else f"goes through {part}, which is"
            raise EmbedkitError(
                f"{flag} {path}: {where} a symbolic link to {target}, which does not exist (or is a link loop); "
                f"embedkit follows links to existing files and folders only: create the target, remove the link "
                f"or choose another {flag}")
    real = Path(os.path.realpath(absolute))
    return real if real != absolute else given


def forbidden_targets() -> dict[Path, str]:
    """Folders a command never replaces: the current folder, the home folder, their ancestors, a root."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    out = {cwd: "the current folder", home: "your home folder"}
    for parent in (*cwd.parents, *home.parents):
        out.setdefault(parent, "a folder that holds the current or home folder")
    out[Path(cwd.anchor)] = "a filesystem root"
    return out


def run_folder_of(path: str | os.PathLike) -> Path | None:
    """The training run folder that ``path`` is or lies in (the nearest folder with a run marker), or ``None``."""
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        if (folder / RUN_MARKER).is_file():
            return folder
    return None


def _under(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def check_target(out: Path, flag: str, shown: str, inputs: Inputs = (), *, folder: bool) -> None:
    """Refuse an output that is or lies in a training run's folder, or is, lies in or (a folder output) holds an
    input. ``out`` is resolved (:func:`resolve_output`); ``shown`` is the path as given."""
    real = Path(os.path.realpath(out))
    run = run_folder_of(real)
    if run is not None:
        where = "is a training run's folder" if run == real else f"lies inside the training run folder {run}"
        raise EmbedkitError(
            f"{flag} {shown}: {where} (it holds {RUN_MARKER}); only embedkit train writes into a run, so its "
            f"record stays true and a later --overwrite or --resume finds only its own files: choose another {flag}")
    for label, ref in inputs:
        ref_path = Path(ref).expanduser()
        if not ref_path.exists():
            continue
        ref_real = Path(os.path.realpath(ref_path))
        same = ref_real == real or (real.exists() and os.path.samefile(ref_real, real))
        if same:
            raise EmbedkitError(f"{flag} {shown}: is the {label} {ref}; write the output to a new "
                                f"{'folder' if folder else 'file'}")
        if ref_real.is_dir() and _under(real, ref_real):
            raise EmbedkitError(f"{flag} {shown}: lies inside the {label} {ref}; writing there would change it, "
                                f"choose a {'folder' if folder else 'file'} outside it")
        if folder and _under(ref_real, real):
            raise EmbedkitError(f"{flag} {shown}: holds the {label} {ref}; writing the output there would replace "
                                "it, choose a new folder")


# ---------------------------------------------------------------------------------------------------------
# All or nothing


@dataclass
class FileSet:
    """Several files written as one: :meth:`path` gives each target a temporary name beside it; :meth:`commit`
    renames them into place once all were written; :meth:`discard` (on any failure) removes them."""

    pending: dict[Path, Path] = field(default_factory=dict)  # target -> temporary

    def path(self, target: str | os.PathLike) -> Path:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        self.pending[target] = tmp
        return tmp

    def commit(self) -> list[Path]:
        for target, tmp in self.pending.items():
            with writing(target, "moving it into place"):
                os.replace(tmp, target)
        done, self.pending = list(self.pending), {}
        return done

    def discard(self) -> None:
        for tmp in self.pending.values():
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        self.pending = {}


@dataclass
class _Lock:
    """An exclusive ``filelock`` beside ``target`` (``.NAME.embedkit.lock``), removed when released."""

    target: Path
    subject: str
    lock: Any = None

    def acquire(self) -> None:
        path = self.target.parent / f".{self.target.name}.embedkit.lock"
        self.lock = FileLock(str(path), timeout=0)
        try:
            with writing(path, "creating its lock file", self.subject):
                self.lock.acquire()
        except Timeout:
            raise EmbedkitError(f"{self.subject}: in use by another embedkit command (it holds {path}); wait for "
                                "it to finish or choose another output") from None

    def release(self) -> None:
        if self.lock is not None and self.lock.is_locked:
            try:
                Path(self.lock.lock_file).unlink(missing_ok=True)  # only while held: no one else holds this file
            except OSError:
                pass
            self.lock.release()
        self.lock = None


# ---------------------------------------------------------------------------------------------------------
# File outputs (data mine, encode)


@dataclass
class FileOutput:
    """A checked file output: write each file to ``files.path(target)`` inside ``with``, then :meth:`commit`."""

    path: Path  # resolved target
    shown: str
    files: FileSet = field(default_factory=FileSet)
    _lock: _Lock | None = None

    def __enter__(self) -> FileOutput:
        self._lock = _Lock(self.path, f"--output {self.shown}")
        self._lock.acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.files.discard()
        if self._lock is not None:
            self._lock.release()

    def commit(self) -> list[Path]:
        return self.files.commit()


def _check_parents(path: Path, flag: str, shown: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder (a file there would fail the write later)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise EmbedkitError(f"{flag} {shown}: {parent} is a file, not a folder")
            break


def check_file_output(output: str | os.PathLike, *, flag: str = "--output", overwrite: bool, inputs: Inputs = (),
                      sidecars: Callable[[Path], Sequence[Path]] | None = None,
                      owns: Callable[[Path, Path], bool] | None = None,
                      command: str = "this command") -> FileOutput:
    """Every refusal about a file output (before anything loads): a dangling link, a folder, an input or a run's
    folder, an existing file without ``--overwrite``, a sidecar that is not the command's own, a folder nothing
    can be written in. ``sidecars(path)``: the files written with ``path`` (resolved); ``owns(sidecar, path)``:
    whether an existing sidecar is one the command wrote with ``path``."""
    path = resolve_output(output, flag)
    shown = str(output)
    if path.is_dir():
        raise EmbedkitError(f"{flag} {shown}: is a folder; expected a file name")
    _check_parents(path, flag, shown)
    check_target(path, flag, shown, inputs, folder=False)
    if path.exists() and not overwrite:
        raise EmbedkitError(f"{flag} {shown}: already exists; pass --overwrite to replace it")
    for side in sidecars(path) if sidecars else ():
        check_target(side, flag, shown, inputs, folder=False)
        if not (side.exists() or side.is_symlink()):
            continue
        if side.is_dir():
            raise EmbedkitError(f"{flag} {shown}: {side} (written with it) is a folder; choose another {flag}")
        if not overwrite:
            raise EmbedkitError(f"{flag} {shown}: {side.name} (written with it) already exists beside it; pass "
                                f"--overwrite to replace an earlier {command}'s files, or choose another {flag}")
        if owns is None or not owns(side, path):
            raise EmbedkitError(f"{flag} {shown}: {side} (written with it) is not a file that {command} wrote "
                                f"with {path.name}; --overwrite replaces only its own files: move it away or choose "
                                f"another {flag}")
    check_writable(path.parent, f"{flag} {shown}")
    return FileOutput(path, shown)


# ---------------------------------------------------------------------------------------------------------
# Folder outputs (merge, eval, data diagnose)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def walk_files(folder: Path) -> list[str]:
    """Relative paths (POSIX) of every file and link under ``folder``, links to folders not followed."""
    out = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            out.append((base / name).relative_to(folder).as_posix())
    return sorted(out)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@dataclass
class OutputFolder:
    """A checked, locked folder output of one command. Write into ``work`` (and/or through ``files``), then
    :meth:`commit`; leaving the ``with`` block without committing leaves the old output as it was.

    ``swap``: ``work`` is a staging folder beside ``out``, swapped in by :meth:`commit` (a model folder);
    otherwise ``work`` is ``out`` itself, updated file by file (a report folder: its earlier files that this run
    does not write again stay). ``owned``: subfolders the command manages whole (eval's ``mteb/`` cache)."""

    out: Path
    shown: str
    command: str
    flag: str
    swap: bool
    owned: tuple[str, ...] = ()
    known: set[str] = field(default_factory=set)  # files already in ``out`` that the command wrote
    overwrite: bool | None = None
    work: Path = Path()
    files: FileSet = field(default_factory=FileSet)
    created: bool = False
    _lock: _Lock | None = None
    _committed: bool = False

    def __enter__(self) -> OutputFolder:
        self._lock = _Lock(self.out, f"{self.flag} {self.shown}")
        self._lock.acquire()
        try:
            if self.overwrite is False and self.out.is_dir() and walk_files(self.out):  # appeared since the check
                raise EmbedkitError(f"{self.flag} {self.shown}: already exists; pass --overwrite to replace it")
            if self.swap:
                self.work = self.out.parent / f".{self.out.name}.embedkit-staging-{os.getpid()}"
                with writing(self.work, "creating its staging folder", f"{self.flag} {self.shown}"):
                    remove(self.work)
                    self.work.mkdir(parents=True)
            else:
                self.work = self.out
                self.created = not self.out.exists()
                with writing(self.out, "creating it", f"{self.flag} {self.shown}"):
                    self.out.mkdir(parents=True, exist_ok=True)
                    self._write_manifest()  # claims the folder now: files an owned subfolder gets are its own
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.files.discard()
            if not self._committed:
                if self.swap:
                    shutil.rmtree(self.work, ignore_errors=True)
                elif self.created and set(walk_files(self.out)) <= {MANIFEST}:
                    shutil.rmtree(self.out, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.release()

    def _owned(self, rel: str) -> bool:
        return rel in self.known or any(rel.startswith(d + "/") for d in self.owned)

    def _write_manifest(self, written: Sequence[str] = ()) -> None:
        files = [rel for rel in walk_files(self.work) if rel != MANIFEST and not rel.endswith(".partial")
                 and (self.swap or rel in written or self._owned(rel))]
        record = {"command": self.command, "embedkit": __version__, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "files": files}
        tmp = self.work / f".{MANIFEST}.{os.getpid()}.partial"
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(tmp, self.work / MANIFEST)

    def commit(self) -> Path:
        """Move the written files into place, record them, and (``swap``) swap the folder in."""
        subject = f"{self.flag} {self.shown}"
        written = [t.relative_to(self.work).as_posix() for t in self.files.commit()]
        with writing(self.work, "recording what it wrote", subject):
            self._write_manifest(written)
        if self.swap:
            old = self.out.parent / f".{self.out.name}.embedkit-replaced-{os.getpid()}"
            with writing(self.out.parent, "moving the new folder into place", subject):
                remove(old)
                if self.out.exists():
                    os.replace(self.out, old)
                try:
                    os.replace(self.work, self.out)
                except OSError:
                    if old.exists() and not self.out.exists():
                        os.replace(old, self.out)  # put the earlier output back rather than leave nothing
                    raise
            shutil.rmtree(old, ignore_errors=True)
            self.work = self.out
        self._committed = True
        return self.out


def open_folder(output: str | os.PathLike, *, command: str, flag: str = "-o", overwrite: bool | None,
                swap: bool, inputs: Inputs = (), owned: tuple[str, ...] = (),
                legacy: Callable[[Path], set[str]] | None = None) -> OutputFolder:
    """Every refusal about a folder output, before anything loads or is written; use the result in ``with``.

    ``overwrite``: ``False``/``True`` for a command with ``--overwrite`` (an existing non-empty folder needs it);
    ``None`` for a report command that updates its own folder on every run (``eval``, ``data diagnose``).
    ``legacy``: the files of a folder an earlier embedkit wrote without a manifest that the command recognises
    as its own (an empty set when it does not)."""
    out = resolve_output(output, flag)
    shown = str(output)
    if out.exists() and not out.is_dir():
        raise EmbedkitError(f"{flag} {shown}: exists and is a file; expected a folder")
    _check_parents(out, flag, shown)
    check_target(out, flag, shown, inputs, folder=True)
    forbidden = forbidden_targets().get(Path(os.path.realpath(out)))
    if forbidden and swap:
        raise EmbedkitError(f"{flag} {shown}: is {forbidden}; {command} writes a folder of its own and never "
                            f"replaces this one: choose a new folder, e.g. {flag} {Path(shown) / (command + '-out')}")
    known: set[str] = set()
    present = walk_files(out) if out.is_dir() else []
    if present:
        if overwrite is False:
            raise EmbedkitError(f"{flag} {shown}: already exists; pass --overwrite to replace it")
        manifest = read_manifest(out)
        if manifest is not None and manifest.get("command") != command:
            raise EmbedkitError(f"{flag} {shown}: holds the output of embedkit {manifest.get('command')}; "
                                f"{command} replaces only its own output: choose another {flag}")
        known = set(manifest["files"]) if manifest is not None else (legacy(out) if legacy else set())
        # a subfolder the command manages whole is its own only in a folder it is known to have written
        folder = OutputFolder(out, shown, command, flag, swap, owned if manifest or known else (), known, overwrite)
        foreign = [rel for rel in present if rel != MANIFEST and not rel.endswith(".partial")  # a killed run's
                   and not folder._owned(rel)]
        if foreign:
            raise EmbedkitError(
                f"{flag} {shown}: holds files that embedkit {command} did not write ({_shown(foreign)}); "
                f"{'--overwrite' if swap else 'writing there'} could replace or mix with them, so it refuses: "
                f"move them out or choose another {flag}")
    check_writable(out.parent if swap else out, f"{flag} {shown}")
    return OutputFolder(out, shown, command, flag, swap, owned, known, overwrite)
