"""``embedkit encode``: embed a file of texts into a ``.npy`` matrix, one row per text, in file order.

It runs the one encoder (:func:`embedkit.encoding.encode`): each distinct text once, the
model's own preprocessing in large chunks, batches cut by token length, so the rows equal
``SentenceTransformer.encode``'s (to float rounding) for less work. The file is written only when every row is
done (a hidden ``.<name>.<pid>.partial`` beside it until then), never into an input or a training run's folder
(:mod:`embedkit.outputs`).

    embedkit encode MODEL sentences.txt -o embeddings.npy [--normalize] [--dim 128] [--batch-size 128]
    embedkit encode MODEL rows.jsonl --column text -o embeddings.npy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from embedkit.cliargs import add_no_progress
from embedkit.data.sources import read_local
from embedkit.errors import EmbedkitError
from embedkit.log import log
from embedkit.model_ref import check_model, embedding_dim, load_model
from embedkit.outputs import FileOutput, Inputs, check_file_output, require_space, writing


def read_texts(path: str, fmt: str = "auto", column: str | None = None) -> list[str]:
    """The texts of a local file: a ``.txt`` file's non-blank lines, or one column of a CSV/TSV/JSONL file."""

    data = read_local(path, fmt, [column] if column else None, kind="input")
    if len(data.columns) != 1:
        raise EmbedkitError(f"{path}: has the columns {list(data.columns)}; choose the one to encode with --column")
    return next(iter(data.columns.values()))


def check_output(output: str, overwrite: bool = False, inputs: Inputs = ()) -> FileOutput:
    """The ``--output`` path, refused when it cannot be written, would silently replace a file, or is (or lies in)
    an input or a training run's folder (:mod:`embedkit.outputs`)."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise EmbedkitError(f"--output {output}: is a folder; expected a file name ending in .npy (e.g. "
                            f"{Path(output) / 'embeddings.npy'})")
    if not output.endswith(".npy"):
        raise EmbedkitError(f"--output {output!r}: expected a file name ending in .npy")
    return check_file_output(output, overwrite=overwrite, inputs=inputs, command="embedkit encode")


def _run(args: argparse.Namespace) -> int:
    if args.batch_size <= 0:
        raise EmbedkitError(f"--batch-size: expected a positive number, got {args.batch_size}")
    if args.max_seq_length is not None and args.max_seq_length <= 0:
        raise EmbedkitError(f"--max-seq-length: expected a positive number, got {args.max_seq_length}")
    if args.dim is not None and args.dim <= 0:
        raise EmbedkitError(f"--dim: expected a positive number of leading embedding coordinates, got {args.dim}")
    inputs = [("input", args.input)] + ([("model", args.model)] if Path(args.model).expanduser().exists() else [])
    target = check_output(args.output, args.overwrite, inputs)  # before reading texts or loading the model
    check_model(args.model, what="model", trust_flag=None)
    texts = read_texts(args.input, args.format, args.column)  # before the model loads: bad input fails fast
    from embedkit.encoding import check_dim, encode  # torch: only once every argument is known to be good
    from embedkit.experts import choose_route

    model, spec = load_model(args.model)
    how = choose_route(model, args.task, spec)  # a model with experts: the domain's route (docs/experts.md)
    if how:
        log(f"encoding {how}")
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    start = time.perf_counter()
    if args.dim is not None:
        check_dim(args.dim, embedding_dim(model), "--dim")  # before any text is encoded
    emb = encode(model, texts, args.batch_size, normalize=args.normalize, autocast=args.autocast, dim=args.dim,
                 show_progress_bar=args.progress)  # None: a bar when stderr is a terminal
    seconds = time.perf_counter() - start
    subject = f"--output {args.output}"
    require_space(target.path.parent, emb.nbytes, subject)
    with target, writing(target.path, "writing the embeddings", subject):
        with open(target.files.path(target.path), "wb") as fh:
            np.save(fh, emb)
        target.commit()
    print(f"{args.output}: {emb.shape[0]} x {emb.shape[1]} float32 "
          f"({len(set(texts))} distinct texts) in {seconds:.1f} s")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``embedkit encode MODEL INPUT -o OUTPUT.npy``."""
    p = subparsers.add_parser("encode", help="embed the texts of a file into a .npy matrix")
    p.add_argument("model", help="model folder, packaged model or Hub id")
    p.add_argument("input", help="a .txt file (one text a line; blank lines skipped), or a .csv/.tsv/.jsonl file")
    p.add_argument("-o", "--output", required=True, help="where to write the embeddings (.npy, float32, file order)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (default: refuse)")
    p.add_argument("--column", help="the column (CSV/TSV header name or JSONL key) holding the texts")
    p.add_argument("--format", choices=("auto", "text", "csv", "tsv", "jsonl"), default="auto",
                   help="input format (auto: from the file suffix)")
    p.add_argument("--batch-size", type=int, default=128, help="texts encoded per batch (default 128)")
    p.add_argument("--task", metavar="DOMAIN", help="a model with experts (docs/experts.md): encode through this "
                   "domain's expert (default: the model's learned router, else its default route)")
    add_no_progress(p)
    p.add_argument("--normalize", action="store_true", help="scale each embedding to unit length")
    p.add_argument("--dim", type=int, metavar="D",
                   help="Matryoshka: keep the first D coordinates (with --normalize: truncate, then normalise)")
    p.add_argument("--max-seq-length", type=int, help="truncate texts to this many tokens (default: the model's)")
    p.add_argument("--autocast", choices=("none", "bf16", "auto"), default="none",
                   help="bf16 autocast (auto: only where the hardware has bf16); default none")
    p.set_defaults(func=_run)
