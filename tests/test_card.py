"""The model card on sentence-transformers' own: embedkit edits it with huggingface_hub's ModelCard, adds its
sections once (a second update replaces them), and reads MTEB results of any task type from mteb's layout."""

from __future__ import annotations

import json
import re

import yaml
from huggingface_hub import ModelCard

from embedkit.card import BEGIN, END, build_card, update_card

# The shape of the card sentence-transformers writes at save time (its dev evaluator's entry in model-index).
ST_CARD = """---
tags:
- sentence-transformers
- loss:CoSENTLoss
library_name: sentence-transformers
pipeline_tag: sentence-similarity
model-index:
- name: SentenceTransformer
  results:
  - task:
      type: dev
      name: Dev
    dataset:
      name: stsb dev
      type: stsb-dev
    metrics:
    - type: spearman
      value: 81.5
      name: Spearman
---

# SentenceTransformer

## Model Details

```python
model = SentenceTransformer("sentence_transformers_model_id")
```

## Training Details

* Loss: <code>CoSENTLoss</code>

## Citation
"""
REV = "a" * 64


def _task_file(folder, task: str, scores: dict, revision: str = "dsrev") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.json").write_text(json.dumps({
        "dataset_revision": revision, "task_name": task, "mteb_version": "2.26.24", "evaluation_time": 1.5,
        "scores": {split: [{"hf_subset": sub, "languages": ["eng-Latn"], "main_score": v, "accuracy": v}
                           for sub, v in subs.items()] for split, subs in scores.items()}}))


def _front(text: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", text, flags=re.S).group(1))


def test_mteb_results_of_any_type_are_read_from_mtebs_layout(tmp_path):
    mteb_dir = tmp_path / "mteb"
    run_dir = mteb_dir / "results" / "alice__m" / REV
    _task_file(run_dir, "BankingClassification", {"test": {"en": 0.7, "de": 0.625}})
    _task_file(run_dir, "SprintDuplicateQuestions", {"validation": {"default": 0.9}, "test": {"default": 0.875}})
    (run_dir / "model_meta.json").write_text(json.dumps({"name": "alice/m"}))  # not a task result
    _task_file(mteb_dir / "results" / "alice__m" / ("b" * 64), "Stale", {"test": {"default": 0.1}})  # other revision
    results = {
        "recipe": {"model": {"name": "sentence-transformers/all-MiniLM-L6-v2"}, "method": {"name": "cosent"}},
        "method": {"name": "cosent"},
        "mteb": {"revision": REV, "tasks": {
            "BankingClassification": {"main_score": 0.6625, "main_metric": "accuracy", "type": "Classification",
                                      "dataset": {"path": "mteb/banking77", "revision": "dsrev"}, "source": "hub"},
            "SprintDuplicateQuestions": {"main_score": 0.875, "main_metric": "max_ap", "type": "PairClassification",
                                         "dataset": {"path": "mteb/sprint", "revision": "dsrev"}},
            "NoFileTask": {"main_score": 0.5, "main_metric": "ndcg_at_10", "type": "Retrieval"}}},
    }
    text = update_card(ST_CARD, results, mteb_dir=mteb_dir)
    entries = ModelCard(text).data.eval_results
    got = {(r.task_name, r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type):
           r.metric_value for r in entries}
    assert got == {
        ("Dev", "dev", "stsb-dev", None, None, "spearman"): 81.5,  # sentence-transformers' entry is kept
        ("MTEB BankingClassification", "Classification", "mteb/banking77", "en", "test", "accuracy"): 70.0,
        ("MTEB BankingClassification", "Classification", "mteb/banking77", "de", "test", "accuracy"): 62.5,
        ("MTEB SprintDuplicateQuestions", "PairClassification", "mteb/sprint", "default", "validation", "max_ap"): 90.0,
        ("MTEB SprintDuplicateQuestions", "PairClassification", "mteb/sprint", "default", "test", "max_ap"): 87.5,
        ("MTEB NoFileTask", "Retrieval", "NoFileTask", "default", "test", "ndcg_at_10"): 50.0,  # from results.json
    }
    assert {r.dataset_revision for r in entries if r.task_name.startswith("MTEB Banking")} == {"dsrev"}
    assert "| BankingClassification | 0.6250 | accuracy | Classification | test | de |" in text
    assert "Stale" not in text

    # embedkit's sections sit before sentence-transformers' training details, once, whatever the number of updates
    assert text.index(BEGIN) < text.index("## Training Details") and text.count(BEGIN) == text.count(END) == 1
    again = update_card(text, results, mteb_dir=mteb_dir)
    assert again == text
    assert "model_name" not in _front(text)  # only the model-index's name

    # For a push: the usage snippet and the title name the repository, and so does the model-index.
    pushed = update_card(text, results, repo_id="alice/m", mteb_dir=mteb_dir)
    assert 'SentenceTransformer("alice/m")' in pushed and "sentence_transformers_model_id" not in pushed
    assert "\n# m\n" in pushed and _front(pushed)["model-index"][0]["name"] == "m"
    assert pushed.count(BEGIN) == 1


def test_a_card_without_results_has_no_model_index_and_no_stray_model_name():
    text = build_card({"recipe": {"model": {"name": "/x/base"}}, "method": {"name": "simcse-unsup"}}, "alice/x")
    front = _front(text)
    assert "model-index" not in front and "model_name" not in front
    assert front["library_name"] == "sentence-transformers" and "embedkit" in front["tags"]
    assert "No evaluation was recorded for this run." in text


def test_the_card_says_the_description_is_the_recipe_files_when_overrides_changed_the_run():
    recipe = {"description": "SimCSE on 3,200 Brown sentences, 200 steps", "model": {"name": "/x"},
              "method": {"name": "simcse-unsup"}, "training": {"max_steps": 2}}
    plain = build_card({"recipe": recipe, "method": {"name": "simcse-unsup"}}, "a/b")
    assert "3,200 Brown sentences, 200 steps" in plain and "overrode" not in plain
    changed = build_card({"recipe": recipe, "method": {"name": "simcse-unsup"},
                          "overrides": ["training.max_steps=2"]}, "a/b")
    assert 'this run overrode "training.max_steps=2"' in changed
    executed = changed[changed.index("### Recipe as executed"):]
    assert "max_steps: 2" in executed


def test_model_index_dev_entries_take_the_saved_models_score_from_results_json():
    """ST_CARD's dev entry (81.5) is the trainer's last evaluation; results.json's dev.after (the saved, selected
    checkpoint) is the one source of the card's dev numbers."""
    results = {"recipe": {"model": {"name": "/x"}, "method": {"name": "cosent"}},
               "dev": {"kind": "stsb", "name": "stsb-dev", "metric": "spearman",
                       "after": {"spearman": 87.31, "pearson": 86.9}}}
    entries = _front(update_card(ST_CARD, results))["model-index"][0]["results"]
    dev = [e for e in entries if e["dataset"]["type"] == "stsb-dev"]
    assert [m["value"] for e in dev for m in e["metrics"] if m["type"] == "spearman"] == [87.31]


def test_card_dev_scores_are_the_saved_checkpoints_not_the_last_evaluation(tmp_path, spread_model_path, monkeypatch):
    """A tiny run whose last dev evaluation (step 6) reads far below the selected checkpoint (step 2): the card's
    model-index and its Evaluation table give results.json's dev.after, the saved model's score."""
    from pathlib import Path

    from _mp_helpers import write_recipe
    from sentence_transformers.evaluation import SentenceEvaluator
    from test_eval_data import make_sts_dir

    import embedkit.evaluation.core as core
    from embedkit.training.run import train

    offsets = {2: 0.0, 4: 30.0, 6: 60.0}  # the real dev score minus these: checkpoint-2 is the best

    class Offset(SentenceEvaluator):
        def __init__(self, pairs) -> None:
            super().__init__()
            self.pairs, self.name, self.primary_metric = pairs, "stsb-dev", "spearman"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            scores = core.score_dev(model, self.pairs)
            metrics = self.prefix_name_to_metrics({m: scores[m] - offsets[steps] for m in ("spearman", "pearson")},
                                                  self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    monkeypatch.setattr(core, "make_dev_evaluator", lambda pairs, batch_size=128: Offset(pairs))
    root, _ = make_sts_dir(tmp_path / "sts", n_extra=40)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, spread_model_path, "simcse-unsup", out, model={"pooling": "mean"},
                          training={"max_steps": 6, "eval_steps": 2, "save_steps": 2, "learning_rate": 5e-3},
                          dev={"path": str(root / "sts" / "stsbenchmark" / "sts-test.csv"), "hub": None})
    results = train(str(recipe))
    assert Path(results["train"]["best_checkpoint"]).name == "checkpoint-2"
    after = results["dev"]["after"]
    last = [e for e in results["train"]["log_history"] if "eval_stsb-dev_spearman" in e][-1]
    assert last["step"] == 6 and abs(last["eval_stsb-dev_spearman"] - after["spearman"]) > 10

    card = (out / "README.md").read_text(encoding="utf-8")
    entries = _front(card)["model-index"][0]["results"]
    dev = {m["type"]: m["value"] for e in entries if e["dataset"]["type"] == "stsb-dev" for m in e["metrics"]}
    assert dev == {"spearman": after["spearman"], "pearson": after["pearson"]}
    evaluation = card[card.index("## Evaluation"):card.index("## Training Details")]
    assert f"**{after['spearman']:.4f}**" in evaluation and f"{after['pearson']:.4f}" in evaluation
    assert f"{last['eval_stsb-dev_spearman']:.4f}" not in evaluation


def test_widget_examples_come_from_the_first_rows_of_the_training_set(tmp_path, tiny_model_path):
    """The card's widget examples are drawn from the first 1,000 training rows: sentence-transformers' own draw
    from anywhere in a memory-mapped set pages a stretch of the file in for each row (480 MB at 10M rows)."""
    import yaml
    from _mp_helpers import write_recipe

    from embedkit.training.run import train

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out, training={"max_steps": 1})
    # the tail's rows are the shorter ones, which sentence-transformers prefers among the rows it draws
    rows = [f"head sentence number {i} of the set, a longer one" for i in range(1000)]
    rows += [f"tail row {i}" for i in range(4000)]
    data = tmp_path / "rows.txt"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    spec["data"]["train"]["path"] = str(data)
    recipe.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = train(str(recipe))
    widget = [t for w in result.model.model_card_data.widget
              for t in [w.get("source_sentence"), *w.get("sentences", [])] if t]
    assert widget, "the card has widget examples"
    assert all(t.startswith("head ") for t in widget), [t for t in widget if not t.startswith("head ")][:3]
