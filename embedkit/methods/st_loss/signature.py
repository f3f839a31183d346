"""The constructor signatures of sentence-transformers' losses, read from their source without importing them.

Importing ``sentence_transformers.sentence_transformer.losses`` imports torch and transformers (seconds); a recipe
is validated before either loads. The loss files are parsed with :mod:`ast` instead: the class's ``__init__``
parameters, which have defaults, and the enum a default such as ``TripletDistanceMetric.EUCLIDEAN`` names (so a
recipe may write ``distance_metric: COSINE``). Nothing here imports torch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from importlib.util import find_spec
from pathlib import Path

# Functions of sentence_transformers.util a recipe may name for a ``similarity_fct`` parameter.
SIMILARITY_FUNCTIONS = ("cos_sim", "dot_score", "euclidean_sim", "manhattan_sim", "pairwise_cos_sim",
                        "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim")


@dataclass
class Param:
    """One ``__init__`` parameter: its name, whether it has a default, and the enum its default is a member of."""

    name: str
    required: bool
    enum: str | None = None  # e.g. "TripletDistanceMetric" for distance_metric=TripletDistanceMetric.EUCLIDEAN
    members: tuple[str, ...] = ()  # that enum's member names
    annotation: str = ""
    choices: tuple = ()  # the values of a Literal[...] annotation


@dataclass
class LossSignature:
    name: str
    params: dict[str, Param] = field(default_factory=dict)


def _losses_dir() -> Path | None:
    try:
        spec = find_spec("sentence_transformers")
    except (ImportError, ValueError):
        return None
    for base in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(base) / "sentence_transformer" / "losses"
        if (folder / "__init__.py").is_file():
            return folder
    return None


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


@cache
def loss_modules() -> dict[str, Path]:
    """Class name → the file defining it, for every name ``sentence_transformers...losses`` exports."""
    folder = _losses_dir()
    if folder is None:
        return {}
    out: dict[str, Path] = {}
    for node in _parse(folder / "__init__.py").body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = folder / (node.module.replace(".", "/") + ".py")
    return out


def loss_names() -> list[str]:
    """The loss classes sentence-transformers exports (names ending in ``Loss``)."""
    return sorted(n for n in loss_modules() if n.endswith("Loss"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _enum_members(name: str, tree: ast.Module) -> tuple[str, ...]:
    """Member names of the class ``name`` (defined in ``tree`` or in another loss file): its upper-case
    attributes and static methods (``BatchHardTripletLossDistanceFunction.cosine_distance``)."""
    cls = _class(tree, name)
    if cls is None and name in loss_modules():
        cls = _class(_parse(loss_modules()[name]), name)
    if cls is None:
        return ()
    out = []
    for node in cls.body:
        if isinstance(node, ast.Assign):
            out += [t.id for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out.append(node.name)
    return tuple(out)


def _literal(annotation: ast.expr | None) -> tuple:
    """The values of a ``Literal[...]`` annotation (written as a string under ``from __future__ import
    annotations`` or not), else ``()``."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return ()
    if not (isinstance(annotation, ast.Subscript) and isinstance(annotation.value, ast.Name)
            and annotation.value.id == "Literal"):
        return ()
    items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
    try:
        return tuple(ast.literal_eval(item) for item in items)
    except ValueError:
        return ()


@cache
def signature(name: str) -> LossSignature:
    """The ``__init__`` parameters of loss class ``name`` (following its base classes in the losses package
    when it defines none). ``KeyError`` when sentence-transformers has no such loss."""
    path = loss_modules().get(name)
    if path is None or not path.is_file():
        raise KeyError(name)
    tree = _parse(path)
    cls = _class(tree, name)
    if cls is None:
        raise KeyError(name)
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in loss_modules():
                return LossSignature(name, signature(base.id).params)
        return LossSignature(name)
    args = init.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults, strict=True)) + list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    out = LossSignature(name)
    for arg, default in pairs:
        if arg.arg == "self":
            continue
        param = Param(arg.arg, default is None, annotation=ast.unparse(arg.annotation) if arg.annotation else "",
                      choices=_literal(arg.annotation))
        if isinstance(default, ast.Attribute) and isinstance(default.value, ast.Name):
            members = _enum_members(default.value.id, tree)
            if members:
                param.enum, param.members = default.value.id, members
        out.params[arg.arg] = param
    return out
