"""Streaming training sets (``data.train.streaming: true``): the rows as a ``datasets.IterableDataset``.

A local file is read as for a map-style run (validation converts it, a chunk at a time, into the data cache's
Arrow file, :mod:`embedkit.data.cache`, with every file:line check) and the stream reads that Arrow file a record
batch at a time (``IterableDataset.from_file``): the rows trained on are exactly the rows validated, and neither
validation nor training holds more than a chunk and the shuffle buffer. datasets' own streaming text/CSV/JSON
loaders would parse the file another way than embedkit's readers (blank lines, quoting, types) and leave the
row errors to the middle of training. A Hub dataset is opened with ``load_dataset(..., streaming=True)``.

The order (:func:`training_stream`): pass ``p`` over the rows is shuffled with a buffer of
``data.train.shuffle_buffer`` rows and seed ``training.seed + p``; the passes follow one another, as many as
``training.max_steps`` global batches need, so the stream the trainer reads never ends before the last step and
the trainer's epoch stays 0. Where the row count is unknown (a Hub stream) the one shuffled pass repeats.

Resume (:func:`skip_rows`): step ``s`` of every run trains on rows ``[s·B, (s+1)·B)`` of that one deterministic
stream (``B`` the global batch), so a run resumed from the checkpoint of step ``s`` skips the first ``s·B`` rows
of the stream, row by row, without tokenising them (linear in the rows skipped: reading only), and the trainer does
not skip batches again. Sharding across processes is accelerate's ``IterableDatasetShard`` (docs/distributed.md):
every process reads the stream and keeps its ``k``-th slice of each global batch, so no two processes train on a
row and the global batch is the one a single process takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from embedkit.errors import DataError

DEFAULT_BUFFER = 10_000  # rows in the shuffle buffer unless data.train.shuffle_buffer says otherwise
# Distinct shuffled passes built at most; a run that needs more (a small set, many steps) repeats their cycle, so
# the stream's parts stay few.
MAX_PASSES = 100
ROW_ID = "label"  # as embedkit.methods.base.ROW_ID_COLUMN: the collator hands it to the loss


class StreamData:
    """What setup knows of a streamed Hub training set before it is read: its columns and description. Its
    ``columns`` mapping is empty, so nothing (the overlap report) walks it; ``rows`` is unknown (``None``)."""

    def __init__(self, names: Sequence[str], description: str, fingerprint: str | None = None) -> None:
        self.names, self.description, self.sha256 = list(names), description, fingerprint
        self.columns: dict[str, list[Any]] = {}
        self.rows: int | None = None

    @property
    def column_names(self) -> list[str]:
        return list(self.names)


def local_stream(rows: Any, roles: Sequence[str]) -> Any:
    """The rows of a data-cache entry (:class:`~embedkit.data.cache.ArrowRows`) as an ``IterableDataset`` with the
    columns renamed ``roles``, its first ``len(rows)`` rows (``max_samples``) only."""
    import datasets

    ds = datasets.IterableDataset.from_file(str(rows.path))
    if len(rows) < rows.rows:
        ds = ds.take(len(rows))
    return rename_to(ds, list(rows.names), roles)


def hub_stream(name: str, split: str, config: str | None, columns: list[str] | None, data_files: str | None,
               max_samples: int | None) -> tuple[Any, list[str]]:
    """A Hub dataset (or a local folder ``load_dataset`` reads) opened as a stream: ``(stream, its columns)``;
    nothing is downloaded beyond what the stream reads. Raises ``DataError`` when it does not open or its
    columns are unknown."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=True)
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one clear message
        raise DataError(f"data.train.hub: could not open dataset {name!r} (split {split!r}) as a stream: "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if ds.column_names is None:
        raise DataError(f"data.train.hub: the stream of {name!r} ({split}) does not say its columns; set "
                        "data.train.columns, or train from a local file")
    wanted = list(columns or ds.column_names)
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(f"data.train.hub: {name} ({split}) has no column {missing[0]!r}; it has "
                        f"{', '.join(ds.column_names)}")
    if wanted != ds.column_names:
        ds = ds.select_columns(wanted)
    if max_samples:
        ds = ds.take(max_samples)
    return ds, wanted


def rename_to(ds: Any, names: Sequence[str], roles: Sequence[str]) -> Any:
    """``ds`` with its columns ``names`` renamed ``roles``, in order."""
    mapping = dict(zip(names, roles, strict=True))
    return ds.rename_columns(mapping) if any(k != v for k, v in mapping.items()) else ds


def add_row_ids(ds: Any) -> Any:
    """The stream with its row ids (the position in the unshuffled rows) as the ``label`` column: the key of a row's
    augmentation (ESimCSE, Contriever), the same row keeping its id in every pass. The order of the data's files is
    fixed first (``skip(0)``), so a Hub dataset of several files numbers its rows the same way in every pass."""
    from datasets import Features, Value

    if ROW_ID in (ds.column_names or []):
        raise ValueError(f"the training data already has a {ROW_ID!r} column")
    features = Features({**ds.features, ROW_ID: Value("int64")}) if ds.features is not None else None
    return ds.skip(0).map(lambda batch, idx: {ROW_ID: list(idx)}, with_indices=True, batched=True,
                          features=features)


def passes_needed(rows: int | None, max_steps: int, global_batch: int) -> int | None:
    """How many passes over ``rows`` rows ``max_steps`` global batches take (``None`` when ``rows`` is unknown)."""
    if not rows:
        return None
    return max(1, math.ceil(max_steps * global_batch / rows))


def training_stream(ds: Any, seed: int, buffer: int, passes: int | None) -> Any:
    """``passes`` shuffled passes over ``ds`` one after the other, pass ``p`` with seed ``seed + p`` (``None``: the
    one pass with ``seed``, repeated without end; more than :data:`MAX_PASSES`: the cycle of the first
    :data:`MAX_PASSES` passes, repeated)."""
    import datasets

    if passes is None:
        return ds.shuffle(seed=seed, buffer_size=buffer).repeat(None)
    parts = [ds.shuffle(seed=seed + p, buffer_size=buffer) for p in range(min(passes, MAX_PASSES))]
    stream = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return stream.repeat(None) if passes > MAX_PASSES else stream


def skip_rows(stream: Any, rows: int) -> Any:
    """The stream less its first ``rows`` rows (those the steps before a resumed checkpoint trained on)."""
    return stream.skip(rows) if rows else stream


class ColumnTexts:
    """One text column of a stream, read again on every iteration a batch at a time (a method's pass over its
    whole training set before training: Text2Token's document frequencies); ``len`` counts the rows once."""

    def __init__(self, ds: Any, column: str, batch_size: int = 2048) -> None:
        self.ds, self.column, self.batch_size = ds, column, batch_size
        self._len: int | None = None

    def __iter__(self) -> Any:
        for batch in self.ds.select_columns([self.column]).iter(batch_size=self.batch_size):
            yield from batch[self.column]

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len
