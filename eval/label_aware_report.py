"""The label-aware report (docs/label-aware.md): the base model, unsupervised SimCSE, supervised contrast on the
labelled rows only, and ``label-aware`` (labelled + unlabelled rows), all trained on MR's training part with 10% of
its labels kept, scored by offline MR and SUBJ classification accuracy.

    python eval/label_aware_report.py --data-dir ../shared/data [--rows base,simcse,supcon,label-aware] [--seeds 42]

Data: ``recipes/label-aware-mr-minilm.yaml`` reads the MR folder (``{data_dir}/classification/mr``) as its training
part of the offline classification evaluation's split (:func:`embedkit.data.classification.classification_split`:
stratified 80/20, seed 42): 8,529 sentences labelled positive / negative; the 2,133 test sentences are never trained
on. It keeps the labels of 10% of the rows (``method.label_fraction: 0.1``, ``label_seed: 42``: 853 rows).

Rows (every trained row: that recipe's model and settings, ``training.seed`` the seed):

- ``base``: the packaged all-MiniLM-L6-v2, not trained;
- ``simcse``: ``simcse-unsup`` on the same 8,529 sentences, no label (written once, one a line, to
  ``<work>/mr-train.txt``);
- ``supcon``: ``label-aware`` with ``unlabelled: drop``: the 853 labelled rows only (soft targets = same label,
  plus each row's own dropout view);
- ``label-aware``: the recipe as shipped: 853 labelled + 7,676 unlabelled rows in the same steps.

Scores: a logistic regression (scikit-learn, ``max_iter=100``: mteb's ``AbsTaskClassification`` evaluator) fitted on
the frozen embeddings of the evaluation's training part, accuracy on its test part, for MR and for SUBJ (split the
same way). The MR probe's training sentences ARE the sentences the trained rows trained on (their text; 10% of their
labels): only the MR test part is unseen. SUBJ is not clean either: a third of its sentences also occur in MR's
training part (embedkit's overlap check, in each run's results.json and card). Each run's record is
written to ``<work>/<row>.seed<N>.json`` as it finishes (``eval/retrieval_report.py``'s :func:`report_main`), so an
interrupted report resumes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "label-aware-mr-minilm.yaml"
ROWS = ["base", "simcse", "supcon", "label-aware"]
WORK = Path("runs/label-aware-report")


def sentences_file(data_dir: str, work: Path) -> Path:
    """The recipe's 8,529 training sentences, one a line (SimCSE's rows: the same text, no label), written once."""
    from embedkit.validate import load_recipe_with_data

    path = work / "mr-train.txt"
    if not path.exists():
        _, data = load_recipe_with_data(RECIPE, [], data_dir=data_dir)
        tmp = path.with_suffix(".partial")
        tmp.write_text("".join(str(t).replace("\n", " ") + "\n" for t in data.columns["text"]), encoding="utf-8")
        tmp.replace(path)
    return path


def overrides(name: str, data_dir: str, work: Path) -> list[str]:
    if name == "simcse":
        return ["method={name: simcse-unsup, temperature: 0.05}", f"data.train.path={sentences_file(data_dir, work)}"]
    return ["method.unlabelled=drop"] if name == "supcon" else []



def accuracy(model: Any, name: str, data_dir: str) -> float:
    """Logistic-regression accuracy (×100) on the test part of ``name``'s offline split, fitted on its training part."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from embedkit.data.classification import classification_split, read_classification

    data = read_classification(name, data_dir)
    train, test = classification_split(data.labels)
    emb = model.encode(data.texts, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
    labels = np.asarray(data.labels)
    clf = LogisticRegression(max_iter=100).fit(emb[train], labels[train])
    return round(100 * float(clf.score(emb[test], labels[test])), 2)


def score(model: Any, data_dir: str) -> dict[str, Any]:
    return {"mr": accuracy(model, "MR", data_dir), "subj": accuracy(model, "SUBJ", data_dir)}


def run_row(name: str, seed: int | None, data_dir: str, work: Path) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    if name == "base":
        from retrieval_report import base_record  # a sibling script: on sys.path when this file runs

        return base_record(RECIPE, data_dir, score)
    from embedkit import train

    out_dir = work / f"seed{seed}" / name
    started = time.time()
    results = train(str(RECIPE), [*overrides(name, data_dir, work), f"training.seed={seed}", f"output.dir={out_dir}"],
                    data_dir=data_dir, overwrite=True).results
    seconds = time.time() - started
    started = time.time()
    model = SentenceTransformer(str(out_dir), device="cpu")
    return {"row": name, "seed": seed, "seconds": round(seconds, 1), **score(model, data_dir),
            "eval_seconds": round(time.time() - started, 1), "steps": results["train"]["global_step"]}


def table(groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """A Markdown table, one line per row (mean over its seeds)."""
    from retrieval_report import seeds_cell  # a sibling script: on sys.path when this file runs
    from self_pairs_report import cell

    lines = ["| row | seeds | MR acc | SUBJ acc | train s | eval s |", "|---|---|--:|--:|--:|--:|"]
    for name, runs in groups:
        lines.append("| " + " | ".join([
            name, seeds_cell(runs), cell(runs, lambda r: r["mr"]), cell(runs, lambda r: r["subj"]),
            cell(runs, lambda r: r["seconds"] or None, 0), cell(runs, lambda r: r["eval_seconds"], 0)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from retrieval_report import report_main

    return report_main(__doc__, ROWS, run_row, table, WORK, argv)


if __name__ == "__main__":
    sys.exit(main())
