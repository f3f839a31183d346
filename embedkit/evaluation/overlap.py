"""Training/evaluation overlap, measured: how much of an evaluation set a run has already seen.

STS-B's train split was built from the STS 2012–2017 tasks, so a model trained on it has seen, verbatim, a
third of the STS12–16 test pairs; MSRP pairs sit inside STS12. A score on such a task is partly a training score.
embedkit knows its training rows and every evaluation file, so it measures this instead of trusting a declared
list (sentence-transformers' cards and mteb's ``training_datasets`` rely on what the author declares).

Units, per evaluation set:

* **pairs** (STS tasks, STS-B dev, SICK): a scored pair ``(s1, s2)`` counts as seen when the same two texts, in
  either order, stand together in one training row (any two text columns of it: anchor/positive,
  anchor/negative, sentence1/sentence2 ...).
* **queries** (reranking files, BEIR folders): a query counts as seen when its text is a training text
  (``queries_pct``), and a (query, relevant answer) pair as seen as for pairs (``pairs_pct``).
* **texts** (every set): the share of the set's distinct texts that appear anywhere in the training rows.

Each is counted twice: exactly, and after normalisation (NFKC, case-folded, punctuation removed, white space
collapsed), so ``"A man plays."`` and ``"a man plays"`` match. Texts are hashed (64-bit BLAKE2b) into sets. A
run's training rows are walked a chunk at a time and only the texts and pairs that some evaluation set holds are
kept, so memory is that of the evaluation sets whatever the training size; what was kept is stored beside a cached
training file (:mod:`embedkit.data.cache`), and the next run over the same rows and sets reads it instead.
A set is *flagged* when more than :data:`FLAG_PCT` percent of its units (normalised) were seen; the STS table then
also reports the average over clean tasks.

Nothing here loads a model or imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit import paths
from embedkit.data.classification import read_classification
from embedkit.data.ranking import RerankSet, read_rerank
from embedkit.data.sources import read_corpus, read_local, read_replay
from embedkit.data.sts import read_stsb
from embedkit.errors import EmbedkitError
from embedkit.recipe import RECIPES_DIR
from embedkit.validate import load_recipe_with_data, replay_file

FLAG_PCT = 1.0  # a set with more than this percent of its units seen in training is marked
STS_SUITE = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R")


@functools.cache
def _punctuation() -> dict[int, None]:
    """Every Unicode punctuation code point, for str.translate (C speed; a per-character Python loop is ~20×
    slower on a million rows). Built on first use (0.2 s), not at import."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


@functools.cache
def _ascii_tables() -> tuple[bytes, bytes]:
    """For an ASCII text, :func:`normalize` in one ``bytes.translate``: upper case to lower, every character
    ``str.split`` splits on to a space (``\\x1c``-``\\x1f`` too), punctuation deleted."""
    table = bytearray(range(256))
    for c in range(128):
        if chr(c).isspace():
            table[c] = 32
        elif chr(c).isupper():
            table[c] = ord(chr(c).lower())
    punctuation = bytes(c for c in range(128) if unicodedata.category(chr(c)).startswith("P"))
    return bytes(table), punctuation


def normalize(text: str) -> str:
    """``text`` for the normalised count: NFKC, case-folded, punctuation removed, white space collapsed."""
    if text.isascii():  # NFKC leaves ASCII as is and case-folds it as lower(): the same result, ~3x faster
        return b" ".join(text.encode("ascii").translate(*_ascii_tables()).split()).decode("ascii")
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_punctuation()).split())


def text_hash(text: str) -> int:
    """A stable 64-bit hash of a text (the same in every process and run, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def pair_key(a: int, b: int) -> tuple[int, int]:
    """An unordered pair of text hashes."""
    return (a, b) if a <= b else (b, a)


@dataclass
class TrainIndex:
    """Hashes of every training text and of every pair of texts that share a row, exact and normalised."""

    texts: set[int] = field(default_factory=set)
    texts_norm: set[int] = field(default_factory=set)
    pairs: set[tuple[int, int]] = field(default_factory=set)
    pairs_norm: set[tuple[int, int]] = field(default_factory=set)
    rows: int = 0
    sources: list[str] = field(default_factory=list)
    # Only what is in ``keep`` is kept (the texts and pairs of the evaluation sets to measure): :func:`measure` asks
    # about nothing else, so the counts are the same and the index stays the size of the evaluation sets, not of
    # the training data; and a training text is hashed only when it is one of them.
    keep: EvalTexts | None = None

    def add_rows(self, columns: Mapping[str, Sequence[Any]], source: str) -> None:
        """Add a table of training rows: its text columns (strings) count; scores and labels do not."""
        if self._add_chunk(columns):
            self.sources.append(source)

    def add_data(self, data: Any, source: str) -> None:
        """Add a :class:`~embedkit.data.sources.TrainData` a chunk at a time (memory: one chunk and the index);
        the part of the index kept for the rows of a cache entry is stored beside it and read back next time."""
        stored = data.derived_path(f"overlap-{self.keep.digest()}.json") if self.keep is not None else None
        if stored is not None and stored.is_file():
            try:
                self._merge(json.loads(stored.read_text(encoding="utf-8")), source)
                return
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged record is measured again
        part = TrainIndex(keep=self.keep)
        text = False
        for chunk in data.batches():
            text = part._add_chunk(chunk) or text
        record = {"rows": part.rows, "text": text, **{k: sorted(getattr(part, k)) for k in _SETS}}
        if stored is not None:
            try:
                with paths.atomic_path(stored) as tmp:
                    tmp.write_text(json.dumps(record), encoding="utf-8")
            except OSError:
                pass  # an unwritable cache: measured again next time
        self._merge(record, source)

    def _merge(self, record: Mapping[str, Any], source: str) -> None:
        if not record["text"]:
            return
        self.sources.append(source)
        self.rows += record["rows"]
        self.texts.update(record["texts"])
        self.texts_norm.update(record["texts_norm"])
        self.pairs.update(tuple(p) for p in record["pairs"])
        self.pairs_norm.update(tuple(p) for p in record["pairs_norm"])

    def _add_chunk(self, columns: Mapping[str, Sequence[Any]]) -> bool:
        """Add rows (no source named); whether they had a text column."""
        text_cols = [list(v) for v in columns.values() if v is not None and len(v) and isinstance(v[0], str)]
        if not text_cols:
            return False
        self.rows += len(text_cols[0])
        keep = self.keep
        if keep is not None:
            self._add_kept(text_cols, keep)
            return True
        for row in zip(*text_cols):
            exact = [text_hash(t) for t in row if isinstance(t, str)]
            norm = [text_hash(normalize(t)) for t in row if isinstance(t, str)]
            self.texts.update(exact)
            self.texts_norm.update(norm)
            for (a, b), (c, d) in zip(itertools.combinations(exact, 2), itertools.combinations(norm, 2)):
                self.pairs.add(pair_key(a, b))
                self.pairs_norm.add(pair_key(c, d))
        return True

    def _add_kept(self, text_cols: list[list[Any]], keep: EvalTexts) -> None:
        """:meth:`_add_chunk` keeping what ``keep`` holds: strings are looked up, only a hit is hashed."""
        if len(text_cols) == 1:  # one text a row (a corpus): no pairs
            for t in text_cols[0]:
                if not isinstance(t, str):
                    continue
                if t in keep.texts:
                    self.texts.add(text_hash(t))
                n = normalize(t)
                if n in keep.texts_norm:
                    self.texts_norm.add(text_hash(n))
            return
        for row in zip(*text_cols):
            exact = [t for t in row if isinstance(t, str)]
            norm = [normalize(t) for t in exact]
            self.texts.update(text_hash(t) for t in exact if t in keep.texts)
            self.texts_norm.update(text_hash(t) for t in norm if t in keep.texts_norm)
            for (a, b), (c, d) in zip(itertools.combinations(exact, 2), itertools.combinations(norm, 2)):
                if text_pair(a, b) in keep.pairs:
                    self.pairs.add(pair_key(text_hash(a), text_hash(b)))
                if text_pair(c, d) in keep.pairs_norm:
                    self.pairs_norm.add(pair_key(text_hash(c), text_hash(d)))

    def add_texts(self, texts: Iterable[str], source: str) -> None:
        """Add single texts (a corpus of candidates: they may be trained on, but never as a pair)."""
        self.sources.append(source)
        if self.keep is not None:
            self._add_kept([list(texts)], self.keep)
            return
        for t in texts:
            self.texts.add(text_hash(t))
            self.texts_norm.add(text_hash(normalize(t)))


_SETS = ("texts", "texts_norm", "pairs", "pairs_norm")


def text_pair(a: str, b: str) -> tuple[str, str]:
    """An unordered pair of texts."""
    return (a, b) if a <= b else (b, a)


@dataclass
class EvalTexts:
    """Every text and pair :func:`measure` looks up for some evaluation sets, exact and normalised."""

    texts: set[str] = field(default_factory=set)
    texts_norm: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    pairs_norm: set[tuple[str, str]] = field(default_factory=set)

    def digest(self) -> str:
        """A short hash of the contents (names what was kept of a training set for these sets)."""
        text = json.dumps([sorted(getattr(self, k)) for k in _SETS], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def eval_index(sets: Iterable[EvalSet]) -> EvalTexts:
    """Every text and pair :func:`measure` looks up for ``sets``: a training index need keep nothing else."""
    out = EvalTexts()
    for ev in sets:
        for a, b in ev.pairs:
            out.pairs.add(text_pair(a, b))
            out.pairs_norm.add(text_pair(normalize(a), normalize(b)))
        for t in [*ev.queries, *ev.texts]:
            out.texts.add(t)
            out.texts_norm.add(normalize(t))
    return out


@dataclass
class EvalSet:
    """The units of one evaluation set: scored pairs, queries with their relevant texts, or single texts."""

    name: str
    kind: str  # "pairs" | "queries" | "texts"
    pairs: list[tuple[str, str]] = field(default_factory=list)  # pairs; queries: (query, relevant text)
    queries: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # every text of the set
    role: str = "test"  # "test" (a reported score) | "selection" (data.dev: chose the checkpoint)


def _pct(n: int, total: int) -> float:
    return round(100.0 * n / total, 2) if total else 0.0


def measure(index: TrainIndex, ev: EvalSet) -> dict[str, Any]:
    """Counts and percentages of ``ev``'s units seen in training (see the module docstring)."""
    out: dict[str, Any] = {"kind": ev.kind, "role": ev.role}
    if ev.pairs:
        exact = norm = 0
        for a, b in ev.pairs:
            exact += pair_key(text_hash(a), text_hash(b)) in index.pairs
            norm += pair_key(text_hash(normalize(a)), text_hash(normalize(b))) in index.pairs_norm
        out.update(pairs=len(ev.pairs), pairs_seen=exact, pairs_pct=_pct(exact, len(ev.pairs)),
                   pairs_norm_pct=_pct(norm, len(ev.pairs)))
    if ev.queries:
        qs = list(dict.fromkeys(ev.queries))
        exact = sum(text_hash(q) in index.texts for q in qs)
        norm = sum(text_hash(normalize(q)) in index.texts_norm for q in qs)
        out.update(queries=len(qs), queries_seen=exact, queries_pct=_pct(exact, len(qs)),
                   queries_norm_pct=_pct(norm, len(qs)))
    texts = list(dict.fromkeys(ev.texts))
    exact = sum(text_hash(t) in index.texts for t in texts)
    norm = sum(text_hash(normalize(t)) in index.texts_norm for t in texts)
    out.update(texts=len(texts), texts_seen=exact, texts_pct=_pct(exact, len(texts)),
               texts_norm_pct=_pct(norm, len(texts)))
    unit = {"pairs": "pairs_norm_pct", "queries": "queries_norm_pct", "texts": "texts_norm_pct"}[ev.kind]
    out["flagged"] = bool(out.get(unit, 0.0) > FLAG_PCT)
    return out


def measure_all(index: TrainIndex, sets: Iterable[EvalSet]) -> dict[str, dict[str, Any]]:
    """:func:`measure` for each set, keyed by name (a name met twice keeps its first set)."""
    out: dict[str, dict[str, Any]] = {}
    for ev in sets:
        out.setdefault(ev.name, measure(index, ev))
    return out


# --- evaluation sets from the files embedkit scores ---------------------------------------------------------


def from_pairset(pairs: Any, name: str | None = None, role: str = "test") -> EvalSet:
    """A scored :class:`~embedkit.data.sts.PairSet` (STS task, STS-B split, SICK)."""
    p = list(zip(pairs.sentences1, pairs.sentences2))
    return EvalSet(name or pairs.name, "pairs", pairs=p, texts=[*pairs.sentences1, *pairs.sentences2], role=role)


def from_rerank(data: Any, name: str | None = None, role: str = "test") -> EvalSet:
    """A :class:`~embedkit.data.ranking.RerankSet`: queries, (query, positive) pairs, every text."""
    pairs = [(q.query, p) for q in data.queries for p in q.positives]
    texts = [t for q in data.queries for t in (q.query, *q.positives, *q.negatives)]
    return EvalSet(name or data.name, "queries", pairs=pairs, queries=[q.query for q in data.queries], texts=texts,
                   role=role)


def from_beir(data: Any, name: str | None = None, role: str = "test") -> EvalSet:
    """A :class:`~embedkit.data.ranking.BeirSet`: its queries, (query, relevant document) pairs, queries and the
    relevant documents as texts (the rest of the corpus is candidates, not evaluated units)."""
    pairs = [(data.queries[q], data.corpus[d]) for q, docs in data.qrels.items() if q in data.queries
             for d in docs if d in data.corpus]
    queries = list(data.queries.values())
    return EvalSet(name or data.name, "queries", pairs=pairs, queries=queries,
                   texts=[*queries, *(b for _, b in pairs)], role=role)


def from_texts(name: str, texts: list[str], role: str = "test") -> EvalSet:
    """Single texts (a classification set)."""
    return EvalSet(name, "texts", texts=texts, role=role)


def standard_sets(data_dir: str | Path | None, tasks: Sequence[str] | None = None
                  ) -> tuple[list[EvalSet], dict[str, str]]:
    """The evaluation sets embedkit scores from the local public-data folder (the STS suite, STS-B dev, the
    offline mteb tasks TRECQA-dev, MR, SUBJ), those of them present; and why each absent one is not measured.

    ``tasks`` keeps only the named sets (suite names; ``STSBenchmark-dev``, ``TRECQA-dev``, ``MR``, ``SUBJ``).
    """
    from embedkit.evaluation.sts import load_local

    base = paths.resolve_data_dir(data_dir)
    notes: dict[str, str] = {}
    sets: list[EvalSet] = []
    wanted = set(tasks) if tasks else None
    if base is None or not base.is_dir():
        return [], {"data folder": f"{'--data-dir ' + str(data_dir) if data_dir else 'none found'}; pass "
                                   "--data-dir to measure the standard evaluation sets"}
    sts = base / "sts"
    for name in STS_SUITE:
        if wanted is not None and name not in wanted:
            continue
        try:
            suite = load_local(sts, (name,))
        except Exception as err:  # noqa: BLE001 - an absent task is a note, not a failure
            notes[name] = str(err).splitlines()[0]
            continue
        sets.append(from_pairset(suite.tasks[name], name))
    extra = {
        "STSBenchmark-dev": lambda: from_pairset(read_stsb(sts / "stsbenchmark" / "sts-dev.csv"), "STSBenchmark-dev"),
        "TRECQA-dev": lambda: from_rerank(read_rerank(base / "rerank" / "trecqa" / "dev.csv"), "TRECQA-dev"),
        "MR": lambda: from_texts("MR", read_classification("MR", base).texts),
        "SUBJ": lambda: from_texts("SUBJ", read_classification("SUBJ", base).texts),
    }
    for name, load in extra.items():
        if wanted is not None and name not in wanted:
            continue
        try:
            sets.append(load())
        except Exception as err:  # noqa: BLE001
            notes[name] = str(err).splitlines()[0]
    if wanted:
        unknown = wanted - set(STS_SUITE) - set(extra)
        if unknown:

            raise EmbedkitError(f"--tasks: unknown set(s) {', '.join(sorted(unknown))}; expected some of "
                                f"{', '.join([*STS_SUITE, *extra])}")
    return sets, notes


def recipe_sets(recipe: Any, data_dir: str | Path | None) -> list[EvalSet]:
    """The sets a recipe itself names, read from their files: see :func:`named_sets`."""
    from embedkit.evaluation.core import load_dev, load_rankings

    dev = load_dev(recipe.data.dev, data_dir) if recipe.data.dev is not None else None
    final = load_rankings([("rerank", raw, "test") for raw in recipe.eval.rerank]
                          + [("retrieval", r.path, r.split) for r in recipe.eval.retrieval], data_dir)
    return named_sets(dev, final)


def named_sets(dev: Any, final_sets: Sequence[Any] = ()) -> list[EvalSet]:
    """The loaded ``data.dev`` sets (role *selection*: they choose the checkpoint) and the final evaluation's
    ``eval.rerank`` files and ``eval.retrieval`` folders (role *test*)."""

    out: list[EvalSet] = []
    for d in getattr(dev, "sets", [dev] if dev is not None else []):
        conv = from_pairset if d.kind == "stsb" else from_rerank if d.kind == "rerank" else from_beir
        out.append(conv(d.data, "STSBenchmark-dev" if d.kind == "stsb" else d.name, role="selection"))
    for data in final_sets:
        out.append(from_rerank(data) if isinstance(data, RerankSet) else from_beir(data))
    return out


def run_overlap(train_data: Any, recipe: Any, data_dir: str | Path | None, dev: Any = None,
                final_sets: Sequence[Any] = ()) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """What a training run records (``results.json`` ``overlap``): its training rows against its own dev and
    final sets and every standard evaluation set present in the data folder; and notes on what was not measured
    (one line for the absent standard sets)."""
    sets, absent = standard_sets(data_dir)
    evals = [*named_sets(dev, final_sets), *sets]
    index, notes = index_training(train_data, recipe, data_dir, keep=eval_index(evals))
    if absent:
        notes.append(f"not in the data folder, not measured: {', '.join(absent)}")
    return measure_all(index, evals), notes


def index_training(data: Any, recipe: Any = None, data_dir: str | Path | None = None,
                   keep: TrainIndex | None = None) -> tuple[TrainIndex, list[str]]:
    """A :class:`TrainIndex` over a recipe's training data (a ``TrainData``, or a multi-task recipe's sources), and
    the mining corpora it names; notes for sources that could not be measured (a Hub dataset read at setup).
    ``keep`` (:func:`eval_index` of the sets to measure): keep only those hashes (see :class:`TrainIndex`)."""
    index, notes = TrainIndex(keep=keep), []
    parts = getattr(data, "parts", None)
    items = parts.items() if parts is not None else [("train", data)]
    for name, part in items:
        if part is None or not getattr(part, "columns", None):
            notes.append(f"training source {name}: not read before setup (a Hub dataset); not measured")
            continue
        index.add_data(part, name)
    if recipe is not None:

        sources = recipe.data.train if isinstance(recipe.data.train, list) else [recipe.data.train]
        for src in sources:
            mine = getattr(src, "mine", None)
            if mine is not None and mine.corpus:
                path = paths.expand(mine.corpus, paths.resolve_data_dir(data_dir))
                index.add_texts(read_corpus(path), f"mining corpus {path}")
        replay = getattr(recipe.data, "replay", None)
        if replay is not None:  # replayed rows are trained on too (docs/continual.md)
            path = replay_file(recipe, paths.resolve_data_dir(data_dir))  # the file training reads, or its Hub set
            index.add_data(read_replay(replay, path), "replay")
    return index, notes


def clean_average(scores: Mapping[str, float], overlap: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The mean of the scores whose set is not flagged (``None`` when every set is)."""
    clean = [v for k, v in scores.items() if not overlap.get(k, {}).get("flagged", False)]
    return sum(clean) / len(clean) if clean else None


def annotate_sts(sts: dict[str, Any], overlap: Mapping[str, Mapping[str, Any]]) -> None:
    """Add to an STS suite result (``{"tasks", "avg", ...}``) each task's overlap, the tasks seen in training and
    the average over the clean ones (``avg_clean``; ``None`` when no task is clean), in place."""
    tasks = sts.get("tasks", {})
    sts["overlap"] = {t: {k: overlap[t][k] for k in ("pairs_pct", "pairs_norm_pct", "texts_pct", "flagged")}
                      for t in tasks if t in overlap}
    sts["seen_in_training"] = [t for t in tasks if overlap.get(t, {}).get("flagged")]
    clean = [t for t in tasks if t not in sts["seen_in_training"]]
    sts["avg_clean_tasks"] = clean
    sts["avg_clean"] = clean_average({t: tasks[t]["spearman"] for t in clean}, overlap)


def flagged(overlap: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Names of the sets marked as seen in training."""
    return [k for k, v in overlap.items() if v.get("flagged")]


def summary_line(name: str, row: Mapping[str, Any]) -> str:
    """One line for an affected set: ``STS12: 1002/3108 pairs (32.2%) and 38.5% of texts seen in training``."""
    if row["kind"] == "pairs":
        head = f"{row['pairs_seen']}/{row['pairs']} pairs ({row['pairs_pct']:.1f}%"
        head += f", {row['pairs_norm_pct']:.1f}% normalised)" if row["pairs_norm_pct"] != row["pairs_pct"] else ")"
    elif row["kind"] == "queries":
        head = f"{row['queries_seen']}/{row['queries']} queries ({row['queries_pct']:.1f}%)"
    else:
        head = f"{row['texts_seen']}/{row['texts']} texts ({row['texts_pct']:.1f}%)"
    role = " [selection set]" if row.get("role") == "selection" else ""
    return f"{name}{role}: {head} and {row['texts_pct']:.1f}% of its texts were seen in training"


def format_table(overlap: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table, one row per set."""
    lines = [f"{'set':<18} {'role':<9} {'unit':<7} {'units':>6} {'seen %':>7} {'norm %':>7} {'texts %':>8}  flag"]
    for name, r in overlap.items():
        unit = r["kind"]
        n = r.get(unit, r["texts"])
        pct = r.get(f"{unit}_pct", r["texts_pct"])
        npct = r.get(f"{unit}_norm_pct", r["texts_norm_pct"])
        mark = "SEEN" if r["flagged"] else ""
        lines.append(f"{name:<18} {r['role']:<9} {unit:<7} {n:>6} {pct:>7.1f} {npct:>7.1f} {r['texts_pct']:>8.1f}"
                     f"  {mark}")
    return "\n".join(lines)


def is_recipe(source: str) -> bool:
    """Whether ``source`` names a recipe (a YAML file, or a shipped recipe's bare name) rather than a data file."""
    bare = Path(source).name == source and not Path(source).exists()
    return source.endswith((".yaml", ".yml")) or (bare and (RECIPES_DIR / f"{source}.yaml").is_file())


def overlap_report(source: str, overrides: list[str] | None = None, data_dir: str | None = None,
                   tasks: Sequence[str] | None = None, extra_sets: Sequence[EvalSet] = ()
                   ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Overlap of a recipe's training data (or one data file) with every evaluation set (and ``extra_sets``, e.g.
    ``embedkit eval``'s own reranking files): ``(overlap, notes)``."""

    recipe = None
    if is_recipe(source):

        recipe, data = load_recipe_with_data(source, overrides, data_dir=data_dir)
    else:
        if overrides:

            raise EmbedkitError(f"{source}: overrides ({' '.join(overrides)}) apply to a recipe, not a data file")
        data = read_local(source, "auto", None)
    sets, absent = standard_sets(data_dir, tasks)
    named = recipe_sets(recipe, data_dir) if recipe is not None else []
    # A set the recipe selects on keeps its own entry, marked "selection".
    evals = [*named, *extra_sets, *sets]
    if recipe is not None:
        index, notes = index_training(data, recipe, data_dir, keep=eval_index(evals))
    else:
        index, notes = TrainIndex(keep=eval_index(evals)), []
        index.add_data(data, source)
    overlap = measure_all(index, evals)
    return overlap, notes + [f"{name}: not measured ({why})" for name, why in absent.items()]


def _overlap_cli(args: Any) -> int:

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    overlap, notes = overlap_report(args.source, args.overrides, args.data_dir, tasks)
    if args.json:
        print(json.dumps({"overlap": overlap, "notes": notes}, indent=2))
        return 0
    print(format_table(overlap))
    for name in flagged(overlap):
        print("seen in training: " + summary_line(name, overlap[name]))
    for note in notes:
        print(f"note: {note}")
    return 0


def add_cli(data_commands: Any) -> None:
    """Register ``embedkit data overlap`` under the ``data`` command group."""
    d = data_commands.add_parser(
        "overlap", help="how much of each evaluation set a recipe's (or a file's) training rows already hold",
        description="Exact and normalised overlap of pairs/queries and of single texts between training rows and "
                    "the STS suite, STS-B dev, TRECQA-dev, MR, SUBJ and the recipe's own dev and eval files.")
    d.add_argument("source", help="a recipe (file or shipped name) or a training data file")
    d.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe fields")
    d.add_argument("--tasks", help="comma-separated evaluation sets to measure (default: all present)")
    d.add_argument("--data-dir", help="local public-data folder (default: $EMBEDKIT_DATA, data/public, ../shared/data)")
    d.add_argument("--json", action="store_true", help="print the measurement as JSON")
    d.set_defaults(func=_overlap_cli)
