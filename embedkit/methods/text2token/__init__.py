"""Text2Token-style training: the embedding predicts a target distribution over the vocabulary.

Our reading of An et al. (2025), whose code is not public; every choice below is a recipe knob, and
docs/text2token.md states each one.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from embedkit import paths
from embedkit.data.stream import ColumnTexts
from embedkit.errors import RecipeError
from embedkit.log import log
from embedkit.methods.base import Method, MethodParams, register, training_head

TEXT2TOKEN_CITATION = """@article{an2025text2token,
  title = {{Text2Token}: Unsupervised Text Representation Learning with Token Target Prediction},
  author = {An, Ruize and others},
  journal = {arXiv preprint arXiv:2510.10224},
  year = {2025}
}"""


class Text2TokenParams(MethodParams):
    temperature: float = Field(1.0, gt=0, description="T in softmax(head(e)/T)")
    head: Literal["auto", "pretrained", "tied"] = Field(
        "auto", description="auto: the checkpoint's MLM/LM head when it has one, else a head tied to the input "
        "embeddings",
    )
    freeze_head: bool = Field(False, description="keep the head's own parameters fixed (a tied decoder still trains)")
    # data-driven targets
    idf: Literal["smooth", "plain"] = Field("smooth", description="smooth: ln((1+N)/(1+df))+1; plain: ln(N/df)")
    term_frequency: bool = Field(False, description="weight a repeated token by its count (else each token once)")
    whole_words: Literal["off", "first", "spread"] = Field(
        "off", description="merge sub-word pieces into words: weight on the first piece, or spread over the pieces"
    )
    stopwords: bool = Field(True, description="remove the shipped English stopword list")
    extra_stopwords: list[str] = Field(default_factory=list)
    drop_punctuation: bool = True
    drop_numbers: bool = False
    smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="ε: p = (1-ε) p + ε uniform(non-special tokens)")
    # stage 2: model-derived targets
    stage2_step: int | None = Field(None, ge=0, description="first step of stage 2; null: stage 1 only")
    mixture: float = Field(1.0, ge=0.0, le=1.0, description="λ: stage-2 target = (1-λ) data + λ model-derived")
    model_targets: Literal["positions", "template", "pooled"] = "positions"
    model_targets_template: str = 'This sentence : "{text}" means in one word: "{mask}".'
    model_targets_top_k: int = Field(32, gt=0)
    model_targets_temperature: float = Field(1.0, gt=0)
    model_targets_filter: bool = Field(True, description="drop specials/punctuation/stopwords before the top-k")
    model_targets_cache: bool = Field(False, description="precompute model-derived targets for the corpus once")
    # optional contrastive term
    infonce_weight: float = Field(0.0, ge=0.0, description="weight of SimCSE's InfoNCE term; 0 disables it")
    infonce_temperature: float = Field(0.05, gt=0)
    cache_dir: str | None = Field(None, description="cache folder used when the corpus folder is not writable")

    @field_validator("whole_words", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML 1.1 reads an unquoted `off` as false

    @model_validator(mode="after")
    def _check(self) -> Text2TokenParams:
        if self.model_targets == "template" and "{text}" not in self.model_targets_template:
            raise ValueError("model_targets_template must contain {text}")
        return self


@register
class Text2Token(Method):
    """Token-target prediction: KL from data-driven (then model-derived) token distributions."""

    name = "text2token"
    params_cls = Text2TokenParams
    column_roles = ("text",)
    paper = "An et al., Text2Token (2025), arXiv:2510.10224 (our reading; code not public)"
    citation = TEXT2TOKEN_CITATION
    composable = True
    streams = True  # the document frequencies are counted in one pass over the stream before training
    matryoshka = False  # the vocabulary head reads the whole embedding

    @classmethod
    def has_positives(cls, params) -> bool:
        return params.infonce_weight > 0  # two dropout views only with the InfoNCE term

    @classmethod
    def positives_hint(cls) -> str:
        return " unless method.infonce_weight > 0 (two dropout views)"

    def _corpus_path(self) -> str | None:
        src = self.ctx.recipe.data.train
        if src.path is None:
            return None
        try:
            return paths.expand(src.path, paths.resolve_data_dir(self.ctx.extras.get("data_dir")))
        except FileNotFoundError:
            return None

    def _fallback_dirs(self) -> list[Path]:
        dirs = []
        if self.params.cache_dir:
            dirs.append(Path(self.params.cache_dir).expanduser())
        dirs.append(Path(self.ctx.recipe.output.dir) / "text2token-cache")
        return dirs

    @classmethod
    def stream_refusals(cls, recipe: Any, params: Any) -> list[tuple[tuple, str]]:
        out = super().stream_refusals(recipe, params)
        if recipe.data.train.streaming and params.model_targets_cache:
            out.append((("method", "model_targets_cache"), "the cache holds the targets of every text, built before "
                        "training and read by row; a stream gives each row once: set false (targets are computed "
                        "per batch)"))
        return out

    def prepare_dataset(self, dataset):
        """Count document frequencies over the training texts (or read them from the cache) and build
        the head and the target builders; the dataset itself is unchanged. A stream is read once for the counts
        (a chunk at a time)."""
        import datasets

        if isinstance(dataset, datasets.IterableDataset):
            self._build_parts(ColumnTexts(dataset, "text"))
        else:
            self._build_parts(list(dataset["text"]))
        return dataset

    def _build_parts(self, texts: list[str]) -> None:
        from embedkit.methods.text2token.targets import (
            DataTargets,
            ModelTargets,
            TokenFilter,
            TokenTable,
            cached_document_frequencies,
        )
        from embedkit.methods.text2token.vocab_head import build_vocab_head, input_embedding

        p, model = self.params, self.ctx.model
        tokenizer = model.tokenizer
        head = build_vocab_head(model, p.head, freeze=p.freeze_head)
        log(f"text2token: vocabulary head = {head.source} ({head.vocab_size} tokens)")
        frozen = None
        if p.stage2_step is not None and p.mixture > 0:
            # The starting model, frozen, before any training step changes the live one.
            frozen_model = copy.deepcopy(model)
            frozen = (frozen_model, head.frozen_copy(input_embedding(frozen_model)))
        table = TokenTable(tokenizer, head.vocab_size)
        token_filter = TokenFilter(p.stopwords, tuple(p.extra_stopwords), p.drop_punctuation, p.drop_numbers)
        corpus = self._corpus_path()
        freqs, file, hit = cached_document_frequencies(
            texts, tokenizer, head.vocab_size, whole_words=p.whole_words != "off", corpus_path=corpus,
            fallback_dirs=self._fallback_dirs(),
        )
        log(f"text2token: document frequencies over {freqs.n_docs} texts "
            f"{'read from' if hit else 'counted; cached in'} {file or '(no writable cache folder)'}")
        data_targets = DataTargets(table, freqs, token_filter, p.idf, p.whole_words, p.term_frequency, p.smoothing)
        model_targets = None
        if frozen is not None:
            keep = data_targets.keep if p.model_targets_filter else None  # the same filter over the same table
            model_targets = ModelTargets(
                frozen[0], frozen[1], p.model_targets, p.model_targets_top_k, p.model_targets_temperature, keep,
                p.model_targets_template,
            )
            if p.model_targets_cache:
                self._precompute(model_targets, texts, corpus)
        self.parts = (head, data_targets, model_targets)

    def _precompute(self, model_targets, texts: list[str], corpus: str | None) -> None:
        from embedkit.methods.text2token.targets import cache_locations, corpus_hash
        from embedkit.modeling import weights_hash

        p = self.params
        settings = (f"{p.model_targets}|{p.model_targets_template}|{p.model_targets_top_k}|"
                    f"{p.model_targets_temperature}|{p.model_targets_filter}|{self.ctx.model.max_seq_length}|"
                    f"{p.stopwords}|{sorted(p.extra_stopwords)}|{p.drop_punctuation}|{p.drop_numbers}")
        meta = {"corpus_sha256": corpus_hash(texts), "model_sha256": weights_hash(model_targets.model),
                "head_sha256": weights_hash(model_targets.head), "settings": settings}
        key = hashlib.sha256("|".join(meta.values()).encode()).hexdigest()[:16]
        stem = Path(corpus).name if corpus else "corpus"
        file = model_targets.precompute(texts, self.ctx.model.preprocess, f"{stem}.text2token-model-{key}.safetensors",
                                        cache_locations(corpus, self._fallback_dirs()), meta=meta)
        log(f"text2token: model-derived targets for {len(model_targets.cache)} texts, cache {file}")

    def build_loss(self):
        from embedkit.methods.text2token.loss import Text2TokenLoss

        if not hasattr(self, "parts"):
            raise RecipeError("text2token: prepare_dataset() must run before build_loss() (it counts the IDF)")
        head, data_targets, model_targets = self.parts
        p = self.params
        projection = training_head(self) if p.infonce_weight > 0 else None
        return Text2TokenLoss(
            self.ctx.model, head, data_targets, model_targets, temperature=p.temperature,
            stage2_step=p.stage2_step if p.mixture > 0 else None, mixture=p.mixture,
            infonce_weight=p.infonce_weight, infonce_temperature=p.infonce_temperature, projection=projection,
        )

    def callbacks(self, loss):
        from embedkit.methods.text2token.loss import stage_callback

        return [stage_callback(loss)]
