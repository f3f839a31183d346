"""A tiny randomly initialised BERT with a real tokenizer, for fast tests and the bad-input table (a test
fixture: it lives with the tests, not in the package)."""

from __future__ import annotations

from pathlib import Path

import torch

from embedkit.modeling import resolve_model_path


def tiny_bert(path: str | Path, tokenizer_from: str | None = None, hidden: int = 32, layers: int = 2,
              seed: int = 0) -> str:
    """Write a tiny randomly initialised BERT (with a real tokenizer) to ``path``; returns the path.

    For fast tests: the tokenizer comes from ``tokenizer_from`` (default: the packaged all-MiniLM-L6-v2).
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    src = tokenizer_from or resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def training_model(path: str, pooling: str):
    """The tiny BERT at ``path`` built as training builds it (seed 0, no dropout, length 16), in train mode."""
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection

    torch.manual_seed(0)
    model = build_model(ModelSection(name=path, pooling=pooling, dropout=0.0, max_seq_length=16))
    model.train()
    return model
