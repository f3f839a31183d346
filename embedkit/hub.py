"""``embedkit push``: publish a training or merge output folder to the Hugging Face Hub, after safety checks.

What is uploaded: the sentence-transformers model files of the output folder, ``recipe.yaml`` and
``results.json`` (home paths redacted), mteb's result files (``mteb/``), and the model card (``README.md``:
sentence-transformers' card from training with embedkit's sections, see :mod:`embedkit.card`), named for
``REPO_ID``. A merge output (``embedkit merge``: ``merge.json``, no ``results.json``) goes with ``merge.json``
and its card rendered again from that record (:func:`embedkit.merging.model_card`), named for ``REPO_ID``.
Never uploaded: ``checkpoints/``, ``checkpoint-*``, the trackers' ``logs/``, ``mlruns/`` and ``wandb/``,
optimizer / scheduler / RNG / trainer state, TensorBoard events, hidden and partial files.

Before anything goes over the network the folder to upload is staged in a temporary directory and checked:
the model loads from exactly those files and encodes a sentence, the card parses with
``huggingface_hub.ModelCard`` and its ``model-index`` holds every STS and MTEB result recorded, no file over
the size limit is anything but model weights or tokenizer files, and no file contains the Hub token or a path
in the user's home folder. Any failure, before or during the upload, is one
:class:`~embedkit.errors.EmbedkitError` line and nothing is reported as published; running the same push again
completes an interrupted upload.

The endpoint is ``$HF_ENDPOINT`` (read when ``push`` runs) or huggingface_hub's default; the token is the
``token`` argument, ``$HF_TOKEN`` or the stored ``hf auth login`` token. The token is never printed, logged or
written to a file.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from embedkit.card import (
    build_card,
    eval_results,
    home_pattern,
    load_results,
    mteb_eval_results,
    mteb_rows,
    read_front_matter,
    redact_home,
)
from embedkit.cliargs import add_renamed
from embedkit.errors import EmbedkitError
from embedkit.log import log
from embedkit.merging import MergeError, model_card, read_record
from embedkit.model_ref import first_line, hub_id_for, hub_offline
from embedkit.model_ref import hub_endpoint as endpoint
from embedkit.version import __version__


class HubError(EmbedkitError):
    """Publishing failed: a safety check refused the folder, or the Hub / the connection failed."""


# Never uploaded (globs matched against the path relative to the output folder and against each part of it).
DEFAULT_EXCLUDE = (
    "checkpoints", "checkpoint-*", "logs", "runs", "mlruns", "wandb", ".*", "*.partial", "__pycache__",
    "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin",
    "trainer_state.json", "events.out.tfevents.*", "embedkit_method_state.safetensors", "embedkit_checkpoint.json",
    "README.md",  # replaced by the embedkit model card
)
# Files that may be large: model weights and tokenizer files. Any other file over the limit is refused.
LARGE_OK = ("*.safetensors", "tokenizer.json", "*.model", "vocab.txt", "vocab.json", "merges.txt", "*.onnx")
DEFAULT_MAX_FILE_MB = 50.0
REDACTED_COPIES = ("recipe.yaml", "results.json", "merge.json")  # uploaded with home paths redacted


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` as set now (huggingface_hub reads it only at import time), else the library default."""

    return endpoint()


def resolve_token(token: str | None = None) -> str:
    """The token to publish with: the argument, ``$HF_TOKEN``, or the stored login; a clear error if none."""
    if token:
        return token

    found = get_token()
    if not found:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return found


def check_repo_id(repo_id: str) -> str:
    """``namespace/name`` with the Hub's allowed characters (huggingface_hub's own rule)."""

    try:
        validate_repo_id(repo_id)
        valid = isinstance(repo_id, str) and repo_id.count("/") == 1  # a bare name would land in the token's user
    except HFValidationError:
        valid = False
    if not valid:
        raise HubError(f"REPO_ID {repo_id!r}: expected namespace/name, e.g. alice/simcse-minilm "
                       "(letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters each)")
    return repo_id


# ---------------------------------------------------------------------------------------------------------
# Selecting and staging the files


def _excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts) for p in patterns)


def select_files(output_dir: Path, exclude: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(files to upload, files left out), as POSIX paths relative to ``output_dir``."""
    patterns = DEFAULT_EXCLUDE + tuple(exclude)
    keep, skip = [], []
    for path in sorted(output_dir.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(output_dir).as_posix()
        if path.is_symlink() or _excluded(rel, patterns):
            skip.append(rel)
        else:
            keep.append(rel)
    return keep, skip


def check_sizes(output_dir: Path, files: list[str], max_file_mb: float) -> None:
    """Refuse a file over the limit unless it is model weights or a tokenizer file (a stray checkpoint...)."""
    limit = max_file_mb * 1024 * 1024
    for rel in files:
        size = (output_dir / rel).stat().st_size
        if size > limit and not any(fnmatch.fnmatch(Path(rel).name, p) for p in LARGE_OK):
            raise HubError(
                f"{output_dir / rel}: {size / 2**20:.1f} MB, over the {max_file_mb:g} MB limit and not model weights "
                "(a stray checkpoint or optimizer state?); remove it, leave it out with --exclude, or raise "
                "--max-file-mb"
            )


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def scan_for_secrets(folder: Path, token: str | None) -> None:
    """Refuse any file holding the token (any file, as bytes) or a home-folder path (text files)."""

    pattern = home_pattern()
    needle = token.encode() if token else None
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if needle and _file_contains(path, needle):
            raise HubError(f"{rel}: contains the Hub token; refusing to upload it (remove the token from that file)")
        if pattern is None:
            continue
        text = _as_text(path)
        if text is not None:
            match = pattern.search(text)
            if match:
                line = text.count("\n", 0, match.start()) + 1
                raise HubError(f"{rel}:{line}: contains a path in your home folder ({match.group(0)}); refusing to "
                               "publish it (remove the path, or leave the file out with --exclude)")


def _file_contains(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    tail = b""
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-(len(needle) - 1):] if len(needle) > 1 else b""
    return False


def _as_text(path: Path, limit: int = 64 * 2**20) -> str | None:
    """The file as UTF-8 text, or ``None`` for binary (a NUL byte or invalid UTF-8) or very large files."""
    if path.stat().st_size > limit:
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass
class Prepared:
    """A checked, staged upload folder."""

    folder: Path
    files: list[str]
    skipped: list[str]
    card: str
    n_bytes: int
    eval_results: int = 0
    notes: list[str] = field(default_factory=list)
    merged: bool = False  # an `embedkit merge` output


def prepare_upload(output_dir: str | Path, staging: str | Path, repo_id: str, token: str | None = None,
                   exclude: tuple[str, ...] = (), max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Prepared:
    """Stage ``output_dir`` for upload into ``staging`` and run every safety check; raises :class:`HubError`."""

    out = Path(output_dir)
    if not out.is_dir():
        raise HubError(f"{out}: output folder not found")
    record = _merge_record(out)
    results = load_results(out) if record is None else {}
    if not (out / "modules.json").is_file():
        raise HubError(f"{out}: no modules.json; not a sentence-transformers model folder (expected the output "
                       "of `embedkit train` or `embedkit merge`)")
    files, skipped = select_files(out, tuple(exclude))
    check_sizes(out, files, max_file_mb)

    dest = Path(staging)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in files:
        if rel in REDACTED_COPIES:
            text = (out / rel).read_text(encoding="utf-8")
            (dest / rel).write_text(redact_home(text), encoding="utf-8")
        else:
            _link_or_copy(out / rel, dest / rel)

    model = _load_model(dest, out)
    if record is None:
        card = build_card(results, repo_id, st_card=_st_card(out, model), mteb_dir=out / "mteb")
        expected = eval_results(results) + mteb_eval_results(mteb_rows(results, out / "mteb"))
    else:  # a merge has no scores of its own: its card is the merge's record, named for the repository
        card, expected = redact_home(str(model_card(record, repo_id))), []
    del model
    _adapter_bases_to_hub(dest, files, out)  # after the load check, which reads the base from here
    n_results = _check_card(card, expected, out)
    (dest / "README.md").write_text(card, encoding="utf-8")
    files = sorted({*files, "README.md"})
    scan_for_secrets(dest, token)
    n_bytes = sum((dest / rel).stat().st_size for rel in files)
    return Prepared(dest, files, skipped, card, n_bytes, n_results, merged=record is not None)


def _adapter_bases_to_hub(dest: Path, files: list[str], out: Path) -> None:
    """A LoRA adapter names its base by the local path it trained on (so the output folder loads here, offline);
    the staged copy names the base's Hub id instead (:func:`~embedkit.model_ref.hub_id_for`), so the published
    adapter loads elsewhere. A base that is only a local folder is refused: full weights publish instead."""
    for rel in (f for f in files if Path(f).name == "adapter_config.json"):
        config = json.loads((dest / rel).read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
        hub_id = hub_id_for(base) if isinstance(base, str) and base else None
        if hub_id is None:
            raise HubError(f"{out / rel}: a LoRA adapter on the local model {base}, which has no Hub id: published, "
                           "it would not load anywhere else; train with model.lora.merge: true to publish full weights")
        if hub_id != base:
            config["base_model_name_or_path"] = hub_id
            (dest / rel).unlink()  # a hard link to the output folder's file, which keeps the local path
            (dest / rel).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            log(f"{rel}: the adapter's base is published as {hub_id} (the output folder keeps {base})")


def _st_card(out: Path, model: Any) -> str:
    """The card sentence-transformers wrote when training saved the model (with its training details), or, for a
    folder without one, the card it renders for the loaded model now."""
    readme = out / "README.md"
    if read_front_matter(readme).get("library_name") == "sentence-transformers":
        return readme.read_text(encoding="utf-8")
    try:
        from sentence_transformers.base.model_card import generate_model_card
    except ImportError:  # sentence-transformers 5
        from sentence_transformers.model_card import generate_model_card

    model.model_card_data.local_files_only = True  # no Hub look-ups while rendering
    return generate_model_card(model)


def _load_model(folder: Path, out: Path) -> Any:
    """Load the staged model exactly as a user would, and encode one sentence."""

    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True, trust_remote_code=False)
        emb = model.encode(["embedkit publishing check"], convert_to_numpy=True)
    except Exception as err:  # noqa: BLE001 - any failure to load is reported as one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise HubError(f"{out}: the model does not load from the files to upload ({type(err).__name__}: {first})") \
            from None
    if not all(math.isfinite(float(v)) for v in emb.reshape(-1)):
        raise HubError(f"{out}: the model loads but its embeddings are not finite (NaN/inf weights?)")
    return model


def _merge_record(out: Path) -> dict[str, Any] | None:
    """``merge.json`` when ``out`` is a merge output (no ``results.json``), else ``None``; one line when the folder
    is neither a finished run nor a merge, or its record is malformed."""
    if (out / "results.json").is_file():
        return None
    if not (out / "merge.json").is_file():
        raise HubError(f"{out}: neither results.json (written last by `embedkit train`: is the run finished?) nor "
                       "merge.json (written by `embedkit merge`); expected a training or merge output folder")
    try:
        return read_record(out)
    except MergeError as err:
        raise HubError(str(err)) from None


def _check_card(card: str, expected: list[Any], out: Path) -> int:
    """The card parses as a Hub model card and its model-index holds every STS and MTEB result recorded
    (``expected``)."""

    try:
        parsed = ModelCard(card, ignore_metadata_errors=False)
    except Exception as err:  # noqa: BLE001
        raise HubError(f"{out}: the generated model card does not parse ({type(err).__name__}: {err})") from None
    found = parsed.data.eval_results or []
    missing = [e for e in expected if not any(f.is_equal_except_value(e) and f.metric_value == e.metric_value
                                              for f in found)]
    if missing:
        raise HubError(f"{out}: the model card's model-index lacks {len(missing)} of the {len(expected)} STS and MTEB "
                       f"results recorded (first: {missing[0].dataset_name})")
    if parsed.data.library_name != "sentence-transformers":
        raise HubError(f"{out}: the model card lacks library_name: sentence-transformers")
    return len(expected)


# ---------------------------------------------------------------------------------------------------------
# Publishing


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"),
                         ("requests", "Timeout")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _describe(err: BaseException, token: str, repo_id: str, endpoint: str, stage: str) -> str:
    """One line for a failed Hub call; never contains the token."""

    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(err, _network_errors()):
        msg = (f"connection to {endpoint} failed while {stage} ({type(err).__name__}: {first_line(err)}); "
               f"the upload to {repo_id} did not complete and nothing was published; run the same push again "
               "to finish it")
    elif status == 401 and not isinstance(err, RepositoryNotFoundError):
        msg = (f"{endpoint} rejected the token (HTTP 401) while {stage}; set a valid write token in HF_TOKEN or "
               "run `hf auth login`; nothing was published")
    elif isinstance(err, RepositoryNotFoundError):
        msg = (f"repository {repo_id} not found or not accessible with this token (HTTP {status}) while {stage}; "
               "nothing was published")
    elif status == 403:
        msg = (f"the token has no write access to {repo_id} (HTTP 403) while {stage}; use a token with write "
               "permission for that namespace; nothing was published")
    elif isinstance(err, HfHubHTTPError):
        msg = f"the Hub answered HTTP {status} while {stage}: {first_line(err)}; nothing was published"
    else:
        msg = f"{stage} failed ({type(err).__name__}: {first_line(err)}); nothing was published"
    return msg.replace(token, "***") if token else msg


def _remove_created_repo(api: Any, repo_id: str, token: str) -> str:
    """Delete the (empty) repository this push created before failing; says what became of it."""
    try:
        api.delete_repo(repo_id, repo_type="model")
    except Exception as err:  # noqa: BLE001 - the Hub may still be unreachable: say what is left behind
        detail = f"{type(err).__name__}: {first_line(err)}"
        detail = detail.replace(token, "***") if token else detail
        return (f"the empty repository {repo_id} that this push created remains on the Hub (deleting it failed: "
                f"{detail}); delete it there, or run the same push again to fill it")
    return f"the empty repository {repo_id} that this push created was deleted again"


def push(
    output_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    *,
    exclude: tuple[str, ...] = (),
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    dry_run: bool = False,
) -> str:
    """Check ``output_dir`` and publish it to ``repo_id``; returns the repo URL (with ``/tree/BRANCH``).

    ``revision`` is a branch (created if missing). ``dry_run`` runs every local check and uploads nothing.
    Raises :class:`HubError` (an :class:`~embedkit.errors.EmbedkitError`) on any failure.
    """
    check_repo_id(repo_id)
    if not Path(output_dir).is_dir():  # a local mistake is named before anything about tokens or the Hub
        raise HubError(f"{output_dir}: output folder not found")

    if hub_offline() and not dry_run:
        raise HubError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: publishing needs the Hub; unset it for this "
                       "command (nothing was published)")
    token = resolve_token(token) if not dry_run else (token or _optional_token())
    endpoint = hub_endpoint()
    out = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="embedkit-push-") as tmp:
        prepared = prepare_upload(out, Path(tmp) / "upload", repo_id, token, exclude, max_file_mb)
        log(f"checked {out}: {len(prepared.files)} files ({prepared.n_bytes / 2**20:.1f} MB), model loads, card "
             f"parses ({prepared.eval_results} STS/MTEB results), no {'token or ' if token else ''}home path; "
             f"{len(prepared.skipped)} files left out (checkpoints, logs, optimizer state)")
        if dry_run:
            log(f"dry run: would upload to {repo_id} at {endpoint}: {', '.join(prepared.files)}; the card follows")
            print(prepared.card, flush=True)
            return f"{endpoint}/{repo_id}"
        url = _upload(prepared, repo_id, private, revision, commit_message, token, endpoint)
    log(f"published {len(prepared.files)} files to {url}")
    return url


def _optional_token() -> str | None:
    return get_token()


def _upload(prepared: Prepared, repo_id: str, private: bool, revision: str | None, commit_message: str | None,
            token: str, endpoint: str) -> str:
    api = HfApi(endpoint=endpoint, token=token, library_name="embedkit", library_version=__version__)
    stage = "checking whether the repository exists"
    created = False  # whether this call created the repository (only then may a failure delete it)
    try:
        existed = api.repo_exists(repo_id, repo_type="model")
        stage = "creating the repository"
        repo_url = str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
        created = not existed
        if private:
            stage = "checking the repository's visibility"
            if not api.repo_info(repo_id, repo_type="model").private:
                raise HubError(f"{repo_id} already exists and is public; --private does not change an existing "
                               "repository (make it private on the Hub, or push without --private)")
        if revision and revision != "main":
            stage = f"creating branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        stage = "uploading"
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(prepared.folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload model {'merged' if prepared.merged else 'trained'} with embedkit",
        )
    except HubError:
        raise
    except Exception as err:  # noqa: BLE001 - every Hub / network failure becomes one clear line
        message = _describe(err, token, repo_id, endpoint, stage)
        if created:
            message += "; " + _remove_created_repo(api, repo_id, token)
        raise HubError(message) from None
    return f"{repo_url.rstrip('/')}/tree/{revision}" if revision and revision != "main" else repo_url.rstrip("/")


# ---------------------------------------------------------------------------------------------------------
# CLI


def _cli_push(args: argparse.Namespace) -> int:
    push(args.output_dir, args.repo_id, private=args.private, revision=args.branch,
         commit_message=args.commit_message, exclude=tuple(args.exclude), max_file_mb=args.max_file_mb,
         dry_run=args.dry_run)
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``embedkit push OUTPUT_DIR REPO_ID``."""
    p = subparsers.add_parser("push", help="publish a training or merge output folder to the Hugging Face Hub")
    p.add_argument("output_dir", metavar="OUTPUT_DIR",
                   help="output.dir of a finished `embedkit train` run, or the -o folder of `embedkit merge`")
    p.add_argument("repo_id", metavar="REPO_ID", help="namespace/name of the model repository")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--branch", metavar="BRANCH", help="push to this branch (created if missing)")
    add_renamed(p, "--revision", "--branch", "branch")
    p.add_argument("--commit-message", help="commit message (default: 'Upload model trained with embedkit', or "
                                            "'merged' for a merge)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="also leave out files matching GLOB (repeatable)")
    p.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB,
                   help=f"refuse non-weight files larger than this (default {DEFAULT_MAX_FILE_MB:g})")
    p.add_argument("--dry-run", action="store_true", help="run every check and print the card; upload nothing")
    p.set_defaults(func=_cli_push)
