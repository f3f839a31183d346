"""Reranking and retrieval scores: the one place their metrics are computed (``embedkit eval --rerank`` /
``--retrieval``, checkpoint selection on a ranking dev set, a recipe's final ``eval.rerank`` / ``eval.retrieval``).

Conventions (docs/evaluation.md says the same):

* **Similarity**: cosine of unit vectors from :func:`embedkit.encoding.encode` (every distinct text encoded once).
  Queries are encoded with the model's prompt named ``query``, candidates and documents with the prompt named
  ``document``, when the model defines them (sentence-transformers' ``model.prompts``).
* **Scoring** is trec_eval's, through ``pytrec_eval`` (the library BEIR and mteb score with): nDCG with graded
  relevance as the gain and a log2 rank discount (``ndcg_cut.10``), recall at 100 (``recall.100``), average
  precision (``map``). MRR@10 (trec_eval has no cut-off reciprocal rank) is ``1 / rank`` of the first relevant
  document in the same ranking, 0 when none is in the top 10, computed here as mteb computes it.
* **Ranking and ties**: by score, highest first; equal scores are ordered by document id, highest first
  (trec_eval's order). A reranking candidate's id sorts its negatives above its positives, so a tie counts
  *against* the model (a model that scores every candidate the same earns no credit), as in mteb's reranking.
* **Reranking** (answer selection): MAP and MRR@10 over the questions with at least one positive and one
  negative candidate; the others are counted in ``skipped``.
* Scores are reported × 100 (like the STS suite's Spearman); mteb's files hold the same numbers / 100.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pytrec_eval

from embedkit.data.ranking import BeirSet, RerankSet
from embedkit.errors import DataError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

RERANK_METRICS = ("map", "mrr@10")
RETRIEVAL_METRICS = ("ndcg@10", "recall@100", "mrr@10")
# pytrec_eval's measure for each metric (MRR@10 is computed from the ranking, see the module docstring).
_TREC_MEASURES = {"map": "map", "ndcg@10": "ndcg_cut_10", "recall@100": "recall_100"}
_TREC_REQUEST = {"map": "map", "ndcg@10": "ndcg_cut.10", "recall@100": "recall.100"}
RETRIEVAL_TOP_K = 100  # documents kept per query: enough for every metric above
Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Document ids best first: score descending, ties by id descending (trec_eval's order, and mteb's)."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def reciprocal_rank(relevant: Mapping[str, int], scores: Mapping[str, float], k: int = 10) -> float:
    """1 / rank of the first document with relevance > 0 among the ``k`` best, else 0."""
    for rank, doc in enumerate(ranking(scores)[:k], start=1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def ranking_metrics(qrels: Qrels, run: Run, metrics: tuple[str, ...]) -> dict[str, float]:
    """Mean over the queries of ``qrels`` of each metric (× 100); a query the run does not rank scores 0."""
    unknown = [m for m in metrics if m not in _TREC_MEASURES and m != "mrr@10"]
    if unknown:
        raise ValueError(f"unknown ranking metric(s) {unknown}")
    trec = [m for m in metrics if m in _TREC_MEASURES]
    per_query: dict[str, dict[str, float]] = {}
    if trec:
        per_query = pytrec_eval.RelevanceEvaluator(qrels, {_TREC_REQUEST[m] for m in trec}).evaluate(run)
    out: dict[str, float] = {}
    n = len(qrels)
    for m in metrics:
        if m == "mrr@10":
            total = sum(reciprocal_rank(rel, run.get(q, {}), 10) for q, rel in qrels.items())
        else:
            total = sum(per_query.get(q, {}).get(_TREC_MEASURES[m], 0.0) for q in qrels)
        out[m] = 100.0 * total / n
    return out


def rerank_layout(data: RerankSet) -> tuple[dict[str, str], dict[str, str], Qrels, dict[str, list[str]]]:
    """The scorable questions of ``data`` as ids: ``(queries, documents, qrels, candidates per query)``.

    Question ``n`` is ``q{n}``; its candidates ``q{n}-0-{i}`` (positive ``i``) and ``q{n}-1-{i}`` (negative ``i``),
    so that under trec_eval's tie order (id descending) a negative ranks above a positive of equal score.
    The mteb task :func:`embedkit.evaluation.mteb_tasks.local_rerank_task` uses the same ids.
    """
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    qrels: Qrels = {}
    candidates: dict[str, list[str]] = {}
    for n, q in enumerate(x for x in data.queries if x.scorable):
        qid = f"q{n:05d}"
        queries[qid] = q.query
        qrels[qid] = {}
        for label, texts in ((1, q.positives), (0, q.negatives)):
            for i, text in enumerate(texts):
                did = f"{qid}-{1 - label}-{i:05d}"
                docs[did] = text
                qrels[qid][did] = label
        candidates[qid] = list(qrels[qid])
    if not queries:
        raise DataError(f"{data.name}: no question has both a positive and a negative candidate; MAP and MRR "
                        "are undefined")
    return queries, docs, qrels, candidates


def prompt_kwargs(model: Any, name: str) -> dict[str, str]:
    """``{"prompt_name": name}`` when the model defines a non-empty prompt ``name``, else ``{}``."""
    prompts = getattr(model, "prompts", None) or {}
    return {"prompt_name": name} if prompts.get(name) else {}


def encode_side(model: SentenceTransformer, texts: list[str], side: str, batch_size: int = 128,
                autocast: str | None = None, dtype: Any = np.float32, normalize: bool = True) -> np.ndarray:
    """Embeddings of ``texts`` (unit vectors unless ``normalize`` is off) with the model's prompt ``side``
    (``query`` / ``document``) when it has one."""
    from embedkit.encoding import encode

    return encode(model, texts, batch_size, normalize=normalize, autocast=autocast, dtype=dtype,
                  **prompt_kwargs(model, side))


def _raw_table(model: SentenceTransformer, texts: dict[str, str], side: str, batch_size: int,
               autocast: str | None, dtype: Any) -> tuple[list[str], np.ndarray]:
    """Ids and un-normalised embeddings: each dimension of a Matryoshka evaluation truncates, then normalises."""
    ids = list(texts)
    return ids, encode_side(model, [texts[i] for i in ids], side, batch_size, autocast, dtype, normalize=False)


def _at_dims(score: Any, q_raw: np.ndarray, d_raw: np.ndarray, dims: list[int] | None) -> dict[str, Any]:
    """``score(queries, documents)`` on the full unit vectors, and under ``dims`` on each truncated width
    (:func:`embedkit.encoding.truncate`: first ``d`` coordinates, then normalised)."""
    from embedkit.encoding import truncate

    out = score(truncate(q_raw, None, normalize=True), truncate(d_raw, None, normalize=True))
    if dims:
        out["dims"] = {str(d): score(truncate(q_raw, d, normalize=True), truncate(d_raw, d, normalize=True))
                       for d in dims}
    return out


def score_rerank(model: SentenceTransformer, data: RerankSet, batch_size: int = 128, autocast: str | None = None,
                 metrics: tuple[str, ...] = RERANK_METRICS, dims: list[int] | None = None) -> dict[str, Any]:
    """MAP and MRR@10 (× 100) of cosine similarity over the scorable questions of ``data`` (and, with ``dims``,
    the same at each Matryoshka width under ``dims``)."""
    started = time.perf_counter()
    queries, docs, qrels, candidates = rerank_layout(data)
    qids, q_raw = _raw_table(model, queries, "query", batch_size, autocast, np.float64)
    dids, d_raw = _raw_table(model, docs, "document", batch_size, autocast, np.float64)
    q_row = {q: i for i, q in enumerate(qids)}
    d_row = {d: i for i, d in enumerate(dids)}

    def score(q_emb: np.ndarray, d_emb: np.ndarray) -> dict[str, Any]:
        run: Run = {}
        for qid, cands in candidates.items():
            sims = d_emb[[d_row[d] for d in cands]] @ q_emb[q_row[qid]]
            run[qid] = dict(zip(cands, sims.tolist(), strict=True))
        return ranking_metrics(qrels, run, metrics)

    out = _at_dims(score, q_raw, d_raw, dims)
    out.update(questions=len(queries), skipped=len(data.queries) - len(queries), candidates=len(docs),
               seconds=round(time.perf_counter() - started, 2))
    return out


def score_retrieval(model: SentenceTransformer, data: BeirSet, batch_size: int = 128, autocast: str | None = None,
                    metrics: tuple[str, ...] = RETRIEVAL_METRICS, top_k: int = RETRIEVAL_TOP_K,
                    chunk: int = 256, dims: list[int] | None = None) -> dict[str, Any]:
    """nDCG@10, Recall@100 and MRR@10 (× 100) of exhaustive cosine search of ``data``'s queries in its corpus
    (and, with ``dims``, the same at each Matryoshka width under ``dims``).

    Each query keeps its ``top_k`` best documents (float32 scores, queries ``chunk`` at a time), which is all
    these metrics read; a tie at the ``top_k`` boundary may keep either document.
    """
    started = time.perf_counter()
    qids, q_raw = _raw_table(model, data.queries, "query", batch_size, autocast, np.float32)
    dids, d_raw = _raw_table(model, data.corpus, "document", batch_size, autocast, np.float32)
    k = min(top_k, len(dids))

    def score(q_emb: np.ndarray, d_emb: np.ndarray) -> dict[str, Any]:
        run: Run = {}
        for start in range(0, len(qids), chunk):
            sims = q_emb[start : start + chunk] @ d_emb.T
            top = (np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(dids)
                   else np.tile(np.arange(k), (len(sims), 1)))
            for row, qid in enumerate(qids[start : start + chunk]):
                run[qid] = {dids[j]: float(sims[row, j]) for j in top[row]}
        return ranking_metrics(data.qrels, run, metrics)

    out = _at_dims(score, q_raw, d_raw, dims)
    out.update(queries=len(qids), documents=len(dids), seconds=round(time.perf_counter() - started, 2))
    return out


def score_set(model: SentenceTransformer, data: RerankSet | BeirSet, batch_size: int = 128,
              autocast: str | None = None, dims: list[int] | None = None) -> tuple[str, dict[str, Any]]:
    """``("rerank", score_rerank(...))`` for a reranking set, ``("retrieval", score_retrieval(...))`` for a BEIR
    set: the kind is the key its scores go under in ``results.json``."""
    if isinstance(data, RerankSet):
        return "rerank", score_rerank(model, data, batch_size, autocast, dims=dims)
    return "retrieval", score_retrieval(model, data, batch_size, autocast, dims=dims)
