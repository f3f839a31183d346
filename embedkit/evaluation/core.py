"""The scoring core shared by training-time checkpoint selection and ``embedkit eval``:
encode each unique sentence once, cosine per pair, Spearman/Pearson against gold."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from embedkit import paths
from embedkit.data.sts import PairSet, read_stsb
from embedkit.errors import DataError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from embedkit.recipe import DevSection


# The STS suite's tasks, in the order of every table (SentEval's "all" setting, then STS-B and SICK-R test).
TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R")


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
        from embedkit.model_ref import hub_problem

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


def make_dev_evaluator(pairs: PairSet, batch_size: int = 128) -> Any:
    """A sentence-transformers evaluator reporting ``spearman`` on ``pairs`` for checkpoint selection."""
    from sentence_transformers.evaluation import SentenceEvaluator

    class STSDevEvaluator(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.name = pairs.name
            self.primary_metric = "spearman"

        def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            metrics = self.prefix_name_to_metrics(score_pairs(model, pairs, batch_size), self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return STSDevEvaluator()
