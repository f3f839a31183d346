"""Domain experts with enforced routing (Hallee et al. 2024, "Contrastive Learning and Mixture of Experts Enables
Precise Vector Embeddings"; docs/experts.md).

The feed-forward block of each chosen encoder layer, ``FFN(h) = W_out · GELU(W_in · h + b_in) + b_out``, becomes
N copies ``FFN_d`` (one per domain d, each initialised from the pretrained block); attention, embeddings,
LayerNorms and pooling stay shared. With *enforced* routing a text of domain d goes through ``FFN_d`` in every
chosen layer, so

    e_d(x) = Pool(Encoder(x; θ_shared, θ_d))

and a training step on a batch of domain d reaches only θ_shared and θ_d: the other experts get no gradient.

The model is sentence-transformers' own ``Router`` with one route per domain, each route a full
``[Transformer, Pooling, (Normalize)]``. In memory the routes' Transformers share every parameter object except
their experts' (tied), so the optimizer sees each shared weight once; saved, each route is a full encoder
(N copies on disk) that ``SentenceTransformer(path)`` loads and routes: ``model.encode(texts, task="sts")``.
Training routes each row by its source's name in the features (sentence-transformers' ``router_mapping``; a batch
is always one source's: the multi-task sampler), with the router's ``default_route`` set to the same source as the
fallback (:func:`set_route`); evaluation routes by the recipe's ``model.experts.eval_routes``.
"""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from embedkit.errors import EmbedkitError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from embedkit.recipe import ExpertsSection

EXPERT_PARTS = ("intermediate.dense", "output.dense")  # a BERT-family layer's two FFN linear layers
MARK = "_embedkit_experts"  # attribute on the Router: {"eval_routes": ..., "default": ..., "layers": ...}


def encoder_layers(transformer: nn.Module) -> nn.ModuleList:
    """The encoder layers of a sentence-transformers ``Transformer`` (BERT family: ``encoder.layer``)."""
    layers = getattr(getattr(getattr(transformer, "auto_model", None), "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not all(
            isinstance(layer.get_submodule(part), nn.Linear) for layer in layers for part in EXPERT_PARTS):
        raise EmbedkitError("model.experts: kind ffn needs a BERT-family encoder (encoder.layer[i].intermediate."
                            "dense and .output.dense); this model has another layout")
    return layers


def layer_indices(layers: list[int] | str, count: int) -> list[int]:
    return list(range(count)) if layers == "all" else sorted(layers)


def expert_names(transformer: nn.Module, layers: list[int] | str) -> set[str]:
    """Names (in the Transformer module) of the parameters that are one domain's own: the chosen layers' FFN."""
    count = len(encoder_layers(transformer))
    bad = [i for i in layer_indices(layers, count) if i >= count]
    if bad:
        raise EmbedkitError(f"model.experts.layers: layer {bad[0]} out of range; the encoder has {count} layers "
                            f"(0 .. {count - 1})")
    own = {id(p) for i in layer_indices(layers, count) for part in EXPERT_PARTS
           for p in encoder_layers(transformer)[i].get_submodule(part).parameters()}
    return {name for name, p in transformer.named_parameters(remove_duplicate=False) if id(p) in own}


def tie_shared(copy_: nn.Module, base: nn.Module, own: set[str]) -> None:
    """Make every parameter of ``copy_`` except those named in ``own`` the very parameter object of ``base``."""
    for name, _ in list(copy_.named_parameters(remove_duplicate=False)):
        if name in own:
            continue
        module_name, _, attr = name.rpartition(".")
        setattr(copy_.get_submodule(module_name), attr, base.get_parameter(name))


def add_experts(model: SentenceTransformer, cfg: ExpertsSection) -> SentenceTransformer:
    """``model`` (``[Transformer, Pooling, ...]``) rebuilt as one ``Router`` of one route per domain whose
    Transformers share everything but the chosen layers' FFN (each expert a copy of the pretrained block)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Router

    modules = list(model)
    base, rest = modules[0], modules[1:]
    own = expert_names(base, cfg.layers)
    routes: dict[str, list[nn.Module]] = {}
    for k, domain in enumerate(cfg.domains):
        transformer = base if k == 0 else copy.deepcopy(base)
        if k:
            tie_shared(transformer, base, own)
        routes[domain] = [transformer, *rest]  # pooling and normalisation hold no weights: one instance each
    router = Router(routes, default_route=cfg.domains[0], allow_empty_key=False)
    own_params = {d: [routes[d][0].get_parameter(n) for n in sorted(own)] for d in cfg.domains}
    setattr(router, MARK, {"eval_routes": dict(cfg.eval_routes), "default": cfg.default,
                           "layers": layer_indices(cfg.layers, len(encoder_layers(base))),
                           "domains": list(cfg.domains), "own": own_params, "active": set()})
    router.max_seq_length = base.max_seq_length  # SentenceTransformer.max_seq_length reads the first module's
    return SentenceTransformer(modules=[router], device=str(model.device), prompts=dict(model.prompts),
                               default_prompt_name=model.default_prompt_name)


def router_of(model: nn.Module) -> Any:
    """The experts' ``Router`` of a model (under DDP or torch.compile too), or ``None``."""
    from sentence_transformers.sentence_transformer.modules import Router

    for module in model.modules():
        if isinstance(module, Router):
            return module
    return None


def set_route(model: nn.Module, domain: str | None, training: bool = True) -> None:
    """Send the next forwards of a routed model through ``domain``'s route (no-op for another model); a
    ``training`` route marks the domain's experts as this step's (:func:`drop_inactive_gradients`).

    In training the rows themselves carry their route (sentence-transformers' per-dataset ``router_mapping`` puts
    the source's name in the features, GradCache's re-forwards included); this sets the same domain, from the same
    batch, as the fallback for any forward of the step that carries none, and is what marks the step's expert."""
    router = router_of(model)
    if router is not None and domain is not None:
        if domain not in router.sub_modules:
            raise EmbedkitError(f"no route {domain!r}; the model routes {', '.join(router.sub_modules)}")
        router.default_route = domain
        info = getattr(router, MARK, None)
        if info is not None and training:
            info["active"].add(domain)


def drop_inactive_gradients(model: nn.Module) -> None:
    """After a training step's backward: the experts of domains the step did not route to get no gradient
    (``None``), so the optimizer leaves them and their moments alone. One process has none there already; DDP
    (``find_unused_parameters``) hands unused parameters a zero gradient, which AdamW's momentum would still turn
    into an update."""
    router = router_of(model)
    info = getattr(router, MARK, None) if router is not None else None
    if info is None:
        return
    for domain, params in info["own"].items():
        if domain not in info["active"]:
            for p in params:
                p.grad = None
    info["active"] = set()


@contextmanager
def routed(model: Any, domain: str | None) -> Iterator[None]:
    """Inside the block, forwards without a task go through ``domain``'s route (restored after)."""
    router = router_of(model) if isinstance(model, nn.Module) else None
    if router is None or domain is None:
        yield
        return
    before = router.default_route
    set_route(model, domain, training=False)
    try:
        yield
    finally:
        router.default_route = before


def eval_route(model: Any, kind: str) -> str | None:
    """The route an evaluation of ``kind`` (``stsb``/``sts``, ``rerank``, ``retrieval``) goes through during a
    training run (``model.experts.eval_routes``); ``None`` for a model without experts."""
    router = router_of(model) if isinstance(model, nn.Module) else None
    info = getattr(router, MARK, None) if router is not None else None
    if info is None:
        return None
    return info["eval_routes"].get("sts" if kind == "stsb" else kind)


@contextmanager
def routed_eval(model: Any, kind: str) -> Iterator[None]:
    """:func:`routed` through the route the recipe gives evaluations of ``kind`` (no-op without experts)."""
    with routed(model, eval_route(model, kind)):
        yield


def finalize(model: nn.Module) -> None:
    """Before the final save: the saved router's default route is the recipe's ``model.experts.default`` (with
    none, ``encode`` must name a task)."""
    router = router_of(model)
    info = getattr(router, MARK, None) if router is not None else None
    if info is not None:
        router.default_route = info["default"]
        router.allow_empty_key = False


def describe(model: nn.Module) -> dict[str, Any] | None:
    """Domains, expert layers, unique parameters and parameters per route (for results.json and the card)."""
    router = router_of(model)
    if router is None:
        return None
    info = getattr(router, MARK, None) or {}
    unique = sum(p.numel() for p in model.parameters())
    first = next(iter(router.sub_modules.values()))
    per_route = sum(p.numel() for p in first.parameters())
    return {"domains": list(router.sub_modules), "layers": info.get("layers"), "unique_parameters": unique,
            "parameters_per_route": per_route, "default": info.get("default")}


# ----------------------------------------------------------------------------------------------------------
# A learned router for text of unknown domain (docs/experts.md): a linear classifier on a shared, nearly free
# representation of the text, the mean of its tokens' rows of the shared word-embedding table (no encoder pass).

ROUTER_FILE = "domain_router.json"


def text_features(router: Any, features: dict[str, Any]) -> Any:
    """Each row's mean shared token embedding (over its attention mask): the learned router's input."""

    transformer = next(iter(router.sub_modules.values()))[0]
    table = transformer.auto_model.embeddings.word_embeddings
    ids, mask = features["input_ids"], features["attention_mask"].to(torch.float32)
    with torch.no_grad():
        summed = (table(ids).float() * mask[..., None]).sum(1)
    return summed / mask.sum(1, keepdim=True).clamp(min=1.0)


class DomainClassifier:
    """Multinomial (binary: one-vs-rest sigmoid) logistic regression weights, stored as JSON, never pickle."""

    def __init__(self, domains: list[str], coef: list[list[float]], intercept: list[float],
                 info: dict[str, Any] | None = None) -> None:
        self.domains, self.coef, self.intercept, self.info = list(domains), coef, intercept, dict(info or {})

    def predict(self, x: Any) -> Any:
        """The index (into ``domains``) of each row's domain."""

        w = torch.tensor(self.coef, dtype=torch.float32, device=x.device)
        logits = x.float() @ w.T + torch.tensor(self.intercept, dtype=torch.float32, device=x.device)
        return (logits[:, 0] > 0).long() if w.shape[0] == 1 else logits.argmax(1)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "logistic-regression on mean shared token embeddings", "domains": self.domains,
                "coef": self.coef, "intercept": self.intercept, **self.info}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainClassifier:
        info = {k: v for k, v in data.items() if k not in ("kind", "domains", "coef", "intercept")}
        return cls(data["domains"], data["coef"], data["intercept"], info)


def domain_texts(dataset: Any) -> dict[str, list[str]]:
    """Each source's training texts (every text column of its split of the multi-task ``DatasetDict``)."""
    out = {}
    for name, split in dataset.items():
        columns = [c for c, f in split.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        plain = split.with_format(None)  # the raw rows: the trainer's transform (dataset_name) left out
        out[name] = [t for c in columns for t in plain[c] if isinstance(t, str)]
    return out


def fit_classifier(model: SentenceTransformer, texts: dict[str, list[str]], held_out: float = 0.2,
                   seed: int = 0, batch_size: int = 256) -> DomainClassifier:
    """Fit the router on ``texts`` (domain → its training texts); ``held_out`` of each domain's distinct texts
    (seeded) is kept out of the fit and scores it (``info["held_out_accuracy"]``)."""
    from sklearn.linear_model import LogisticRegression

    router = router_of(model)
    domains = list(router.sub_modules)
    rng = np.random.default_rng(seed)
    rows, labels, split = [], [], []
    for k, domain in enumerate(domains):
        unique = list(dict.fromkeys(texts.get(domain, [])))
        test = rng.random(len(unique)) < held_out
        rows += unique
        labels += [k] * len(unique)
        split += test.tolist()
    feats = []
    with routed(model, domains[0]):  # tokenisation: any route (one tokenizer)
        for i in range(0, len(rows), batch_size):
            tokens = model.tokenize(rows[i:i + batch_size])
            feats.append(text_features(router, {k: v.to(model.device) for k, v in tokens.items()
                                                if isinstance(v, torch.Tensor)}).cpu().numpy())
    x, y, test = np.concatenate(feats), np.array(labels), np.array(split)
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(x[~test], y[~test])
    accuracy = float((clf.predict(x[test]) == y[test]).mean()) if test.any() else None
    return DomainClassifier(domains, clf.coef_.tolist(), clf.intercept_.tolist(),
                            {"held_out_accuracy": accuracy, "train_texts": int((~test).sum()),
                             "held_out_texts": int(test.sum()), "seed": seed})


def use_classifier(model: nn.Module, clf: DomainClassifier | None) -> None:
    """Route every row the classifier's way when no task is given (``None``: back to the router's own rule).
    Rows of one batch may go to different experts: each expert encodes its rows, the embeddings are put back in
    order."""


    router = router_of(model)
    if clf is None:
        router.__dict__.pop("forward", None)
        return
    if list(router.sub_modules) != clf.domains:
        raise EmbedkitError(f"the domain router knows {clf.domains}; the model routes {list(router.sub_modules)}")
    plain = type(router).forward
    if router.default_route is None:  # tokenisation needs a route; every route has the same tokenizer
        router.default_route = clf.domains[0]

    def forward(self: Any, features: dict[str, Any], task: str | None = None, **kwargs: Any) -> dict[str, Any]:
        task = task if task is not None else features.get("task")
        if task is not None:
            return plain(self, features, task=task, **kwargs)
        choice = clf.predict(text_features(self, features))
        rows = features["input_ids"].shape[0]
        out = None
        for k, domain in enumerate(clf.domains):
            index = (choice == k).nonzero()[:, 0]
            if not len(index):
                continue
            part = {key: (v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows else v)
                    for key, v in features.items()}
            emb = plain(self, part, task=domain, **kwargs)["sentence_embedding"]
            if out is None:
                out = emb.new_zeros((rows, *emb.shape[1:]))
            out[index] = emb
        return {**features, "sentence_embedding": out}

    router.forward = types.MethodType(forward, router)


def choose_route(model: nn.Module, task: str | None, folder: str | None = None, what: str = "--task") -> str:
    """How ``embedkit encode`` / ``eval`` route a loaded model, in words: ``task`` (a domain) when given; else
    the folder's learned router (``domain_router.json``); else the saved default route. Refuses a task for a
    model without routes, an unknown domain, and a model that cannot route without one."""

    router = router_of(model)
    if router is None:
        if task is not None:
            raise EmbedkitError(f"{what} {task}: this model has no domain routes (only a model trained with "
                                "model.experts has)")
        return ""
    routes = ", ".join(router.sub_modules)
    if task is not None:
        if task not in router.sub_modules:
            raise EmbedkitError(f"{what} {task}: not a route of this model; expected one of {routes}")
        router.default_route = task
        return f"through the {task!r} expert"
    learned = Path(folder) / ROUTER_FILE if folder else None
    if learned is not None and learned.is_file():
        clf = DomainClassifier.from_json(json.loads(learned.read_text(encoding="utf-8")))
        use_classifier(model, clf)
        return f"each text through the expert its learned router ({ROUTER_FILE}) picks"
    if router.default_route is not None:
        return f"through the default {router.default_route!r} expert"
    raise EmbedkitError(f"this model has one expert per domain ({routes}) and no default route: pass {what} "
                        "NAME to choose one")
