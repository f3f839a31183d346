"""``embedkit inspect``: what a text's embedding "says" — its top tokens through a vocabulary head.

The embedding the model produces for a text (``model.encode``) goes through a vocabulary head and a softmax:
the model's own trained Text2Token head when the model folder holds one (``text2token_head.safetensors``)
or ``--head`` names one, else the backbone checkpoint's MLM/LM head, else a head tied to the input embeddings.
Works for any BERT-like model; useful beyond Text2Token to see what an embedding encodes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.errors import EmbedkitError
from embedkit.model_ref import load_model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from embedkit.methods.text2token.vocab_head import VocabHead


@dataclass
class TokenView:
    """The top tokens of one text's embedding."""

    text: str
    tokens: list[tuple[str, float]]


def resolve_head(model: SentenceTransformer, model_path: str | None = None, head_file: str | None = None,
                 kind: str = "auto") -> tuple[VocabHead, float]:
    """(head, temperature): a trained head file when given or beside the model, else the backbone's head."""
    from embedkit.methods.text2token.vocab_head import HEAD_FILE, build_vocab_head, load_head

    candidate = Path(head_file) if head_file else (Path(model_path) / HEAD_FILE if model_path else None)
    if candidate is not None and (head_file or candidate.is_file()):
        head, meta = load_head(model, candidate)
        return head, float(meta.get("temperature", 1.0))
    return build_vocab_head(model, kind).eval(), 1.0


def top_tokens(
    model: SentenceTransformer, texts: list[str], head: VocabHead, top_k: int = 10, temperature: float = 1.0,
    keep_special: bool = False,
) -> list[TokenView]:
    """The ``top_k`` most probable tokens of ``softmax(head(e)/T)`` for each text's embedding ``e``."""
    import torch

    from embedkit.methods.text2token.targets import TokenTable

    table = TokenTable(model.tokenizer, head.vocab_size)
    with torch.no_grad():
        emb = model.encode(texts, convert_to_tensor=True, show_progress_bar=False).to(head.bias.device)
        probs = torch.softmax(head(emb).float() / temperature, dim=-1)
        if not keep_special:
            probs = probs.masked_fill(torch.from_numpy(table.special).to(probs.device), 0.0)
        values, ids = probs.topk(min(top_k, probs.shape[1]), dim=-1)
    return [
        TokenView(text, [(table.tokens[i], float(v)) for i, v in zip(row_ids.tolist(), row_vals.tolist(), strict=True)])
        for text, row_ids, row_vals in zip(texts, ids, values, strict=True)
    ]


def format_views(views: list[TokenView]) -> str:
    """Plain-text table: the text, then one ``token  probability`` line per top token."""
    lines = []
    for view in views:
        lines.append(f"{view.text}")
        lines += [f"  {rank:>3}. {tok:<20} {p:.4f}" for rank, (tok, p) in enumerate(view.tokens, 1)]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.top_k <= 0:
        raise EmbedkitError(f"--top-k: expected a positive number, got {args.top_k}")
    if args.temperature is not None and args.temperature <= 0:
        raise EmbedkitError(f"--temperature: expected a positive number, got {args.temperature}")
    for i, text in enumerate(args.texts, 1):  # an empty text embeds to noise: its ranking would mean nothing
        if not text.strip():
            which = f"TEXT {i} of {len(args.texts)}" if len(args.texts) > 1 else "TEXT"
            raise EmbedkitError(f"{which} is {'empty' if not text else 'whitespace only'}; expected a text to inspect")
    model, path = load_model(args.model, device="cpu")  # path: the local folder, or the Hub id
    head, temperature = resolve_head(model, path if Path(path).is_dir() else None, args.head, args.head_kind)
    temperature = args.temperature or temperature
    print(f"# model {args.model}; head: {head.source}; T={temperature:g}")
    print(format_views(top_tokens(model, args.texts, head, args.top_k, temperature, args.keep_special)))
    return 0


def add_cli(subparsers) -> None:
    """Register ``embedkit inspect MODEL TEXT... [--top-k N]``."""
    p = subparsers.add_parser("inspect", help="show the top vocabulary tokens a text's embedding maps to")
    p.add_argument("model", help="model folder, packaged model or Hub id")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="one or more texts")
    p.add_argument("--top-k", type=int, default=10, help="tokens to show per text (default 10)")
    p.add_argument("--head", help="a trained head: text2token_head.safetensors or a checkpoint folder")
    p.add_argument("--head-kind", choices=["auto", "pretrained", "tied"], default="auto",
                   help="without a trained head: the checkpoint's MLM/LM head (auto, pretrained) or a tied head")
    p.add_argument("--temperature", type=float, help="softmax temperature (default: the trained head's, else 1)")
    p.add_argument("--keep-special", action="store_true", help="also list special tokens ([CLS], [SEP], ...)")
    p.set_defaults(func=_run)
