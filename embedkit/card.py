"""The model card (``README.md``) of a trained model: sentence-transformers' own card, plus embedkit's sections.

sentence-transformers writes a card at every save from the model's ``SentenceTransformerModelCardData``
(tags, dataset sizes and samples, the loss and its parameters, hyperparameters, the dev evaluator's metrics,
training logs, versions, citations). embedkit fills that data before training (:func:`set_card_data`: language,
license, base model, datasets, the method's citation; the trainer adds the loss that actually ran) and, once
the final model is saved, :func:`update_card` edits the card with ``huggingface_hub.ModelCard``:

* front matter: ``model-index`` gets one result per STS task of the SentEval suite and one per MTEB task, split
  and subset (read generically from mteb's result files, ``results/<model>/<revision>/<Task>.json``), next to
  the entries sentence-transformers wrote; tags, base model, license and datasets are completed; a
  ``model_name`` is kept only as the name of a ``model-index`` (never a stray top-level key);
* body: embedkit's sections, rendered from one template between two HTML comments (so a later update
  replaces them): the recipe as executed (after overrides), the method and its citation, the evaluation
  protocol, the STS / MTEB / ranking tables, how the model was trained.

No network. Every text made here goes through :func:`redact_home`, so a path under the user's home folder is
published as ``~/...``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard

from embedkit.errors import EmbedkitError
from embedkit.model_ref import packaged_model_path
from embedkit.paths import atomic_path
from embedkit.recipe import METRIC_LABELS

# Protocols embedkit knows how to describe; any other name is shown as given.
PROTOCOLS = {
    "senteval-sts-all": (
        'SentEval "all" setting, as reported by SimCSE: STS12–STS16 each scored as one concatenation of all '
        "its subsets (STS13 without SMT), STS Benchmark and SICK-R on their test splits; Spearman correlation "
        "of cosine similarity with the gold scores, × 100; Avg is the mean over the tasks. Scores under other "
        'settings (e.g. "wmean") or from other toolkits are not comparable.'
    ),
}
TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction", "embedkit")
MTEB_URL = "https://github.com/embeddings-benchmark/mteb"
BEGIN, END = "<!-- embedkit:begin -->", "<!-- embedkit:end -->"
ST_PLACEHOLDER_ID = "sentence_transformers_model_id"  # sentence-transformers' usage snippet before a push
# A card for an output folder that has none from sentence-transformers (written before embedkit kept it).
BARE_CARD = "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\n---\n\n# {title}\n"


def home_paths() -> list[str]:
    """The user's home folder as written in files (and its resolved form when that differs)."""
    home = os.path.expanduser("~")
    out = []
    for cand in (home, os.path.realpath(home)):
        cand = cand.rstrip("/")
        if cand and cand != "/" and cand not in out:
            out.append(cand)
    return sorted(out, key=len, reverse=True)


def home_pattern() -> re.Pattern | None:
    """A regex matching the home folder as a path (followed by a separator, quote, space or the end)."""
    homes = home_paths()
    if not homes:
        return None
    alternatives = "|".join(re.escape(h) for h in homes)
    return re.compile(rf"(?:{alternatives})(?=[/\\\"'\s,;:)\]}}>`]|$)")


def redact_home(text: str) -> str:
    """Replace the user's home folder with ``~`` wherever it appears as a path."""
    pattern = home_pattern()
    return pattern.sub("~", text) if pattern else text


def load_results(output_dir: str | Path) -> dict[str, Any]:
    """``results.json`` of a finished training run; a clear error when missing or malformed."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        raise EmbedkitError(
            f"{path}: not found; {output_dir} is not a finished embedkit training run (results.json is written last)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EmbedkitError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise EmbedkitError(f"{path}: expected a JSON object with keys recipe, method, train, ...")
    return data


def read_front_matter(readme: str | Path) -> dict[str, Any]:
    """The YAML front matter of an existing card (e.g. the one sentence-transformers wrote); {} if none."""
    path = Path(readme)
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, flags=re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id (``org/name`` or ``name``), not a local path; else ``None``."""
    if not name or name.startswith(("/", ".", "~")) or "\\" in name or Path(name).exists():
        return None
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) and not name.endswith((".", "-")):
        return name
    return None


def sts_tasks(results: dict[str, Any]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(protocol, {task: scores}) from ``results["sts"]``, tolerant of a missing or partial section."""
    sts = results.get("sts")
    if not isinstance(sts, dict):
        return None, {}
    tasks = sts.get("tasks")
    if not isinstance(tasks, dict):
        return sts.get("protocol"), {}
    good = {
        name: scores for name, scores in tasks.items()
        if isinstance(scores, dict) and isinstance(scores.get("spearman"), (int, float))
    }
    return sts.get("protocol"), good


def _seen_in_training(results: dict[str, Any]) -> dict[str, float]:
    """{STS task: % of its pairs in the training data} for the tasks the run's overlap measure flagged."""
    sts = results.get("sts") if isinstance(results.get("sts"), dict) else {}
    overlap = sts.get("overlap") if isinstance(sts.get("overlap"), dict) else {}
    return {t: float(o.get("pairs_pct") or 0.0) for t, o in overlap.items() if isinstance(o, dict) and o.get("flagged")}


def overlap_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's overlap table: every evaluation set the training rows hold (flagged), and the selection sets."""
    overlap = results.get("overlap") if isinstance(results.get("overlap"), dict) else {}
    rows = []
    for name, o in overlap.items():
        if not isinstance(o, dict) or not (o.get("flagged") or o.get("role") == "selection"):
            continue
        unit = o.get("kind", "pairs")
        rows.append({"name": name, "role": o.get("role", "test"), "unit": unit,
                     "pct": _fmt(o.get(f"{unit}_pct", o.get("texts_pct"))),
                     "norm": _fmt(o.get(f"{unit}_norm_pct", o.get("texts_norm_pct"))),
                     "texts": _fmt(o.get("texts_pct"))})
    return rows


def mteb_tasks(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: {"main_score": float, ...}} from ``results["mteb"]``; entries without a main score are skipped."""
    mteb = results.get("mteb")
    if not isinstance(mteb, dict):
        return {}
    if isinstance(mteb.get("tasks"), dict):  # the shape embedkit.evaluation's mteb suite returns
        mteb = mteb["tasks"]
    return {
        name: value for name, value in mteb.items()
        if isinstance(value, dict) and isinstance(value.get("main_score"), (int, float))
    }


def base_model_card(model_ref: Any) -> dict[str, Any]:
    """The front matter of a local (or packaged) base model folder's README; {} when there is none."""
    if not isinstance(model_ref, str) or not model_ref:
        return {}
    folder = Path(model_ref).expanduser()
    if not folder.is_dir():
        folder = Path(packaged_model_path(model_ref) or "/nonexistent")
    return read_front_matter(folder / "README.md")


# ---------------------------------------------------------------------------------------------------------
# Before training: the data sentence-transformers renders its card from


def train_dataset_info(recipe: dict[str, Any]) -> list[dict[str, str]]:
    """``{"name", "id"}`` of each training set for sentence-transformers' card (no path: a file name only; a
    multi-task recipe lists one per source)."""
    train = (recipe.get("data") or {}).get("train") or {}
    infos = []
    for source in train if isinstance(train, list) else [train]:
        info: dict[str, str] = {}
        if source.get("path"):
            info["name"] = Path(str(source["path"])).name
        if source.get("hub"):
            info["id"] = str(source["hub"])  # the recipe's Hub copy of the same set (its fallback)
            info.setdefault("name", str(source["hub"]))
        if info:
            infos.append(info)
    return infos


def set_card_data(model: Any, recipe: dict[str, Any], method: str) -> None:
    """Fill ``model.model_card_data`` before the trainer is built (it adds the loss, dataset sizes, logs).

    ``local_files_only``: sentence-transformers would otherwise look the base model and each dataset up on
    the Hub at every save; embedkit names them itself, from the recipe, so saving never needs the network.
    """
    data = model.model_card_data
    data.local_files_only = True
    base = (recipe.get("model") or {}).get("name")
    base_id = hub_model_id(base)
    base_card = base_model_card(base)
    if base_id:
        data.base_model = base_id
    language = base_card.get("language")
    if language and not data.language:
        data.set_language(language)
    license_ = (recipe.get("output") or {}).get("license") or base_card.get("license")
    if isinstance(license_, str):
        data.set_license(license_)
    infos = train_dataset_info(recipe)
    if infos:
        data.train_datasets = infos
        data.datasets.extend(i["id"] for i in infos if i.get("id") and i["id"] not in data.datasets)
    repo = (recipe.get("output") or {}).get("push_to_hub")
    if repo:
        data.set_model_id(repo)
        data.model_name = repo.split("/")[-1]
    data.add_tags(["embedkit", method])


def set_dev_card_metrics(model: Any, results: dict[str, Any]) -> None:
    """Give sentence-transformers' card data the saved model's dev scores (``results["dev"]["after"]``) before the
    final save. Its card reports each evaluator's *last* evaluation (the last step's), while the saved model is the
    selected checkpoint: results.json is the one source of the card's dev numbers (Evaluation section and
    model-index). The evaluator's metric keys are kept; a key that results.json lacks is dropped."""
    dev = results.get("dev") if isinstance(results.get("dev"), dict) else {}
    after, name = dev.get("after"), dev.get("name")
    card_metrics = getattr(model.model_card_data, "eval_results_dict", None)
    if not isinstance(after, dict) or not name or not card_metrics:
        return
    for evaluator, metrics in list(card_metrics.items()):
        if getattr(evaluator, "name", None) == name:
            short = {key: key.removeprefix(f"{name}_") for key in metrics}
            card_metrics[evaluator] = {key: after[s] for key, s in short.items() if s in after}


WIDGET_ROWS = 1000  # the rows sentence-transformers samples for the widget examples


def set_widget_examples(model: Any, dataset: Any) -> None:
    """The card's widget examples, drawn by sentence-transformers from the first :data:`WIDGET_ROWS` rows of each
    training set instead of from anywhere in it. Its own 1,000 reads scattered over a memory-mapped set each page in
    a stretch of the file: 480 MB of a 10M-row set were resident before the first step (eval/bench_scale.py)."""
    import datasets

    data = model.model_card_data
    if data.widget or isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        return  # sentence-transformers draws none from a stream either
    if isinstance(dataset, datasets.DatasetDict):
        head = datasets.DatasetDict({k: d.select(range(min(len(d), WIDGET_ROWS))) for k, d in dataset.items()})
    elif isinstance(dataset, datasets.Dataset):
        head = dataset.select(range(min(len(dataset), WIDGET_ROWS)))
    else:
        return
    data.set_widget_examples(head)


def add_method_citation(model: Any, method: str, paper: str | None, citation: str | None) -> None:
    """Put the method's BibTeX among the card's citations (the trainer's init replaced them by the losses')."""
    if citation:
        data = model.model_card_data
        data.citations = {**(data.citations or {}), f"{method} ({paper or 'the method'})": citation.strip()}


# ---------------------------------------------------------------------------------------------------------
# model-index


def eval_results(results: dict[str, Any]) -> list[EvalResult]:
    """The Hub ``EvalResult`` list of the STS suite: one per task, Spearman (× 100), the protocol named."""

    protocol, tasks = sts_tasks(results)
    protocol = protocol or "unspecified"
    seen = _seen_in_training(results)
    out = []
    for name, scores in tasks.items():
        args: dict[str, Any] = {"protocol": protocol}
        if isinstance(scores.get("n"), int):
            args["pairs"] = scores["n"]
        metric_name = f"Spearman correlation of cosine similarity × 100 ({protocol})"
        if name in seen:  # measured overlap (embedkit/evaluation/overlap.py): partly a training score
            args["train_overlap_pairs_pct"] = seen[name]
            metric_name += f"; {seen[name]:.1f}% of the pairs are in the training data"
        out.append(EvalResult(
            task_type="sentence-similarity",
            task_name=f"Semantic Textual Similarity ({protocol})",
            dataset_type=name,
            dataset_name=name,
            dataset_split="test",
            dataset_args=args,
            metric_type="spearman",
            metric_name=metric_name,
            metric_config=protocol,
            metric_value=round(float(scores["spearman"]), 2),
        ))
    return out


def mteb_rows(results: dict[str, Any], mteb_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per MTEB task, split and subset: read from mteb's result files under ``mteb_dir``
    (``results/<model>/<revision>/<Task>.json``, any task type), restricted to the revision ``results["mteb"]``
    names; a task recorded in ``results.json`` without a file gives one row from its main score."""
    summary = mteb_tasks(results)
    run = results.get("mteb") if isinstance(results.get("mteb"), dict) else {}
    revision = run.get("revision") if isinstance(run.get("revision"), str) else None
    rows: list[dict[str, Any]] = []
    files = sorted(Path(mteb_dir).glob("results/*/*/*.json")) if mteb_dir else []
    for path in files:
        if path.name == "model_meta.json" or (revision and path.parent.name != revision):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
            continue
        name = str(data.get("task_name") or path.stem)
        info = summary.get(name, {})
        for split, subsets in data["scores"].items():
            for sub in subsets if isinstance(subsets, list) else []:
                if isinstance(sub, dict) and isinstance(sub.get("main_score"), (int, float)):
                    rows.append(_mteb_row(name, info, split, str(sub.get("hf_subset", "default")), sub["main_score"],
                                          data.get("dataset_revision"), data.get("evaluation_time")))
    seen = {row["task"] for row in rows}
    for name, info in summary.items():
        if name not in seen:
            rows.append(_mteb_row(name, info, str(info.get("split", "test")), "default", info["main_score"],
                                  (info.get("dataset") or {}).get("revision"), info.get("evaluation_time")))
    return rows


def _mteb_row(task: str, info: dict[str, Any], split: str, subset: str, score: float, revision: Any,
              seconds: Any) -> dict[str, Any]:
    dataset = info.get("dataset") if isinstance(info.get("dataset"), dict) else {}
    return {"task": task, "type": info.get("type") or "mteb", "metric": info.get("main_metric") or "main_score",
            "split": split, "subset": subset, "score": float(score), "dataset": dataset.get("path") or task,
            "revision": revision if isinstance(revision, str) else None, "source": info.get("source"),
            "seconds": seconds if isinstance(seconds, (int, float)) else None}


def mteb_eval_results(rows: list[dict[str, Any]]) -> list[EvalResult]:
    """model-index entries for MTEB rows, as mteb names them: task type, ``MTEB <task>``, the dataset's path,
    revision, subset and split, the task's main metric (× 100, as mteb reports to the Hub)."""
    return [EvalResult(
        task_type=row["type"], task_name=f"MTEB {row['task']}",
        dataset_type=row["dataset"], dataset_name=f"MTEB {row['task']} ({row['subset']})",
        dataset_config=row["subset"], dataset_split=row["split"], dataset_revision=row["revision"],
        metric_type=row["metric"], metric_name=f"{row['metric']} (mteb main score × 100)",
        metric_value=round(100 * row["score"], 2), source_name="MTEB", source_url=MTEB_URL,
    ) for row in rows]


def dev_eval_results(existing: list[EvalResult] | None, results: dict[str, Any]) -> list[EvalResult]:
    """``existing`` with the values of the dev evaluator's entries (dataset type = the dev set's name) taken from
    ``results["dev"]["after"]``, the saved model's scores (sentence-transformers wrote its last evaluation's)."""
    dev = results.get("dev") if isinstance(results.get("dev"), dict) else {}
    after = dev.get("after") if isinstance(dev.get("after"), dict) else {}
    for entry in existing or []:
        value = after.get(entry.metric_type)
        if entry.dataset_type == dev.get("name") and isinstance(value, (int, float)):
            entry.metric_value = value
    return list(existing or [])


def merge_eval_results(existing: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    """``existing`` (e.g. sentence-transformers' evaluator entries) with any entry for the same task, dataset,
    split and metric replaced by its ``new`` value."""
    kept = [old for old in existing or [] if not any(old.is_equal_except_value(n) for n in new)]
    return kept + new


# ---------------------------------------------------------------------------------------------------------
# embedkit's sections

SECTIONS = jinja2.Template("""\
## How embedkit made this model

{% if overrides %}
Recipe description (the recipe file's; this run overrode {{ overrides | map('tojson') | join(', ') }}, so the
recipe as executed below is what ran): *{{ description }}*
{% elif description %}
{{ description }}
{% endif %}

Fine-tuned from {{ base }} with **{{ method }}**{% if paper %} ({{ paper }}){% endif %} on {{ training_data }}.
The repository also holds `recipe.yaml` (the resolved recipe) and `results.json` (every recorded score, the
training log, hardware and versions){% if has_mteb %}, and mteb's result files under `mteb/`{% endif %}.

### Evaluation protocol

{% if sts %}
- **STS** (protocol `{{ sts.protocol }}`): {{ sts.description }}
{% endif %}
{% if mteb %}
- **MTEB**: `mteb.evaluate` (mteb {{ mteb_version }}), each task's main score on its evaluation
  split{% if mteb_local %}; {{ mteb_local | join(', ') }} read from local copies of the public data{% endif %}.
  The table gives mteb's 0–1 scale; the `model-index` above gives × 100.
{% endif %}
{% for line in dev_lines %}
{% if loop.first %}- **Checkpoint selection:** {% endif %}{{ line }}
{% endfor %}
{% if not (sts or mteb or ranking or dev_lines) %}
No evaluation was recorded for this run.
{% endif %}
{% if sts %}

### STS (protocol `{{ sts.protocol }}`)

| Task | Spearman | Pearson | Pairs |
|:--|--:|--:|--:|
{% for row in sts.rows %}
| {{ row.name }}{% if row.seen %} *{% endif %} | {{ row.spearman }} | {{ row.pearson }} | {{ row.n }} |
{% endfor %}
{% if sts.avg %}
| **Avg** | **{{ sts.avg }}** | | |
{% endif %}
{% if sts.seen %}
| **Avg, tasks not seen in training** | **{{ sts.avg_clean }}** | | |

\\* Seen in training: {{ sts.seen_text }}
of the scored pairs stand, verbatim, in the training data (measured, see *Overlap* below): those scores are
partly training scores.
{% endif %}
{% if sts.geometry %}

Geometry on STS-B test (unit vectors; Wang & Isola 2020, Wang & Liu 2021): alignment {{ sts.geometry.alignment }}
(pairs scored > 4; lower is better), uniformity {{ sts.geometry.uniformity }} (lower: more uniform), tolerance
{{ sts.geometry.tolerance }} (mean cosine of pairs scored ≥ 4; higher: similar sentences stay close), anisotropy
{{ sts.geometry.anisotropy }}.
{% endif %}
{% if sts.deviations %}

Deviations from the protocol:

{% for d in sts.deviations %}
- {{ d }}
{% endfor %}
{% endif %}
{% if sts.files %}

Evaluation data: {{ sts.origin }}. SHA-256 of each file read:

| File | SHA-256 |
|:--|:--|
{% for f in sts.files %}
| `{{ f.path }}` | `{{ f.digest }}` |
{% endfor %}
{% endif %}
{% endif %}
{% if mteb %}

### MTEB

| Task | Main score | Metric | Type | Split | Subset |
|:--|--:|:--|:--|:--|:--|
{% for row in mteb %}
| {{ row.task }} | {{ '%.4f' % row.score }} | {{ row.metric }} | {{ row.type }} | {{ row.split }} | {{ row.subset }} |
{% endfor %}
{% endif %}
{% if overlap %}

### Overlap between the training data and the evaluation sets

Measured by embedkit (`embedkit data overlap`): the share of each set's units (scored pairs, or queries) and of
its texts found in the training rows, exactly and after normalising case, punctuation and white space. Listed:
the sets above 1% and the set that selected the checkpoint.

| Set | Role | Unit | Seen % | Normalised % | Texts % |
|:--|:--|:--|--:|--:|--:|
{% for row in overlap %}
| {{ row.name }} | {{ row.role }} | {{ row.unit }} | {{ row.pct }} | {{ row.norm }} | {{ row.texts }} |
{% endfor %}
{% endif %}
{% for table in ranking %}

### {{ table.title }}

| Set | {{ table.heads | join(' | ') }} |
|:--|{% for h in table.heads %}--:|{% endfor %}

{% for row in table.rows %}
| {{ row | join(' | ') }} |
{% endfor %}
{% endfor %}

### Training

{% for line in training %}
{{ line }}
{% endfor %}
{% if recipe_yaml %}

### Recipe as executed

The resolved recipe (every default filled in{% if overrides %}, the command-line overrides applied{% endif %});
`embedkit train recipe.yaml` reruns it.

```yaml
{{ recipe_yaml }}
```
{% endif %}
{% if versions %}

### Package versions

| Package | Version |
|:--|:--|
{% for k, v in versions.items() %}
| {{ k }} | {{ v }} |
{% endfor %}
{% endif %}
{% if citation %}

### Citation of the method

```bibtex
{{ citation }}
```
{% endif %}
""", trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def _sts_context(results: dict[str, Any]) -> dict[str, Any] | None:
    protocol, tasks = sts_tasks(results)
    if not tasks:
        return None
    sts = results["sts"]
    seen = _seen_in_training(results)
    description = PROTOCOLS.get(protocol or "") or (f"setting: {sts['setting']}." if sts.get("setting") else
                                                    "as recorded in results.json.")
    data = sts.get("data") if isinstance(sts.get("data"), dict) else {}
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    folder = str(data.get("dir") or "")
    base = folder or str(data.get("source") or "")
    rows = []
    for path, digest in files.items():
        inside = base and str(path).startswith(base.rstrip("/") + "/")
        rows.append({"path": os.path.relpath(path, base) if inside else path, "digest": digest})
    origin = (f"{data['source']} files" if data.get("source") else "files") + (f" under `{folder}`" if folder else "")
    return {
        "protocol": protocol or "unspecified", "description": description,
        "rows": [{"name": n, "spearman": _fmt(s.get("spearman")), "pearson": _fmt(s.get("pearson")),
                  "n": s.get("n", "–"), "seen": n in seen} for n, s in tasks.items()],
        "avg": _fmt(sts["avg"]) if isinstance(sts.get("avg"), (int, float)) else None,
        "seen": seen, "avg_clean": _fmt(sts.get("avg_clean")),
        "seen_text": ", ".join(f"{t} {pct:.1f}%" for t, pct in seen.items()),
        "deviations": [d for d in sts.get("deviations") or [] if isinstance(d, str)],
        "files": rows, "origin": origin, "geometry": _geometry_context(sts.get("geometry")),
    }


def _geometry_context(geo: Any) -> dict[str, str] | None:
    """The STS-B geometry numbers (4 decimals; a missing one as –), or ``None`` when the run recorded none."""
    if not isinstance(geo, dict):
        return None
    keys = ("alignment", "uniformity", "tolerance", "anisotropy")
    return {k: f"{geo[k]:.4f}" if isinstance(geo.get(k), (int, float)) else "–" for k in keys}


def _ranking_context(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The final reranking / retrieval evaluation (``eval.rerank``, ``eval.retrieval``), × 100."""
    tables = []
    for kind, metrics in (("rerank", ("map", "mrr@10")), ("retrieval", ("ndcg@10", "recall@100", "mrr@10"))):
        sets = results.get(kind)
        if isinstance(sets, dict) and sets:
            tables.append({"title": "Reranking" if kind == "rerank" else "Retrieval",
                           "heads": [METRIC_LABELS[m] for m in metrics],
                           "rows": [[name, *(_fmt(v.get(m)) for m in metrics)] for name, v in sets.items()
                                    if isinstance(v, dict)]})
    return tables


def _training_lines(results: dict[str, Any], method: str, paper: str | None) -> list[str]:
    recipe = results.get("recipe") or {}
    train = results.get("train") if isinstance(results.get("train"), dict) else {}
    lines = [f"- **Method:** `{method}`" + (f" — {paper}" if paper else "")]
    params = {k: v for k, v in (recipe.get("method") or {}).items() if k != "name"}
    if params:
        lines.append("- **Method parameters:** " + ", ".join(f"`{k}={v}`" for k, v in params.items()))
    lora = (recipe.get("model") or {}).get("lora")
    if isinstance(lora, dict):
        lines.append(_lora_line(lora, train.get("trainable_parameters")))
    experts = (recipe.get("model") or {}).get("experts")
    if isinstance(experts, dict):
        lines.append(_experts_line(experts, results.get("experts")))
    replay = ((recipe.get("data") or {}).get("replay"))
    if isinstance(replay, dict):
        lines.append(_replay_line(replay, recipe, train.get("replay")))
    for label, key in (("Steps", "global_step"), ("Precision", "precision"), ("Processes", "world_size")):
        if train.get(key) is not None:
            lines.append(f"- **{label}:** {train[key]}")
    if train.get("global_batch_size") is not None:
        lines.append(f"- **Batch:** {train['global_batch_size']} global = {train.get('per_device_batch_size')} per "
                     f"device × {train.get('world_size', 1)}")
    if train.get("best_checkpoint"):
        lines.append(f"- **Selected checkpoint:** `{Path(str(train['best_checkpoint'])).name}`")
    return lines + [f"- **Hardware:** {results.get('hardware', 'unknown')}",
                    f"- **Time:** {_duration(results.get('seconds'))}"]


def _replay_line(replay: dict[str, Any], recipe: dict[str, Any], record: Any) -> str:
    """Fine-tuning without forgetting (docs/continual.md): what was replayed and what held it to which teacher."""
    terms = (recipe.get("objective") or {}).get("terms") or []
    distill = next((t for t in terms if isinstance(t, dict) and t.get("name") == "distill"), {})
    per_step = f"{record['rows_per_step']} rows a step" if isinstance(record, dict) and "rows_per_step" in record \
        else f"share {replay.get('share')}"
    teacher = distill.get("teacher", "initial")
    teacher = "the starting model, frozen" if teacher == "initial" else f"`{teacher}`, frozen"
    source = record.get("source") if isinstance(record, dict) else None  # what the run read: csv:/… or hub:NAME:split
    if isinstance(source, str) and source.startswith("hub:"):
        name, _, split = source[4:].rpartition(":")
        rows = f"the Hub dataset `{name}` ({split})"
    elif isinstance(source, str) and ":" in source:
        rows = f"`{Path(source.split(':', 1)[1]).name}`"
    else:
        rows = (f"`{Path(str(replay.get('path'))).name}`" if replay.get("path") else
                f"the Hub dataset `{replay.get('hub')}`")
    return (f"- **Replay and distillation (fine-tuning without forgetting, COCONUT):** rows of "
            f"{rows} replayed in every step ({per_step}, share {replay.get('share')} "
            f"of its rows), their embeddings held to {teacher} by `distill` (mode `{distill.get('mode', 'cosine')}`, "
            f"weight {distill.get('weight', 1.0)}); the method's own loss trains on the new rows only")


def render_sections(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """embedkit's sections of the card (Markdown), from ``results.json`` and the MTEB rows."""
    recipe = results.get("recipe") or {}
    method_info = results.get("method") or {}
    method = method_info.get("name") or (recipe.get("method") or {}).get("name") or "unknown"
    base = (recipe.get("model") or {}).get("name")
    base_id = hub_model_id(base)
    run = results.get("mteb") if isinstance(results.get("mteb"), dict) else {}
    versions = results.get("versions") if isinstance(results.get("versions"), dict) else {}
    text = SECTIONS.render(
        description=recipe.get("description"),
        overrides=[o for o in results.get("overrides") or [] if isinstance(o, str)],
        base=f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"the local model `{base}`",
        method=method, paper=method_info.get("paper"), training_data=_training_data(recipe),
        has_mteb=bool(rows) and bool(run.get("results_dir")),
        sts=_sts_context(results), mteb=rows, ranking=_ranking_context(results), overlap=overlap_rows(results),
        mteb_version=(run.get("versions") or {}).get("mteb") or versions.get("mteb", "?"),
        mteb_local=sorted({r["task"] for r in rows if r.get("source") == "local"}),
        dev_lines=[line for line in _dev_section(results)[2:] if line],
        training=_training_lines(results, method, method_info.get("paper")),
        recipe_yaml=yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip() if recipe else None,
        versions=versions, citation=str(method_info["citation"]).strip() if method_info.get("citation") else None,
    )
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# ---------------------------------------------------------------------------------------------------------
# The card


def update_card(text: str, results: dict[str, Any], *, repo_id: str | None = None,
                mteb_dir: str | Path | None = None) -> str:
    """``text`` (sentence-transformers' card) with embedkit's metadata and sections; home paths redacted.

    Idempotent: the sections sit between :data:`BEGIN` and :data:`END` and are replaced on a second call;
    model-index entries are replaced by task, dataset, split and metric.
    """
    card = ModelCard(text, ignore_metadata_errors=True)
    data = card.data
    recipe = results.get("recipe") or {}
    method = (results.get("method") or {}).get("name") or (recipe.get("method") or {}).get("name")
    data.library_name = "sentence-transformers"
    data.pipeline_tag = data.pipeline_tag or "sentence-similarity"
    tags = list(data.tags or [])
    for tag in (*TAGS, method):
        if isinstance(tag, str) and tag and tag not in tags:
            tags.append(tag)
    data.tags = tags
    base_id = hub_model_id((recipe.get("model") or {}).get("name"))
    if base_id and not data.base_model:
        data.base_model = base_id
    license_ = (recipe.get("output") or {}).get("license")
    if license_ and not data.license:
        data.license = license_
    ids = [i["id"] for i in train_dataset_info(recipe) if i.get("id")]
    if ids and not data.datasets:
        data.datasets = ids
    rows = mteb_rows(results, mteb_dir)
    data.eval_results = merge_eval_results(dev_eval_results(data.eval_results, results),
                                           eval_results(results) + mteb_eval_results(rows)) or None
    if data.eval_results:  # the model-index's name; huggingface_hub writes it inside model-index only
        data.model_name = repo_id.split("/")[-1] if repo_id else data.model_name or "embedkit model"
    else:
        data.model_name = None

    body = card.text
    if BEGIN in body and END in body:
        body = body[:body.index(BEGIN)].rstrip() + "\n\n" + body[body.index(END) + len(END):].lstrip()
    if repo_id:
        body = body.replace(f'"{ST_PLACEHOLDER_ID}"', f'"{repo_id}"')
        body = re.sub(r"^# .*$", f"# {repo_id.split('/')[-1]}", body, count=1, flags=re.M)
    experts = (recipe.get("model") or {}).get("experts")
    if isinstance(experts, dict) and experts.get("domains"):
        body = _experts_usage(body, [str(d) for d in experts["domains"]], experts.get("default"))
    block = f"{BEGIN}\n{render_sections(results, rows)}{END}\n"
    for heading in ("\n## Training Details", "\n## Citation"):
        if heading in body:
            at = body.index(heading)
            body = body[:at].rstrip() + "\n\n" + block + body[at:]
            break
    else:
        body = body.rstrip() + "\n\n" + block
    card.text = body
    return redact_home(str(card))


def build_card(results: dict[str, Any], repo_id: str | None = None, *, st_card: str | None = None,
               mteb_dir: str | Path | None = None) -> str:
    """The full ``README.md``: ``st_card`` (sentence-transformers' card; a bare one when ``None``) updated by
    :func:`update_card`."""
    title = (repo_id or "embedkit model").split("/")[-1]
    return update_card(st_card or BARE_CARD.format(title=title), results, repo_id=repo_id, mteb_dir=mteb_dir)


def write_card(folder: str | Path, results: dict[str, Any], mteb_dir: str | Path | None = None) -> Path:
    """Rewrite ``folder/README.md`` (the card sentence-transformers just saved) with embedkit's part, atomically."""
    readme = Path(folder) / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else None
    card = build_card(results, None, st_card=text, mteb_dir=mteb_dir)
    with atomic_path(readme) as tmp:
        tmp.write_text(card, encoding="utf-8")
    return readme


# ---------------------------------------------------------------------------------------------------------
# Formatting helpers


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "unknown"
    if seconds < 60:
        return f"{seconds} s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    parts = [f"{h} h" if h else "", f"{m} min" if m else "", f"{sec} s" if sec else ""]
    return " ".join(p for p in parts if p) + f" ({seconds} s)"


def _training_data(recipe: dict[str, Any]) -> str:
    train = (recipe.get("data") or {}).get("train") or {}
    if isinstance(train, list):  # a multi-task recipe: each source, its method and weight
        return "; ".join(f"`{s.get('name')}` ({(s.get('method') or {}).get('name')}, weight {s.get('weight', 1.0)}): "
                         + _training_data({"data": {"train": s}}) for s in train if isinstance(s, dict))
    hub = f"[{train['hub']}](https://huggingface.co/datasets/{train['hub']})" if train.get("hub") else None
    if train.get("path"):  # a local file is read when it exists; the hub entry only stands in for a missing one
        what = f"the local file `{Path(train['path']).name}`" + (f" (its Hub copy: {hub})" if hub else "")
    elif hub:
        what = f"the Hub dataset {hub}"
        what += f" (split `{train.get('split', 'train')}`" + (f", config `{train['config']}`" if train.get("config")
                                                                else "") + ")"
    else:
        what = "unspecified data"
    if train.get("columns"):
        what += f", columns {', '.join(f'`{c}`' for c in train['columns'])}"
    if train.get("max_samples"):
        what += f", first {train['max_samples']} rows"
    return what


def _dev_section(results: dict[str, Any]) -> list[str]:
    dev = results.get("dev") if isinstance(results.get("dev"), dict) else {}
    after, before = dev.get("after"), dev.get("before")
    if not isinstance(after, dict):
        return []
    kind, metric = dev.get("kind", "stsb"), dev.get("metric", "spearman")
    title = "STS-B dev" if kind == "stsb" else f"{dev.get('name', kind)} ({kind} dev set)"
    label = METRIC_LABELS.get(metric, metric)
    line = (f"{title} (the selection set: used to select the checkpoint, on {label}; not a test score): {label} "
            f"{_fmt(after.get(metric))} after training")
    if kind == "stsb" and metric == "spearman":  # the line STS-B cards have always carried
        line = (f"STS-B dev (the selection set: used to select the checkpoint; not a test score): Spearman "
                f"{_fmt(after.get('spearman'))} after training")
    if isinstance(before, dict):
        line += f", {_fmt(before.get(metric))} before"
    lines = [f"### {title}", "", line + "."]
    others = [f"{METRIC_LABELS[m]} {_fmt(after[m])}" for m in METRIC_LABELS
              if m != metric and m in after and kind != "stsb"]
    if others:
        lines += ["", "Its other metrics after training: " + ", ".join(others) + "."]
    return lines + [""]


USAGE = "### Direct Usage (Sentence Transformers)"
SNIPPET_TEXTS = ("'The weather is lovely today.'", "\"It's so sunny outside!\"", "'He drove to the stadium.'")


def _experts_usage(body: str, domains: list[str], default: Any) -> str:
    """The card's usage code for an experts model: ``encode(..., task=DOMAIN)``.

    sentence-transformers takes any ``Router`` for a query/document model and writes ``encode_query`` /
    ``encode_document``, which an experts model (routes named after domains) refuses. The block keeps its model
    line and example texts; idempotent."""
    at = body.find(USAGE)
    start = body.find("```python\n", at) if at >= 0 else -1
    end = body.find("\n```", start + 10) if start >= 0 else -1
    if end < 0:
        return body
    code = body[start + 10:end]
    model_line = next((line for line in code.splitlines() if line.startswith("model = ")),
                      f'model = SentenceTransformer("{ST_PLACEHOLDER_ID}")')
    texts = re.findall(r"^    ('.*'|\".*\"),$", code, flags=re.M)[:3] or list(SNIPPET_TEXTS)
    fallback = (f"# Without task=, encode uses the default expert ({default!r})." if default else
                "# encode without task= is refused: this model has no default expert.")
    lines = ["from sentence_transformers import SentenceTransformer", "", "# Download from the 🤗 Hub", model_line,
             f"# One expert per domain ({', '.join(domains)}): name the texts' domain with task=.", fallback,
             "sentences = [", *(f"    {t}," for t in texts), "]",
             f'embeddings = model.encode(sentences, task="{domains[0]}")', "print(embeddings.shape)", "",
             "# Get the similarity scores for the embeddings",
             "similarities = model.similarity(embeddings, embeddings)", "print(similarities.shape)",
             f"# [{len(texts)}, {len(texts)}]"]
    return body[:start + 10] + "\n".join(lines) + body[end:]


def _experts_line(experts: dict[str, Any], record: Any) -> str:
    """The card's line on domain experts: what the model is and how to route it (docs/experts.md)."""
    domains = [str(d) for d in experts.get("domains") or []]
    layers = experts.get("layers")
    where = "every layer" if layers == "all" else "layers " + ", ".join(map(str, layers or []))
    line = (f"- **Experts:** a {len(domains)}-expert model (Hallee et al. 2024, enforced routing): the "
            f"feed-forward blocks of {where} have one copy per domain ({', '.join(f'`{d}`' for d in domains)}), "
            "each trained only on its own domain's batches; the rest is shared. The repository holds one full "
            "encoder per domain (a sentence-transformers `Router`); route by domain: "
            f"`model.encode(texts, task=\"{domains[0] if domains else 'NAME'}\")`")
    if isinstance(record, dict) and isinstance(record.get("unique_parameters"), int):
        line += (f"; {record['unique_parameters']:,} unique parameters, {record.get('parameters_per_route'):,} per "
                 "route")
    default = experts.get("default")
    return line + (f"; without a task, `{default}`" if default else "; encode without a task is refused")


def _lora_line(lora: dict[str, Any], trainable: Any) -> str:
    """The card's line on LoRA: rank, alpha, targets, and whether the repository holds an adapter."""
    targets = lora.get("target_modules")
    targets = ", ".join(f"`{t}`" for t in targets) if isinstance(targets, list) else f"`{targets}`"
    line = (f"- **LoRA:** r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
            f"targets {targets}")
    if isinstance(trainable, int):
        line += f"; {trainable:,} trainable parameters"
    if lora.get("merge"):
        return line + "; merged into full weights (loads without peft)"
    return line + "; saved as a PEFT adapter on the base model (loading needs `pip install peft`)"


