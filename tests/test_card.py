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
