"""The scoring core shared by training-time checkpoint selection and ``embedkit eval``:
encode each unique sentence once, cosine per pair, Spearman/Pearson against gold; and the dev set a recipe
selects checkpoints on (STS-B, a reranking file or a retrieval folder: :func:`load_dev`, :func:`score_dev`,
:func:`make_dev_evaluator`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from embedkit import paths
from embedkit.data.heldout import split_heldout
from embedkit.data.ranking import BeirSet, RerankSet, ranking_name, read_beir, read_rerank
from embedkit.data.sts import PairSet, read_stsb
from embedkit.errors import DataError
from embedkit.evaluation.ranking import score_rerank, score_retrieval
from embedkit.model_ref import hub_problem
from embedkit.recipe import METRIC_LABELS

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from embedkit.recipe import DevSection


def unit_table(model: SentenceTransformer, sentences: list[str], batch_size: int = 128,
               autocast: str | None = None) -> dict[str, np.ndarray]:
    """Sentence → unit vector (float64) for each distinct sentence, from :func:`embedkit.encoding.encode`: the
    lookup table the STS protocol scores pairs from."""
    from embedkit.encoding import encode

    unique = list(dict.fromkeys(sentences))
    return dict(zip(unique, encode(model, unique, batch_size, normalize=True, autocast=autocast, dtype=np.float64),
                    strict=True))


def pair_cosines(table: dict[str, np.ndarray], pairs: PairSet) -> np.ndarray:
    """Cosine of each pair, from a :func:`unit_table`."""
    a = np.stack([table[s] for s in pairs.sentences1])
    b = np.stack([table[s] for s in pairs.sentences2])
    return (a * b).sum(axis=1)


def correlations(cosines: np.ndarray, gold: list[float]) -> dict[str, float]:
    """100 × Spearman and Pearson of cosine against gold."""
    return {
        "spearman": 100.0 * float(spearmanr(cosines, gold).statistic),
        "pearson": 100.0 * float(pearsonr(cosines, gold).statistic),
    }


def score_pairs(model: SentenceTransformer, pairs: PairSet, batch_size: int = 128) -> dict[str, float]:
    """Spearman and Pearson (× 100) of cosine similarity on one pair set."""
    table = unit_table(model, pairs.sentences1 + pairs.sentences2, batch_size)
    return correlations(pair_cosines(table, pairs), pairs.scores)


def load_stsb_dev(dev: DevSection, data_dir: str | Path | None = None) -> PairSet:
    """STS-B dev from the recipe's local path (file or folder), else from the Hub; a clear error if neither."""
    tried = []
    if dev.path:
        try:
            path = Path(paths.expand(dev.path, paths.resolve_data_dir(data_dir)))
        except FileNotFoundError as err:
            tried.append(str(err))
        else:
            if path.is_dir():
                path = path / "sts-dev.csv"
            if path.is_file():
                return read_stsb(path, name="stsb-dev")
            tried.append(f"{path}: not found")
    problem = None
    if dev.hub:
        problem = hub_problem(dev.hub)  # one short probe instead of datasets' retries (over a minute offline)
        if problem:
            tried.append(f"hub {dev.hub}: {problem}")
    if dev.hub and not problem:
        try:
            import datasets

            ds = datasets.load_dataset(dev.hub, split=dev.split)
            return PairSet("stsb-dev", list(ds["sentence1"]), list(ds["sentence2"]), [float(s) for s in ds["score"]],
                           files={f"hub:{dev.hub}:{dev.split}": getattr(ds, "_fingerprint", "")})
        except Exception as err:  # noqa: BLE001 - offline or missing: reported below with the local attempt
            tried.append(f"hub {dev.hub}: {type(err).__name__}")
    raise DataError(
        "STS-B dev is not available: " + "; ".join(tried)
        + ". Pass --data-dir (or set $EMBEDKIT_DATA) to a folder with sts/stsbenchmark/sts-dev.csv, "
        + ("set HF_HUB_OFFLINE=1 to use the local Hugging Face cache, " if problem else "")
        + "or set data.dev: null to train without checkpoint selection."
    )


# How each dev metric is written in logs and the model card.


@dataclass
class DevSet:
    """The loaded dev set of a recipe: ``kind`` (stsb | rerank | retrieval), the evaluator's ``name`` (metric keys
    are ``eval_<name>_<metric>``), the ``metric`` that selects the checkpoint, and the data."""

    kind: str
    name: str
    metric: str
    data: PairSet | RerankSet | BeirSet
    heldout: dict[str, Any] | None = None  # split_from_train: the slice's record (file, share, seed, units)

    @property
    def label(self) -> str:
        """``STS-B dev`` or the set's name, for log lines."""
        return "STS-B dev" if self.kind == "stsb" else self.name

    @property
    def metric_key(self) -> str:
        """The trainer's name of the selecting metric (``metric_for_best_model``)."""
        return f"eval_{self.name}_{self.metric}"


def ranking_names(sets: Sequence[tuple[str, str | Path, str]]) -> list[str]:
    """A distinct name for each (kind, path, split): :func:`ranking_name`, with as many of the path's enclosing
    folders in front as it takes to tell sets of one name apart (``x-trecqa-dev``, ``y-trecqa-dev`` for
    ``x/trecqa/dev.csv`` and ``y/trecqa/dev.csv``). The same set given twice is a :class:`DataError`."""
    resolved = [Path(p).expanduser().resolve() for _, p, _ in sets]
    seen: dict[tuple, str | Path] = {}
    for (kind, raw, split), path in zip(sets, resolved):
        key = (kind, path, split if kind == "retrieval" else "")
        if key in seen:
            raise DataError(f"{raw}: given twice as a {kind} set (also as {seen[key]}); give each once")
        seen[key] = raw

    def named(i: int, depth: int) -> str:
        kind, raw, split = sets[i]
        named_folder = resolved[i].parent if kind == "rerank" else resolved[i]  # its name is in ranking_name
        extra = [folder.name for folder in list(named_folder.parents)[:depth] if folder.name]
        return "-".join([*reversed(extra), ranking_name(kind, raw, split)])

    names = [named(i, 0) for i in range(len(sets))]
    for depth in range(1, max((len(p.parts) for p in resolved), default=0) + 1):
        clash = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clash:
            break
        for i in clash:
            names[i] = named(i, depth)
    return names


def load_ranking(kind: str, raw: str, split: str = "test", data_dir: str | Path | None = None,
                 name: str | None = None) -> RerankSet | BeirSet:
    """A reranking file or BEIR folder named by a recipe path (``{data_dir}`` expanded), read in full; its name
    is ``name``, by default :func:`ranking_name`."""
    try:
        path = Path(paths.expand(raw, paths.resolve_data_dir(data_dir)))
    except FileNotFoundError as err:
        raise DataError(str(err)) from None
    name = name or ranking_name(kind, path, split)
    return read_rerank(path, name=name) if kind == "rerank" else read_beir(path, split, name=name)


def load_rankings(sets: Sequence[tuple[str, str, str]], data_dir: str | Path | None = None
                  ) -> list[RerankSet | BeirSet]:
    """:func:`load_ranking` of each (kind, recipe path, split), each under a distinct name (:func:`ranking_names`)."""
    root = paths.resolve_data_dir(data_dir)
    expanded = []
    for kind, raw, split in sets:
        try:
            expanded.append((kind, Path(paths.expand(raw, root)), split))
        except FileNotFoundError as err:
            raise DataError(str(err)) from None
    return [load_ranking(kind, str(path), split, data_dir, name=name)
            for (kind, path, split), name in zip(expanded, ranking_names(expanded))]


@dataclass
class WeightedDevSet:
    """Several dev sets (a list ``data.dev``) that select the checkpoint together on their weighted mean,

        score = Σ_k w_k · m_k / Σ_k w_k

    where ``m_k`` is dev set k's ``metric`` (× 100, as every dev metric here) and ``w_k`` its ``weight``. Each set's
    every metric is reported too (``dev_<set name>_<metric>``); the selecting key is ``eval_dev_weighted``."""

    sets: list[DevSet]
    weights: list[float]
    kind: str = "weighted"
    name: str = "dev"
    metric: str = "weighted"

    @property
    def label(self) -> str:
        return "weighted dev"

    @property
    def metric_key(self) -> str:
        return f"eval_{self.name}_{self.metric}"

    @property
    def rule(self) -> str:
        """``(0.5 × stsb-dev Spearman + 0.5 × trecqa-dev MAP) / 1``, for logs and results."""
        parts = " + ".join(f"{w:g} × {d.name} {METRIC_LABELS[d.metric]}" for d, w in zip(self.sets, self.weights,
                                                                                         strict=True))
        return f"({parts}) / {sum(self.weights):g}"

    def score(self, model: SentenceTransformer, batch_size: int = 128) -> dict[str, float]:
        out: dict[str, float] = {}
        total = 0.0
        for dev, weight in zip(self.sets, self.weights, strict=True):
            scores = score_dev(model, dev, batch_size)
            out.update({f"{dev.name}_{m}": float(v) for m, v in scores.items() if m in METRIC_LABELS})
            total += weight * float(scores[dev.metric])
        return {"weighted": total / sum(self.weights), **out}


def load_dev(dev: DevSection | list, data_dir: str | Path | None = None) -> DevSet | WeightedDevSet:
    """The recipe's dev set, read in full (STS-B: local file/folder, else the Hub); a list: the weighted sets.
    A ``split_from_train`` dev set is the slice of its training file that training leaves out."""
    if isinstance(dev, list):
        sets = [load_dev(d, data_dir) for d in dev]
        names = [d.name for d in sets]
        if len(set(names)) != len(names):
            raise DataError(f"data.dev: two dev sets have the same name ({', '.join(names)}); list each set once")
        return WeightedDevSet(sets, [float(d.weight) for d in dev])
    if dev.split_from_train is not None:
        assert dev.path is not None  # the schema requires it
        try:
            path = paths.expand(dev.path, paths.resolve_data_dir(data_dir))
        except FileNotFoundError as err:
            raise DataError(str(err)) from None
        held = split_heldout(path, dev.kind, dev.split_from_train, dev.split_seed)
        return DevSet(dev.kind, held.dev.name, dev.metric, held.dev, heldout=held.record)
    if dev.kind == "stsb":
        return DevSet("stsb", "stsb-dev", dev.metric, load_stsb_dev(dev, data_dir))
    assert dev.path is not None  # the schema requires it
    data = load_ranking(dev.kind, dev.path, dev.split, data_dir)
    return DevSet(dev.kind, data.name, dev.metric, data)


def score_dev(model: SentenceTransformer, dev: DevSet | WeightedDevSet | PairSet,
              batch_size: int = 128) -> dict[str, Any]:
    """Every metric of the dev set's kind (× 100): Spearman/Pearson, MAP/MRR@10, or nDCG@10/Recall@100/MRR@10."""

    from embedkit.experts import routed_eval

    if isinstance(dev, WeightedDevSet):
        return dev.score(model, batch_size)
    data = dev.data if isinstance(dev, DevSet) else dev
    kind = "stsb" if isinstance(data, PairSet) else "rerank" if isinstance(data, RerankSet) else "retrieval"
    with routed_eval(model, kind):  # a model with experts: the route model.experts.eval_routes gives this kind
        if isinstance(data, PairSet):
            return score_pairs(model, data, batch_size)
        if isinstance(data, RerankSet):
            return score_rerank(model, data, batch_size)
        return score_retrieval(model, data, batch_size)


def make_dev_evaluator(dev: DevSet | WeightedDevSet | PairSet, batch_size: int = 128) -> Any:
    """A sentence-transformers evaluator reporting the dev set's metrics (``<name>_<metric>``) for checkpoint
    selection; its primary metric is the one the recipe names (``spearman`` for a bare STS-B PairSet). Stateless:
    a resumed run builds it again."""
    from sentence_transformers.evaluation import SentenceEvaluator

    if isinstance(dev, PairSet):
        dev = DevSet("stsb", dev.name, "spearman", dev)
    dev_set = dev

    class DevEvaluator(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.name = dev_set.name
            self.primary_metric = dev_set.metric

        def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            scores = {k: v for k, v in score_dev(model, dev_set, batch_size).items()
                      if k in METRIC_LABELS or isinstance(dev_set, WeightedDevSet)}  # counts, seconds: no metrics
            metrics = self.prefix_name_to_metrics(scores, self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return DevEvaluator()
