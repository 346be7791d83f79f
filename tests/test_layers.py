"""The layering of docs/ARCHITECTURE.md, checked: every import of every module (at module level and
inside functions), parsed, must follow the layer rules, and the import graph has no cycle.

Imports under `if TYPE_CHECKING:` never run and are left out. Imports by name (importlib) are
allowed only where DYNAMIC lists them: the registry loading the built-in evaluators as a plugin
package, `mtp-bench exec` loading one evaluator module, the CLI's table of commands, and the
deprecated forwards of `mtp_bench.reference_model.pretrained_heads` (one release).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mtp_bench": ROOT / "mtp_bench", "mtp_bench.evals": ROOT / "evals",
            "mtp_bench.reference_model": ROOT / "reference_model"}

# layer -> the layers it may import (besides itself)
RULES: dict[str, set[str]] = {
    "api": set(),
    "reference_model": {"api:files"},  # errors and file helpers only (FILE_HELPERS)
    "models": {"api", "reference_model"},
    "generation": {"api", "reference_model", "models"},
    "execution": {"api"},
    "scoring": {"api", "generation", "execution"},
    "evals": {"api", "reference_model", "models", "generation", "execution", "scoring"},
    "reporting": {"api", "models", "scoring"},
    "evaluation": {"api", "reference_model", "models", "generation", "execution", "scoring", "reporting"},
    "commands": {"api", "reference_model", "models", "generation", "execution", "scoring", "evals", "reporting",
                 "evaluation", "testing"},
    "testing": {"api"},
    "entry": {"api", "models", "evaluation", "commands"},
    "shim": {"api", "models", "generation", "execution", "scoring", "reporting", "evaluation", "commands"},
}
FILE_HELPERS = {"mtp_bench.api.errors", "mtp_bench.api.atomic", "mtp_bench.api.jsonl",
                "mtp_bench.api.files", "mtp_bench.api.paths", "mtp_bench.api.version"}
SHIMS = {"registry", "metrics", "results", "vllm_backend", "speculative", "evalplus", "chat", "code_extract",
         "wire", "runner", "repro"}
# module -> the modules it may load by name
DYNAMIC = {
    "mtp_bench.api.registry": {"mtp_bench.evals"},
    "mtp_bench.commands.exec": {"mtp_bench.evals.humaneval", "mtp_bench.evals.mbpp"},
    "mtp_bench.reference_model.pretrained_heads": {"mtp_bench.models.heads"},
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg, d in PACKAGES.items():
        for p in sorted(d.rglob("*.py")):
            if pkg == "mtp_bench" and p.relative_to(d).parts[0] in ("evals", "reference_model"):
                continue
            parts = list(p.relative_to(d).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = p
    return out


def layer(mod: str) -> str:
    parts = mod.split(".")
    if mod in ("mtp_bench", "mtp_bench.cli", "mtp_bench.__main__"):
        return "entry"
    if len(parts) == 2 and parts[1] in SHIMS:
        return "shim"
    if parts[1] in ("evaluation", "testing"):
        return parts[1]
    return parts[1]


def _type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return t is not None and (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING"
                              or isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(mod: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(static imports, modules loaded by name) of one module, as module names inside the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    static, dynamic = set(), set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            static.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                static.add(sub if sub in known else target)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                dynamic.add(node.args[0].value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    own = lambda names: {n for n in names if n == "mtp_bench" or n.startswith("mtp_bench.")}  # noqa: E731
    return own(static), own(dynamic)


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = modules()
    edges, dyn = {}, {}
    for mod, path in known.items():
        edges[mod], dyn[mod] = imports(mod, path, known)
    return edges, dyn


def allowed(src: str, dst: str) -> bool:
    a, b = layer(src), layer(dst)
    if a == "evals" and b == "evals":  # one evaluator a file: only the package imports them
        return src == "mtp_bench.evals" or dst == "mtp_bench.evals"
    if a == b:
        return True
    if a == "reference_model":
        return dst in FILE_HELPERS
    if b == "shim":
        return False
    return b in RULES[a]


def test_every_import_follows_the_layer_rules():
    edges, _ = graph()
    bad = sorted(f"{s} ({layer(s)}) imports {d} ({layer(d)})" for s, ds in edges.items() for d in ds
                 if not allowed(s, d))
    assert not bad, "imports that break docs/ARCHITECTURE.md's layer rules:\n" + "\n".join(bad)


def test_only_the_listed_modules_import_by_name():
    _, dyn = graph()
    extra = sorted(f"{s} loads {d} by name" for s, ds in dyn.items() for d in ds
                   if d not in DYNAMIC.get(s, set()) and not (s == "mtp_bench.cli" and layer(d) == "commands"))
    assert not extra, "\n".join(extra)


def test_the_import_graph_has_no_cycle():
    edges, _ = graph()
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):  # Tarjan, iterative enough for a few hundred modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    assert not sccs, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sccs)


def test_nothing_imports_the_root_package_or_a_deprecated_alias():
    edges, _ = graph()
    bad = sorted(f"{s} imports {d}" for s, ds in edges.items() for d in ds
                 if (d == "mtp_bench" and s != "mtp_bench") or layer(d) == "shim")
    assert not bad, "\n".join(bad)
