"""The model card (``README.md``) published with a trained model.

Built from the training output folder: ``results.json`` (recipe, method and citation, scores, hardware, time,
versions) and the sentence-transformers card that ``save_pretrained`` wrote (its widget and tags). The YAML
front matter follows the Hub schema (``library_name``, ``pipeline_tag``, ``tags``, ``base_model``, ``datasets``,
``license``, ``model-index`` with one result per STS task); the body says what the model is, how to use it,
how it was made and how it scores, under the protocol it was scored with.

Pure functions, no network. Every text made here goes through :func:`redact_home`, so a path under the user's
home folder is published as ``~/...``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from embedkit.errors import EmbedkitError
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
# Front-matter keys of the sentence-transformers card that embedkit keeps (the rest it writes itself). Its
# ``widget`` is left out: sentence-transformers fills it with training sentences, which may be private.
ST_KEPT_KEYS = ("language",)
WIDGET = [{
    "source_sentence": "A man is playing a guitar.",
    "sentences": ["Someone is playing an instrument.", "A woman is slicing an onion.", "The sky is blue today."],
}]


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


def eval_results(results: dict[str, Any]) -> list:
    """The Hub ``EvalResult`` list: one per STS task, metric Spearman (× 100), the protocol named."""

    protocol, tasks = sts_tasks(results)
    protocol = protocol or "unspecified"
    out = []
    for name, scores in tasks.items():
        args: dict[str, Any] = {"protocol": protocol}
        if isinstance(scores.get("n"), int):
            args["pairs"] = scores["n"]
        out.append(EvalResult(
            task_type="sentence-similarity",
            task_name=f"Semantic Textual Similarity ({protocol})",
            dataset_type=name,
            dataset_name=name,
            dataset_split="test",
            dataset_args=args,
            metric_type="spearman",
            metric_name=f"Spearman correlation of cosine similarity × 100 ({protocol})",
            metric_config=protocol,
            metric_value=round(float(scores["spearman"]), 2),
        ))
    return out


def card_metadata(results: dict[str, Any], repo_id: str, st_front_matter: dict[str, Any] | None = None,
                  st_tags: list[str] | None = None) -> dict[str, Any]:
    """The YAML front matter as a dict, in the Hub's model-card schema."""

    recipe = results.get("recipe") or {}
    method = (results.get("method") or {}).get("name") or (recipe.get("method") or {}).get("name")
    st_front_matter = st_front_matter or {}
    tags: list[str] = []
    for tag in [*TAGS, *(st_tags or []), *(st_front_matter.get("tags") or []), method]:
        if isinstance(tag, str) and tag and tag not in tags:
            tags.append(tag)
    train = (recipe.get("data") or {}).get("train") or {}
    extra = {k: st_front_matter[k] for k in ST_KEPT_KEYS if st_front_matter.get(k)}
    data = ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=tags,
        base_model=hub_model_id((recipe.get("model") or {}).get("name")),
        datasets=[s["hub"] for s in (train if isinstance(train, list) else [train]) if s.get("hub")] or None,
        license=(recipe.get("output") or {}).get("license"),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results) or None,
        widget=WIDGET,
        **extra,
    )
    return data.to_dict()


# ---------------------------------------------------------------------------------------------------------
# Body


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
    if train.get("hub"):
        what = f"the Hub dataset [{train['hub']}](https://huggingface.co/datasets/{train['hub']})"
        what += f" (split `{train.get('split', 'train')}`" + (f", config `{train['config']}`" if train.get("config")
                                                                else "") + ")"
    elif train.get("path"):
        what = f"the local file `{Path(train['path']).name}`"
    else:
        what = "unspecified data"
    if train.get("columns"):
        what += f", columns {', '.join(f'`{c}`' for c in train['columns'])}"
    if train.get("max_samples"):
        what += f", first {train['max_samples']} rows"
    return what


def _sts_section(results: dict[str, Any]) -> list[str]:
    protocol, tasks = sts_tasks(results)
    if not tasks:
        return []
    sts = results["sts"]
    lines = [f"### STS (protocol `{protocol or 'unspecified'}`)", ""]
    if protocol in PROTOCOLS:
        lines += [PROTOCOLS[protocol], ""]
    elif sts.get("setting"):
        lines += [f"Setting: {sts['setting']}.", ""]
    lines += ["| Task | Spearman | Pearson | Pairs |", "|:--|--:|--:|--:|"]
    for name, scores in tasks.items():
        lines.append(f"| {name} | {_fmt(scores.get('spearman'))} | {_fmt(scores.get('pearson'))} | "
                     f"{scores.get('n', '–')} |")
    if isinstance(sts.get("avg"), (int, float)):
        lines.append(f"| **Avg** | **{_fmt(sts['avg'])}** | | |")
    deviations = [d for d in sts.get("deviations") or [] if isinstance(d, str)]
    if deviations:
        lines += ["", "Deviations from the protocol:", ""] + [f"- {d}" for d in deviations]
    data = sts.get("data") if isinstance(sts.get("data"), dict) else {}
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    if data.get("source") or data.get("dir") or files:
        folder = str(data.get("dir") or "")
        origin = f"{data['source']} files" if data.get("source") else "files"
        where = f" under `{folder}`" if folder else ""
        lines += ["", f"Evaluation data: {origin}{where}. SHA-256 of each file read:", "", "| File | SHA-256 |",
                  "|:--|:--|"]
        for path, digest in files.items():
            base = folder or str(data.get("source") or "")
            inside = base and str(path).startswith(base.rstrip("/") + "/")
            lines.append(f"| `{os.path.relpath(path, base) if inside else path}` | `{digest}` |")
    return lines + [""]


def _mteb_section(results: dict[str, Any]) -> list[str]:
    tasks = mteb_tasks(results)
    if not tasks:
        return []
    lines = ["### MTEB", "", "Main score of each task as computed by mteb (0–1 scale).", "",
             "| Task | Main score | Details |", "|:--|--:|:--|"]
    for name, value in tasks.items():
        details = ", ".join(
            f"{k}: {_fmt(v, 4) if isinstance(v, float) else v}" for k, v in value.items()
            if k != "main_score" and isinstance(v, (str, int, float)) and not isinstance(v, bool)
        )
        lines.append(f"| {name} | {_fmt(value['main_score'], 4)} | {details} |")
    return lines + [""]


# The dev metric's name in the card (a results.json from before data.dev.kind existed is STS-B, Spearman).
def _dev_section(results: dict[str, Any]) -> list[str]:
    dev = results.get("dev") if isinstance(results.get("dev"), dict) else {}
    after, before = dev.get("after"), dev.get("before")
    if not isinstance(after, dict):
        return []
    kind, metric = dev.get("kind", "stsb"), dev.get("metric", "spearman")
    title = "STS-B dev" if kind == "stsb" else f"{dev.get('name', kind)} ({kind} dev set)"
    label = METRIC_LABELS.get(metric, metric)
    line = f"{title} (used to select the checkpoint, on {label}): {label} {_fmt(after.get(metric))} after training"
    if kind == "stsb" and metric == "spearman":  # the line STS-B cards have always carried
        line = f"STS-B dev (used to select the checkpoint): Spearman {_fmt(after.get('spearman'))} after training"
    if isinstance(before, dict):
        line += f", {_fmt(before.get(metric))} before"
    lines = [f"### {title}", "", line + "."]
    others = [f"{METRIC_LABELS[m]} {_fmt(after[m])}" for m in METRIC_LABELS
              if m != metric and m in after and kind != "stsb"]
    if others:
        lines += ["", "Its other metrics after training: " + ", ".join(others) + "."]
    return lines + [""]


def _ranking_section(results: dict[str, Any]) -> list[str]:
    """The final reranking / retrieval evaluation (``eval.rerank``, ``eval.retrieval``), × 100."""
    lines: list[str] = []
    for kind, metrics in (("rerank", ("map", "mrr@10")), ("retrieval", ("ndcg@10", "recall@100", "mrr@10"))):
        sets = results.get(kind)
        if not isinstance(sets, dict) or not sets:
            continue
        heads = [METRIC_LABELS[m] for m in metrics]
        lines += [f"### {'Reranking' if kind == 'rerank' else 'Retrieval'}", "",
                  "| Set | " + " | ".join(heads) + " |", "|:--|" + "--:|" * len(heads)]
        lines += [f"| {name} | " + " | ".join(_fmt(v.get(m)) for m in metrics) + " |"
                  for name, v in sets.items() if isinstance(v, dict)]
        lines.append("")
    return lines


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


def build_card(results: dict[str, Any], repo_id: str, *, model_info: dict[str, Any] | None = None,
               st_front_matter: dict[str, Any] | None = None, st_tags: list[str] | None = None) -> str:
    """The full ``README.md`` text: Hub front matter and the body, with home paths redacted.

    ``model_info`` (optional) carries ``dimension``, ``max_seq_length``, ``similarity`` and ``architecture``
    read from the loaded model.
    """
    recipe = results.get("recipe") or {}
    method = results.get("method") or {}
    method_name = method.get("name") or (recipe.get("method") or {}).get("name") or "unknown"
    info = model_info or {}
    meta = card_metadata(results, repo_id, st_front_matter, st_tags)
    base = (recipe.get("model") or {}).get("name")
    base_id = hub_model_id(base)
    base_text = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"the local model `{base}`"

    body: list[str] = [f"# {repo_id.split('/')[-1]}", ""]
    if recipe.get("description"):
        body += [str(recipe["description"]), ""]
    shape = []
    if info.get("dimension"):
        shape.append(f"maps sentences to a {info['dimension']}-dimensional dense vector space")
    if info.get("similarity"):
        shape.append(f"compares them with {info['similarity']} similarity")
    if info.get("max_seq_length"):
        shape.append(f"reads up to {info['max_seq_length']} tokens")
    body += [
        f"A [sentence-transformers](https://www.sbert.net) model fine-tuned from {base_text} with "
        f"**{method_name}**" + (f" ({method['paper']})" if method.get("paper") else "")
        + f" on {_training_data(recipe)}, with embedkit. "
        + (f"It {', '.join(shape)}." if shape else ""),
        "",
        "## Usage",
        "",
        "```bash",
        "pip install -U sentence-transformers",
        "```",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{repo_id}")',
        'sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The sky is blue."]',
        "embeddings = model.encode(sentences)",
        "similarities = model.similarity(embeddings, embeddings)",
        "print(similarities)",
        "```",
        "",
    ]
    body += ["The repository also holds `recipe.yaml` (the resolved recipe) and `results.json` (every recorded "
             "score, the training log, hardware and versions).", ""]
    evaluation = _sts_section(results) + _mteb_section(results) + _ranking_section(results) + _dev_section(results)
    body += ["## Evaluation", ""] + (evaluation or ["No evaluation was recorded for this run.", ""])

    train = results.get("train") if isinstance(results.get("train"), dict) else {}
    body += ["## Training", "", f"- **Method:** `{method_name}`" + (f" — {method['paper']}" if method.get("paper")
                                                                       else "")]
    params = {k: v for k, v in (recipe.get("method") or {}).items() if k != "name"}
    if params:
        body.append("- **Method parameters:** " + ", ".join(f"`{k}={v}`" for k, v in params.items()))
    lora = (recipe.get("model") or {}).get("lora")
    if isinstance(lora, dict):
        body.append(_lora_line(lora, train.get("trainable_parameters")))
    for label, key in (("Steps", "global_step"), ("Precision", "precision"), ("Processes", "world_size")):
        if train.get(key) is not None:
            body.append(f"- **{label}:** {train[key]}")
    if train.get("global_batch_size") is not None:
        body.append(f"- **Batch:** {train['global_batch_size']} global = {train.get('per_device_batch_size')} per "
                    f"device × {train.get('world_size', 1)}")
    if train.get("best_checkpoint"):
        body.append(f"- **Selected checkpoint:** `{Path(str(train['best_checkpoint'])).name}`")
    body += [f"- **Hardware:** {results.get('hardware', 'unknown')}",
             f"- **Time:** {_duration(results.get('seconds'))}", ""]
    if recipe:
        body += ["### Recipe", "", "The resolved recipe (every default filled in); `embedkit train` reruns it.", "",
                 "```yaml", yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    versions = results.get("versions") if isinstance(results.get("versions"), dict) else {}
    if versions:
        body += ["### Package versions", "", "| Package | Version |", "|:--|:--|"]
        body += [f"| {k} | {v} |" for k, v in versions.items()] + [""]
    if info.get("architecture"):
        body += ["### Architecture", "", "```", str(info["architecture"]).rstrip(), "```", ""]
    body += ["## Citation", ""]
    if method.get("citation"):
        body += [f"The method (`{method_name}`):", "", "```bibtex", str(method["citation"]).rstrip(), "```", ""]
    body += ["Sentence-Transformers:", "", "```bibtex", SBERT_CITATION, "```", ""]

    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return redact_home(f"---\n{front}---\n\n" + "\n".join(body))


SBERT_CITATION = """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""


def model_info(model: Any) -> dict[str, Any]:
    """Dimension, sequence length, similarity and architecture of a loaded ``SentenceTransformer``."""
    dim_fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return {
        "dimension": dim_fn(),
        "max_seq_length": getattr(model, "max_seq_length", None),
        "similarity": getattr(model, "similarity_fn_name", None),
        "architecture": repr(model),
    }
