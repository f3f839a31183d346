"""The package's layers flow one way (docs/architecture.md): every import of every module, including imports
inside functions, goes to the same or a lower layer, and the module graph has no cycle. Imports under
``if TYPE_CHECKING:`` are annotations only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "embedkit"

# Lowest first. A module belongs to the first layer with a prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("embedkit.errors", "embedkit.paths", "embedkit.log", "embedkit.version", "embedkit.outputs",
                    "embedkit.distributed", "embedkit.cliargs")),
    ("recipe and data", ("embedkit.recipe", "embedkit.data", "embedkit.model_ref", "embedkit.model_files",
                         "embedkit.backends")),
    ("models and encoding", ("embedkit.modeling", "embedkit.modules", "embedkit.encoding", "embedkit.augment",
                             "embedkit.merging", "embedkit.experts")),
    ("shared loss machinery", ("embedkit.losses", "embedkit.mining")),
    ("methods and validation", ("embedkit.methods", "embedkit.validate")),  # validation needs the method registry
    ("evaluation", ("embedkit.evaluation",)),
    ("publishing", ("embedkit.card", "embedkit.hub")),
    ("training", ("embedkit.training",)),
    ("commands and API", ("embedkit.encode", "embedkit.export", "embedkit.sweep", "embedkit.cli", "embedkit")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} is in no layer of LAYERS: add it where it belongs")


def internal_imports(path: Path, modules: set[str], this: str | None = None) -> set[str]:
    """The embedkit modules ``path`` (module ``this``) imports, at any depth (functions included), outside
    TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    this = this or module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("embedkit"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("embedkit")}
    return {m for m in found if m != this}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: internal_imports(path, set(files)) for name, path in files.items()}


def test_every_module_has_a_layer():
    for name in graph():
        layer_of(name)


def test_no_import_from_a_higher_layer():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The claims above only hold if a lazy import counts: check the parser on a small file."""
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    from embedkit.training.run import train\n    from . import paths\n")
    found = internal_imports(fake, {"embedkit.training.run", "embedkit.paths"}, this="embedkit.probe")
    assert found == {"embedkit.training.run", "embedkit.paths"}


# HEAVY: libraries whose import costs over half a second here (python -X importtime, 2-core EPYC): the only
# reason an import may sit inside a function is to keep one of them off the validation and CLI-parse path.
HEAVY = frozenset({"torch", "transformers", "sentence_transformers", "datasets", "mteb", "matplotlib", "scipy",
                   "sklearn", "peft", "faiss", "pandas", "accelerate",
                   "onnx", "onnxruntime", "openvino",  # the export extra: optional installs (onnx 1.1 s)
                   "mergekit"})  # the merge extra (1.3 s)


def _imports(path: Path, this: str, modules: set[str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(top-level, inside-function) imports of ``path`` outside TYPE_CHECKING, as (line, target) where target is
    an embedkit module name or a third-party top-level package name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    top: list[tuple[int, str]] = []
    lazy: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("embedkit"):
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                targets = [base.split(".")[0]]
        else:
            targets = [a.name if a.name.startswith("embedkit") else a.name.split(".")[0] for a in node.names]
        (lazy if id(node) in in_function else top).extend((node.lineno, t) for t in targets)
    return top, lazy


def heavy_at_import(extra: dict[str, list[str]] | None = None) -> dict[str, set[str]]:
    """For each embedkit module, the heavy libraries that importing it loads: its top-level imports and its
    parent packages' (``import a.b`` runs ``a/__init__`` first), followed to a fixed point (the package graph at
    import time has cycles through ``__init__`` files). ``extra`` adds top-level imports (module -> targets)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    tops = {name: [t for _, t in _imports(path, name, set(files))[0]] + (extra or {}).get(name, [])
            for name, path in files.items()}
    deps = {name: [p for p in files if name.startswith(p + ".")] + [t for t in tops[name] if t in files]
            for name in files}
    heavy = {name: {t for t in tops[name] if not t.startswith("embedkit")} & HEAVY for name in files}
    changed = True
    while changed:
        changed = False
        for name in files:
            grown = heavy[name].union(*(heavy[d] for d in deps[name]))
            if grown != heavy[name]:
                heavy[name], changed = grown, True
    return heavy


def test_lazy_imports_only_keep_a_heavy_library_off_the_import_path():
    """An import inside a function must spare its module a heavy library (HEAVY) that the module does not load
    anyway; anything else (stdlib, light libraries, torch-free embedkit modules) is imported at the top."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    heavy = heavy_at_import()
    bad = []
    for name, path in sorted(files.items()):
        for line, target in _imports(path, name, set(files))[1]:
            spared = (heavy.get(target, set()) if target.startswith("embedkit") else {target} & HEAVY) - heavy[name]
            if not spared:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target} (spares no heavy library)")
    assert not bad, "move these imports to the top of their module:\n" + "\n".join(bad)
