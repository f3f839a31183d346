"""Token-target distributions for Text2Token-style training (our reading; see docs/text2token.md).

* **Data-driven targets** (:class:`DataTargets`): for each text, a distribution over the vocabulary that puts
  mass only on the text's own tokens, weighted by inverse document frequency over the training corpus; special
  tokens, punctuation and stopwords are removed; sub-word pieces may be merged into whole words; optional
  smoothing toward the uniform distribution.
* **Model-derived targets** (:class:`ModelTargets`): the frozen starting model's own vocabulary predictions for
  the text, truncated to the top-k tokens and renormalised; on the fly, or precomputed into a cache.

Document frequencies are computed once over the tokenised corpus and cached in a safetensors file keyed by a
hash of the corpus text and the tokenizer: next to the corpus file when its folder is writable, else under
``$EMBEDKIT_CACHE`` or a fallback folder (the run's output folder). A cache that cannot be written is skipped
with a warning; it never stops a run.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from embedkit.log import get_logger

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from embedkit.methods.text2token.vocab_head import VocabHead

logger = get_logger(__name__)

CACHE_ENV = "EMBEDKIT_CACHE"
CACHE_VERSION = "1"

# A small English stopword list (function words, auxiliaries, pronouns), lower case.
STOPWORDS: tuple[str, ...] = (
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did",
    "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have",
    "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into",
    "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of",
    "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she",
    "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then",
    "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was",
    "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would",
    "you", "your", "yours", "yourself", "yourselves", "s", "t", "d", "ll", "m", "re", "ve", "also", "may",
    "might", "must", "shall", "upon", "us", "yet", "said", "one",
)

WholeWords = Literal["off", "first", "spread"]
IdfFormula = Literal["smooth", "plain"]
_MARKERS = ("##", "\u2581", "\u0120")  # WordPiece continuation, SentencePiece / byte-level BPE word start


# ----------------------------------------------------------------------------------------------------------
# The vocabulary seen as words: specials, punctuation, stopwords, sub-word continuations


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c)[0] in "PS" for c in text)


class TokenTable:
    """Per-token facts of a tokenizer's vocabulary, for ``vocab_size`` rows of the embedding matrix.

    ``continuation[i]`` is true for a piece that continues the previous word: ``##``-prefixed pieces for
    WordPiece; pieces *without* the word-start marker (``▁``/``Ġ``) for SentencePiece and byte-level BPE.
    """

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        size = vocab_size or len(tokenizer)
        n = min(len(tokenizer), size)
        raw = tokenizer.convert_ids_to_tokens(list(range(n)))
        self.tokens: list[str] = [t if isinstance(t, str) else "" for t in raw] + [""] * (size - n)
        self.size = size
        special = np.zeros(size, dtype=bool)
        special[[i for i in tokenizer.all_special_ids if 0 <= i < size]] = True
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        for i, tok in added.items():
            if 0 <= int(i) < size and getattr(tok, "special", False):
                special[int(i)] = True
        special[[i for i, t in enumerate(self.tokens) if t == ""]] = True
        self.special = special
        self.scheme = self._scheme()
        self.words = [self.strip(t) for t in self.tokens]
        if self.scheme == "wordpiece":
            cont = np.array([t.startswith("##") for t in self.tokens])
        elif self.scheme in ("metaspace", "bytelevel"):
            marker = "\u2581" if self.scheme == "metaspace" else "\u0120"
            cont = np.array([bool(t) and not t.startswith(marker) for t in self.tokens])
        else:
            cont = np.zeros(size, dtype=bool)
        self.continuation = cont & ~special

    def _scheme(self) -> str:
        counts = {m: sum(t.startswith(m) for t in self.tokens) for m in _MARKERS}
        marker, count = max(counts.items(), key=lambda kv: kv[1])
        if count < 0.01 * max(self.size, 1):
            return "none"
        return {"##": "wordpiece", "\u2581": "metaspace", "\u0120": "bytelevel"}[marker]

    def strip(self, token: str) -> str:
        """A token's text without sub-word markers."""
        for m in _MARKERS:
            if token.startswith(m):
                return token[len(m):]
        return token

    def segment(self, ids: Sequence[int]) -> list[list[int]]:
        """Group a token id sequence into words (lists of piece ids); special tokens end a word and are dropped."""
        words: list[list[int]] = []
        current: list[int] | None = None
        for t in ids:
            if t < 0 or t >= self.size or self.special[t]:
                current = None
                continue
            if self.continuation[t] and current is not None:
                current.append(t)
            else:
                current = [t]
                words.append(current)
        return words

    def word_text(self, pieces: Sequence[int]) -> str:
        return "".join(self.words[p] for p in pieces)


@dataclass
class TokenFilter:
    """Which tokens (or whole words) may carry target mass."""

    stopwords: bool = True
    extra_stopwords: tuple[str, ...] = ()
    punctuation: bool = True
    numbers: bool = False

    def stopword_set(self) -> frozenset[str]:
        words = set(STOPWORDS) if self.stopwords else set()
        return frozenset(words | {w.lower() for w in self.extra_stopwords})

    def keeps(self, word: str, stop: frozenset[str]) -> bool:
        """Whether a word (markers stripped) survives the filter."""
        if not word:
            return False
        if self.punctuation and _is_punctuation(word):
            return False
        if word.lower() in stop:
            return False
        if self.numbers and word.replace(",", "").replace(".", "").isdigit():
            return False
        return True

    def keep_mask(self, table: TokenTable) -> np.ndarray:
        """Per token: not special and, as a word of its own, not filtered."""
        stop = self.stopword_set()
        keep = np.array([self.keeps(w, stop) for w in table.words], dtype=bool)
        return keep & ~table.special


# ----------------------------------------------------------------------------------------------------------
# Document frequencies over the tokenised corpus, with a cache


@dataclass
class DocumentFrequencies:
    """Document frequency of each token id and (optionally) each whole word, over ``n_docs`` texts."""

    n_docs: int
    token_df: np.ndarray
    word_df_single: np.ndarray | None = None
    word_df_multi: dict[tuple[int, ...], int] | None = None

    def word_df(self, pieces: Sequence[int]) -> int:
        if self.word_df_single is None:
            raise ValueError("document frequencies were counted without whole words")
        if len(pieces) == 1:
            return int(self.word_df_single[pieces[0]])
        return int((self.word_df_multi or {}).get(tuple(pieces), 0))


def idf(df: np.ndarray | int, n_docs: int, formula: IdfFormula = "smooth") -> np.ndarray | float:
    """Inverse document frequency. ``smooth``: ln((1+N)/(1+df)) + 1 (never zero, defined for df = 0);
    ``plain``: ln(N/df) with df at least 1 (zero for a token in every text).

    ``smooth`` is scikit-learn's ``TfidfTransformer(smooth_idf=True)`` IDF, and gives the same float64 values as
    its ``idf_`` (``tests/test_text2token.py`` checks this). The formula is written out here rather than
    delegated, on purpose: ``TfidfTransformer`` only fits a documents × terms matrix and counts the document
    frequencies itself, while ours are counts already made (and cached), for token ids and for whole words
    looked up one at a time. Feeding it would mean fabricating an ``N × V`` sparse matrix with ``df[j]``
    entries in column ``j`` for it to count back: about 20M entries (~240 MB) and 40 ms for a wiki1m-sized
    corpus against 0.08 ms for this line, and a scalar fit per whole word. ``plain`` is not scikit-learn's
    ``smooth_idf=False`` (that is ln(N/df) + 1, infinite for df = 0).
    """
    df_arr = np.asarray(df, dtype=np.float64)
    if formula == "smooth":
        out = np.log((1.0 + n_docs) / (1.0 + df_arr)) + 1.0
    elif formula == "plain":
        out = np.log(max(n_docs, 1) / np.maximum(df_arr, 1.0))
    else:
        raise ValueError(f"unknown idf formula {formula!r}")
    return out if out.ndim else float(out)


def tokenize_corpus(texts: Iterable[str], tokenizer: Any, batch_size: int = 2048) -> Iterable[list[int]]:
    """Token ids of each text, without special tokens and without truncation (a batch of texts at a time: the
    texts may be a stream)."""
    it = iter(texts)
    while batch := list(islice(it, batch_size)):
        enc = tokenizer(batch, add_special_tokens=False, truncation=False, verbose=False)
        yield from enc["input_ids"]


def count_document_frequencies(
    texts: Sequence[str], tokenizer: Any, vocab_size: int, whole_words: bool = False, table: TokenTable | None = None,
) -> DocumentFrequencies:
    """Count, for each token id (and each whole word when asked), the number of texts that contain it."""
    token_df = np.zeros(vocab_size, dtype=np.int64)
    single = np.zeros(vocab_size, dtype=np.int64) if whole_words else None
    multi: Counter | None = Counter() if whole_words else None
    if whole_words and table is None:
        table = TokenTable(tokenizer, vocab_size)
    n = 0
    for ids in tokenize_corpus(texts, tokenizer):
        n += 1
        uniq = np.unique(np.asarray(ids, dtype=np.int64))
        uniq = uniq[(uniq >= 0) & (uniq < vocab_size)]
        token_df[uniq] += 1
        if whole_words:
            words = {tuple(w) for w in table.segment(ids)}
            for w in words:
                if len(w) == 1:
                    single[w[0]] += 1
                else:
                    multi[w] += 1
    return DocumentFrequencies(n, token_df, single, dict(multi) if multi is not None else None)


def corpus_hash(texts: Sequence[str]) -> str:
    """SHA-256 of the corpus text, one text a line."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """A fingerprint of the tokenizer's behaviour: its serialised fast tokenizer, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = repr(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_locations(corpus_path: str | Path | None, fallback_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """Folders to look for (and write) caches in, in order: beside the corpus, ``$EMBEDKIT_CACHE``, fallbacks."""
    out: list[Path] = []
    if corpus_path:
        out.append(Path(corpus_path).expanduser().resolve().parent)
    if os.environ.get(CACHE_ENV):
        out.append(Path(os.environ[CACHE_ENV]).expanduser() / "text2token")
    out.extend(Path(d) for d in fallback_dirs)
    return list(dict.fromkeys(out))


def writable(folder: Path) -> bool:
    """Whether caches may be written into ``folder`` (created when missing): it must grant write in its mode
    bits as well as to this process, so a read-only data folder stays untouched even for root."""

    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            return False
        existing = existing.parent
    if not existing.is_dir():
        return False
    mode = existing.stat().st_mode
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(existing, os.W_OK)


def _write_atomic(state: dict[str, Tensor], meta: dict[str, str], folders: list[Path], name: str) -> Path | None:
    """Save to the first writable folder that accepts the file; ``None`` (with a warning) when none does."""

    for folder in folders:
        if not writable(folder):
            logger.info("cache folder %s is read-only; trying the next one", folder)
            continue
        target = folder / name
        tmp = folder / f".{name}.{os.getpid()}.partial"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(state, str(tmp), metadata=meta)
            tmp.replace(target)
            return target
        except OSError as err:
            logger.info("cache %s not writable here (%s); trying the next folder", target, err.strerror or err)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    logger.warning("text2token: no writable cache folder among %s; continuing without a cache",
                   [str(f) for f in folders])
    return None


def _read_cache(folders: list[Path], name: str, expect: dict[str, str]) -> tuple[dict[str, Tensor], Path] | None:
    for folder in folders:
        file = folder / name
        if not file.is_file():
            continue
        try:
            with safe_open(str(file), framework="pt") as fh:
                meta = fh.metadata() or {}
                if any(meta.get(k) != v for k, v in expect.items()):
                    logger.warning("cache %s does not match this corpus/tokenizer; ignoring it", file)
                    continue
                return {k: fh.get_tensor(k) for k in fh.keys()}, file
        except Exception as err:  # noqa: BLE001 - a damaged cache is recomputed, never fatal
            logger.warning("cache %s unreadable (%s); recomputing", file, type(err).__name__)
    return None


def cached_document_frequencies(
    texts: Sequence[str], tokenizer: Any, vocab_size: int, whole_words: bool = False,
    corpus_path: str | Path | None = None, fallback_dirs: Sequence[str | Path] = (),
) -> tuple[DocumentFrequencies, Path | None, bool]:
    """Document frequencies from the cache when present, else counted and cached.

    Returns ``(frequencies, cache file or None, whether it came from the cache)``.
    """
    c_hash, t_hash = corpus_hash(texts), tokenizer_hash(tokenizer)
    key = hashlib.sha256(f"{CACHE_VERSION}|{c_hash}|{t_hash}|{vocab_size}|{int(whole_words)}".encode()).hexdigest()[:16]
    stem = Path(corpus_path).name if corpus_path else "corpus"
    name = f"{stem}.text2token-df-{key}.safetensors"
    meta = {"corpus_sha256": c_hash, "tokenizer_sha256": t_hash, "vocab_size": str(vocab_size),
            "whole_words": str(int(whole_words)), "version": CACHE_VERSION}
    folders = cache_locations(corpus_path, fallback_dirs)
    hit = _read_cache(folders, name, meta)
    if hit is not None:
        state, file = hit
        return _df_from_state(state), file, True
    freqs = count_document_frequencies(texts, tokenizer, vocab_size, whole_words)
    meta["n_docs"] = str(freqs.n_docs)
    file = _write_atomic(_df_to_state(freqs), meta, folders, name)
    return freqs, file, False


def _df_to_state(f: DocumentFrequencies) -> dict[str, Tensor]:
    state = {"n_docs": torch.tensor([f.n_docs]), "token_df": torch.from_numpy(f.token_df)}
    if f.word_df_single is not None:
        multi = f.word_df_multi or {}
        state["word_df_single"] = torch.from_numpy(f.word_df_single)
        state["multi_lengths"] = torch.tensor([len(w) for w in multi], dtype=torch.int64)
        state["multi_pieces"] = torch.tensor([p for w in multi for p in w], dtype=torch.int64)
        state["multi_df"] = torch.tensor(list(multi.values()), dtype=torch.int64)
    return state


def _df_from_state(state: dict[str, Tensor]) -> DocumentFrequencies:
    f = DocumentFrequencies(int(state["n_docs"][0]), state["token_df"].numpy())
    if "word_df_single" in state:
        f.word_df_single = state["word_df_single"].numpy()
        lengths, pieces = state["multi_lengths"].tolist(), state["multi_pieces"].tolist()
        multi, pos = {}, 0
        for n, df in zip(lengths, state["multi_df"].tolist(), strict=True):
            multi[tuple(pieces[pos : pos + n])] = df
            pos += n
        f.word_df_multi = multi
    return f


# ----------------------------------------------------------------------------------------------------------
# Data-driven targets


class DataTargets:
    """Builds data-driven target distributions from the token ids the loss receives.

    For each text: every kept token ``t`` of the text gets weight ``idf(t)`` (times its count when
    ``term_frequency``), the weights are normalised to sum to one, then mixed with the uniform distribution
    over non-special tokens: ``p = (1 − ε) p + ε u``. With ``whole_words`` the pieces of one word are one
    unit: the word is filtered as a whole, weighted by the word's own IDF, and that weight goes to its first
    piece (``first``) or is split evenly over its pieces (``spread``). A text left with no kept token has
    no target (``valid`` is false for its row).
    """

    def __init__(
        self, table: TokenTable, freqs: DocumentFrequencies, token_filter: TokenFilter | None = None,
        formula: IdfFormula = "smooth", whole_words: WholeWords = "off", term_frequency: bool = False,
        smoothing: float = 0.0,
    ) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError("smoothing must be in [0, 1)")
        if whole_words != "off" and freqs.word_df_single is None:
            raise ValueError("whole_words needs document frequencies counted with whole_words=True")
        self.table, self.freqs = table, freqs
        self.filter = token_filter or TokenFilter()
        self.formula, self.whole_words = formula, whole_words
        self.term_frequency, self.smoothing = term_frequency, smoothing
        self.stop = self.filter.stopword_set()
        self.keep = torch.from_numpy(self.filter.keep_mask(table))
        self.idf = torch.from_numpy(np.asarray(idf(freqs.token_df, freqs.n_docs, formula), dtype=np.float32))
        self.uniform_support = torch.from_numpy(~table.special)

    @property
    def vocab_size(self) -> int:
        return self.table.size

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(targets ``B × V`` float32, valid ``B`` bool) for a batch of token ids."""
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.whole_words == "off":
            weights = self._token_weights(input_ids.cpu(), attention_mask.cpu())
        else:
            weights = self._word_weights(input_ids.cpu(), attention_mask.cpu())
        total = weights.sum(dim=1, keepdim=True)
        valid = total.squeeze(1) > 0
        targets = weights / total.clamp_min(1e-12)
        if self.smoothing > 0:
            u = self.uniform_support.float()
            targets = (1 - self.smoothing) * targets + self.smoothing * (u / u.sum())
            targets[~valid] = 0.0
        return targets.to(device), valid.to(device)

    def _token_weights(self, ids: Tensor, mask: Tensor) -> Tensor:
        ids = ids.clamp(0, self.vocab_size - 1).long()
        kept = mask.bool() & self.keep[ids]
        w = torch.where(kept, self.idf[ids], torch.zeros(()))
        out = torch.zeros(ids.shape[0], self.vocab_size)
        if self.term_frequency:
            return out.scatter_add_(1, ids, w)
        return out.scatter_reduce_(1, ids, w, reduce="amax", include_self=True)

    def word_idf(self, pieces: Sequence[int]) -> float:
        return float(idf(self.freqs.word_df(pieces), self.freqs.n_docs, self.formula))

    def _word_weights(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = torch.zeros(ids.shape[0], self.vocab_size)
        for row in range(ids.shape[0]):
            seq = ids[row][mask[row].bool()].tolist()
            words = [tuple(w) for w in self.table.segment(seq)]
            counts = Counter(w for w in words if self.filter.keeps(self.table.word_text(w), self.stop))
            for word, count in counts.items():
                weight = self.word_idf(word) * (count if self.term_frequency else 1)
                if self.whole_words == "first":
                    out[row, word[0]] += weight
                else:
                    for piece in word:
                        out[row, piece] += weight / len(word)
        return out


# ----------------------------------------------------------------------------------------------------------
# Model-derived targets

ModelTargetMode = Literal["positions", "template", "pooled"]


def top_k_renormalise(probs: Tensor, k: int, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` most probable tokens of each row (only ``keep`` tokens when given), renormalised;
    returns (ids ``B × k``, probabilities ``B × k``)."""
    if keep is not None:
        probs = probs * keep.to(probs.device, probs.dtype)
    values, ids = probs.topk(min(k, probs.shape[1]), dim=1)
    values = values / values.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return ids, values


def sparse_to_dense(ids: Tensor, values: Tensor, vocab_size: int) -> Tensor:
    return torch.zeros(ids.shape[0], vocab_size, device=values.device, dtype=values.dtype).scatter_(1, ids, values)


def sequence_keys(input_ids: Tensor, attention_mask: Tensor) -> list[int]:
    """A 63-bit key for each row's (unpadded) id sequence, to find its cached target."""
    keys = []
    for ids, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True):
        seq = ids[mask.bool()].to(torch.int64).numpy().tobytes()
        keys.append(int.from_bytes(hashlib.blake2b(seq, digest_size=8).digest(), "little") >> 1)
    return keys


class ModelTargets:
    """The frozen starting model's own vocabulary prediction for each text, top-k renormalised.

    ``positions``: the mean over the text's non-special positions of ``softmax(head(h_i)/T)``, each token's
    hidden state through the frozen head; ``template``: the head's prediction at the mask token of a prompt
    (``template`` with ``{text}`` and ``{mask}``; without ``{mask}``, at the last position, for decoder
    LMs); ``pooled``: ``softmax(head(e)/T)`` of the frozen model's sentence embedding. With a ``keep`` mask,
    filtered tokens (specials, punctuation, stopwords) are removed before the top-k.
    """

    def __init__(
        self, frozen_model: SentenceTransformer, frozen_head: VocabHead, mode: ModelTargetMode = "positions",
        top_k: int = 32, temperature: float = 1.0, keep: Tensor | None = None,
        template: str = 'This sentence : "{text}" means in one word: "{mask}".', chunk: int = 8,
    ) -> None:
        self.model, self.head = frozen_model, frozen_head
        self.model.eval().requires_grad_(False)
        self.mode, self.top_k, self.temperature, self.keep = mode, top_k, temperature, keep
        self.template, self.chunk = template, chunk
        self.tokenizer = frozen_model.tokenizer
        self.special = None
        self.cache: dict[int, tuple[Tensor, Tensor]] = {}
        if mode == "template":
            if "{text}" not in template:
                raise ValueError("the template needs a {text} field")
            if "{mask}" in template and self.tokenizer.mask_token is None:
                raise ValueError("the template has {mask} but the tokenizer has no mask token")

    @property
    def vocab_size(self) -> int:
        return self.head.vocab_size

    def to(self, device: torch.device) -> ModelTargets:
        if next(self.model.parameters()).device != device:
            self.model.to(device)
            self.head.to(device)
        return self

    @torch.no_grad()
    def sparse(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(ids ``B × k``, probabilities ``B × k``) for a tokenised batch."""
        device = features["input_ids"].device
        self.to(device)
        keys = sequence_keys(features["input_ids"], features["attention_mask"]) if self.cache else None
        if keys is not None and all(k in self.cache for k in keys):
            ids = torch.stack([self.cache[k][0] for k in keys]).to(device)
            vals = torch.stack([self.cache[k][1] for k in keys]).to(device)
            return ids, vals
        probs = self.probabilities(features)
        keep = self.keep.to(device) if self.keep is not None else None
        return top_k_renormalise(probs, self.top_k, keep)

    def __call__(self, features: dict[str, Tensor]) -> Tensor:
        """Dense targets ``B × V``."""
        ids, vals = self.sparse(features)
        return sparse_to_dense(ids, vals.float(), self.vocab_size)

    def _softmax(self, h: Tensor) -> Tensor:
        return torch.softmax(self.head(h).float() / self.temperature, dim=-1)

    def probabilities(self, features: dict[str, Tensor]) -> Tensor:
        """The full predicted distribution ``B × V`` before the top-k."""
        inputs = {k: v for k, v in features.items() if isinstance(v, Tensor) and k in
                  ("input_ids", "attention_mask", "token_type_ids")}
        if self.mode == "pooled":
            return self._softmax(self.model(dict(inputs))["sentence_embedding"])
        if self.mode == "template":
            return self._template(inputs["input_ids"])
        hidden = self.model[0](dict(inputs))["token_embeddings"]
        ids = inputs["input_ids"]
        if self.special is None:
            self.special = torch.from_numpy(TokenTable(self.tokenizer, self.vocab_size).special)
        special = self.special.to(ids.device)[ids.clamp(0, self.vocab_size - 1)]
        mask = inputs["attention_mask"].bool() & ~special
        out = []
        for start in range(0, ids.shape[0], self.chunk):
            h, m = hidden[start : start + self.chunk], mask[start : start + self.chunk].float()
            p = self._softmax(h)  # chunk × L × V
            out.append((p * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0))
        return torch.cat(out)

    def _template(self, input_ids: Tensor) -> Tensor:
        texts = self.tokenizer.batch_decode(input_ids.tolist(), skip_special_tokens=True)
        mask_token = self.tokenizer.mask_token or ""
        prompts = [self.template.replace("{text}", t).replace("{mask}", mask_token) for t in texts]
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        enc = {k: v.to(input_ids.device) for k, v in enc.items()}
        hidden = self.model[0](dict(enc))["token_embeddings"]
        if "{mask}" in self.template:
            is_mask = enc["input_ids"] == self.tokenizer.mask_token_id
            pos = is_mask.float().argmax(dim=1)
        else:
            idx = torch.arange(enc["attention_mask"].shape[1], device=input_ids.device)
            pos = (enc["attention_mask"].bool() * idx).argmax(dim=1)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
        return self._softmax(picked)

    def precompute(
        self, texts: Sequence[str], preprocess: Any, cache_name: str, folders: list[Path], batch_size: int = 64,
        meta: dict[str, str] | None = None,
    ) -> Path | None:
        """Fill :attr:`cache` for ``texts`` (tokenised with ``preprocess``, as the training collator does),
        reading the cache file when one matches ``meta``, else computing and writing it."""
        meta = dict(meta or {})
        hit = _read_cache(folders, cache_name, meta)
        if hit is not None:
            state, file = hit
            self._fill(state["keys"].tolist(), state["ids"], state["probs"])
            return file
        all_keys, all_ids, all_vals = [], [], []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), batch_size):
            feats = preprocess(list(texts[start : start + batch_size]))
            feats = {k: v.to(device) for k, v in feats.items() if isinstance(v, Tensor)}
            ids, vals = top_k_renormalise(self.probabilities(feats), self.top_k,
                                          self.keep.to(device) if self.keep is not None else None)
            all_keys += sequence_keys(feats["input_ids"], feats["attention_mask"])
            all_ids.append(ids.cpu())
            all_vals.append(vals.float().cpu())
        ids_t, vals_t = torch.cat(all_ids), torch.cat(all_vals)
        self._fill(all_keys, ids_t, vals_t)
        return _write_atomic({"keys": torch.tensor(all_keys, dtype=torch.int64), "ids": ids_t, "probs": vals_t},
                             meta, folders, cache_name)

    def _fill(self, keys: list[int], ids: Tensor, vals: Tensor) -> None:
        self.cache = {k: (i, v) for k, i, v in zip(keys, ids, vals, strict=True)}

