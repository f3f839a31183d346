"""``evaluate(model, suite=...)``: load the model, load the data, encode every unique sentence once, score,
and return a dictionary that records how the numbers were made (protocol, data hashes, model hash,
package versions, time)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.evaluation import sts as sts_suite
from embedkit.evaluation.geometry import geometry_scores
from embedkit.evaluation.mteb_eval import run_mteb
from embedkit.evaluation.provenance import model_info, package_versions
from embedkit.log import progress as progress_line
from embedkit.model_ref import embedding_dim, load_model

SUITES = ("sts", "geometry", "mteb")


def evaluate(
    model: Any,
    suite: str = "sts",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    *,
    source: str = "auto",
    autocast: str | None = None,
    geometry: bool = False,
    progress: bool = False,
    model_path: str | None = None,
    dims: list[int] | None = None,
    tasks: str | list[str] | None = None,
    max_seq_length: int | None = None,
    show_progress_bar: bool | None = False,
    **kw: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` (a SentenceTransformer, a folder, a packaged model or a Hub id) on a suite.

    * ``sts``: STS12–16 ("all" setting), STS-B test, SICK-R test; returns ``{"protocol", "tasks", "avg",
      "settings", "subsets", "data", "model", "versions", "seconds", ...}``. With ``geometry=True`` also
      ``"geometry"`` (alignment / uniformity / anisotropy on STS-B test), from the same embeddings.
    * ``geometry``: only the geometry numbers (encodes STS-B test alone).
    * ``mteb``: runs :func:`embedkit.evaluation.mteb_eval.run_mteb` with ``tasks`` / ``benchmark`` and the
      other keyword arguments it takes.

    ``data_dir``: the local data folder (default: ``$EMBEDKIT_DATA`` or ``../shared/data``); ``source``:
    ``auto`` | ``local`` | ``hub``; ``autocast``: ``none`` (default) | ``bf16`` | ``auto``; ``model_path``:
    where an already loaded ``model`` was saved (recorded in the results; names the model for mteb).

    ``dims`` (Matryoshka, e.g. ``[384, 128, 64]``; ``sts`` and ``geometry``): every score also at each
    truncated dimension, under ``"dims": {"128": {"dim": 128, "tasks", "avg", ...}}``. The texts are encoded
    once; each dimension keeps the first ``d`` coordinates, then normalises
    (:func:`embedkit.encoding.truncate`). A dimension outside 1..the model's is refused before encoding.

    ``tasks`` (``sts``): a subset of the suite, e.g. ``["STS12", "STSB"]`` or ``"STS12,STSB"`` (names as in
    :func:`embedkit.evaluation.sts.resolve_tasks`); ``avg`` is then the mean over those tasks, and ``avg_tasks``
    lists them. With ``suite="mteb"`` it is the mteb task list.

    ``max_seq_length`` (``sts``, ``geometry``): the token length sentences are cut at. ``None`` (default): the
    model's own maximum (:func:`embedkit.encoding.model_max_length`, e.g. 512 for BERT), not the length it was
    trained with, as SentEval encodes sentences whole. ``results["encoding"]`` records the length used and why.
    ``show_progress_bar``: a bar on stderr while encoding (``None``: only when stderr is a terminal).
    """
    if suite not in SUITES:
        raise EmbedkitError(f"suite {suite!r}: expected one of {', '.join(SUITES)}")
    started = time.perf_counter()
    if suite == "mteb":
        if dims:
            raise EmbedkitError("dims: mteb encodes through its own wrapper; evaluate Matryoshka dimensions with the "
                                "sts or geometry suite")

        if max_seq_length is not None:
            raise EmbedkitError("max_seq_length: mteb encodes through its own wrapper (the model's max_seq_length)")
        if tasks is not None:
            kw["tasks"] = tasks
        return run_mteb(model, data_dir=data_dir, batch_size=batch_size, source=source, autocast=autocast,
                        progress=progress, model_path=model_path, **kw)
    if kw:
        raise EmbedkitError(f"evaluate(suite={suite!r}): unexpected arguments {sorted(kw)}")
    if suite == "geometry" and tasks is not None:
        raise EmbedkitError("tasks: the geometry suite always uses STS-B test; tasks= selects STS suite tasks")
    if max_seq_length is not None and (isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int)
                                       or max_seq_length <= 0):
        raise EmbedkitError(f"max_seq_length {max_seq_length!r}: expected a positive number of tokens")

    from embedkit.encoding import check_dim, encode, model_max_length, resolve_autocast, sequence_length, truncate

    names = ("STSBenchmark",) if suite == "geometry" else sts_suite.resolve_tasks(tasks)
    data = sts_suite.load_suite(data_dir, source, names)  # data first: a bad folder fails before the model loads
    st_model, spec = load_model(model)
    spec = spec or model_path
    for d in dims or ():
        check_dim(d, embedding_dim(st_model), "dims")
    length, rule = _encoding_length(st_model, max_seq_length, model_max_length(st_model))
    mode = resolve_autocast(autocast, st_model.device)
    sentences = data.sentences()
    progress_line(f"encoding {len(sentences)} unique sentences (batch {batch_size}, autocast {mode}, up to "
                  f"{length} tokens)", progress)
    t0 = time.perf_counter()
    with sequence_length(st_model, length):  # once, for every dimension
        raw = encode(st_model, sentences, batch_size, autocast=mode, dtype=np.float64,
                     show_progress_bar=show_progress_bar)
    encode_seconds = time.perf_counter() - t0

    def scores(dim: int | None) -> dict[str, Any]:
        """Every score of the suite on unit vectors of the first ``dim`` coordinates (all with ``None``)."""
        table = dict(zip(sentences, truncate(raw, dim, normalize=True), strict=True))
        if suite == "geometry":
            return {"protocol": "wang-isola-2020", **geometry_scores(data.tasks["STSBenchmark"], table)}
        out = {"protocol": sts_suite.PROTOCOL, "setting": sts_suite.SETTING_DESCRIPTIONS["all"],
               **sts_suite.score_suite(data, table), "avg_tasks": list(data.tasks)}
        if len(data.tasks) < len(sts_suite.TASKS):
            out["avg_note"] = (f"avg over the {len(data.tasks)} of {len(sts_suite.TASKS)} tasks that ran "
                               f"({', '.join(data.tasks)}); not comparable with a 7-task STS avg")
        if geometry:
            out["geometry"] = geometry_scores(data.tasks["STSBenchmark"], table)
        return out

    provenance = {
        "data": {"source": data.source, "dir": data.root, "files": data.files},
        "model": model_info(st_model, spec),
        "encoding": {"unique_sentences": len(sentences), "batch_size": batch_size, "autocast": mode,
                     "device": str(st_model.device), "max_seq_length": length, "truncation": rule,
                     "seconds": round(encode_seconds, 2)},
        "versions": package_versions(),
    }
    if data.deviations:
        provenance["deviations"] = data.deviations
    out = {**scores(None), **provenance}
    if dims:
        out["dims"] = {str(d): {"dim": d, **scores(d)} for d in dims}
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def _encoding_length(model: Any, asked: int | None, limit: int | None) -> tuple[int | None, str]:
    """The token length the suite encodes at and a sentence that says why (recorded in ``results["encoding"]``)."""
    configured = getattr(model, "max_seq_length", None)
    if asked is not None:
        if limit is not None and asked > limit:
            raise EmbedkitError(f"max_seq_length {asked}: longer than the model can read ({limit} tokens)")
        return asked, f"asked: sentences cut at {asked} tokens (the model's own setting is {configured})"
    if limit is None:
        return configured, f"the model's max_seq_length ({configured}); its own maximum is not known"
    return limit, (f"none below the model's maximum: up to {limit} tokens, as SentEval encodes sentences whole "
                   f"(the model's max_seq_length setting, e.g. the training length, is {configured})")
