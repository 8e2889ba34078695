"""The package's import graph has no cycles, and imports inside functions are kept for what must stay lazy.

Module-level imports must point downward (backbones/prompts/text < methods < engine < protocols < sweeps <
reproduce < cli; tests/test_reproduce_package.py checks that the library never imports sweeps or reproduce). An import
inside a function hides a cycle rather than removing it, so those are allowed only for heavy optional dependencies
and for the two entry points that must start fast (the command line and the package's lazy top-level API).
"""

from __future__ import annotations

import ast
from pathlib import Path

import rlptune

PACKAGE = Path(rlptune.__file__).resolve().parent

#: Third-party modules that may be imported inside functions: optional extras, or heavy and needed by few paths.
LAZY_THIRD_PARTY = {
    "fastapi",
    "uvicorn",
    "starlette",
    "httpx",
    "transformers",
    "peft",
    "huggingface_hub",
    "ray",
    "submitit",
    "sklearn",
    "jinja2",
    "tensorboard",
    "torch.utils.tensorboard",
    "matplotlib",
    "scipy",
    "open_clip",
    "tqdm",
    "PIL",
    "torchvision",
    "safetensors",
    "psutil",
    "multipart",
}
#: Package modules whose function-level imports of rlptune itself keep start-up fast (``rlptune --help`` in 0.1 s).
LAZY_ENTRY_POINTS = {
    "rlptune",
    "rlptune.cli",
    "rlptune.__main__",
    "rlptune.registry",
    "rlptune.protocols",
    "rlptune.report",
    "rlptune.serve",
    "rlptune.reproduce.command",
    # the transfer protocols: the command line lists protocols at start-up; their default targets read the dataset
    # catalogues (which import torch) on first use
    "rlptune.protocols.cross_dataset",
    "rlptune.protocols.domain_generalisation",
}
#: Package modules that are the boundary of an optional extra (they import it at their top): importing them lazily
#: keeps the extra optional (jinja2 for HTML reports, fastapi for the server).
OPTIONAL_BOUNDARY = {"rlptune.report.templates", "rlptune.serve.app"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    names = [base]
    for alias in node.names:  # ``from . import registry`` imports a module
        names.append(f"{base}.{alias.name}")
    return names


def _imports():
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top, nested = set(), []
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else _resolve(name, path.name == "__init__.py", node)
            )
            if node in tree.body or any(
                node in getattr(stmt, "body", []) for stmt in tree.body if isinstance(stmt, ast.Try)
            ):
                top.update(targets)
            else:
                nested.append((node.lineno, targets))
        modules[name] = (path, top, nested)
    return modules


def test_no_import_cycles():
    modules = _imports()
    graph = {m: {t for t in top if t in modules and t != m} for m, (_, top, _) in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle through them; drop submodule -> parent edges
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_diagnostics_stay_below_the_report_writer():
    """The trainer's diagnostics (rlptune.analysis) import no other package module than errors, and the report
    writer (rlptune.report), which reads finished runs, is imported by no module below it, not even lazily."""
    below = (
        "rlptune.analysis",
        "rlptune.engine",
        "rlptune.methods",
        "rlptune.prompts",
        "rlptune.text",
        "rlptune.backbones",
        "rlptune.data",
        "rlptune.micro",
    )
    offenders = []
    for name, (path, top, nested) in _imports().items():
        targets = set(top) | {t for _, ts in nested for t in ts}
        if name.startswith("rlptune.analysis"):
            offenders += [
                f"{name} imports {t}"
                for t in targets
                if t.startswith("rlptune.") and not t.startswith(("rlptune.analysis", "rlptune.errors"))
            ]
        if name.startswith(below):
            offenders += [
                f"{name} imports {t}" for t in targets if t == "rlptune.report" or t.startswith("rlptune.report.")
            ]
    assert not offenders, "layering (diagnostics < report writer):\n" + "\n".join(sorted(offenders))


def test_function_level_imports_only_for_lazy_dependencies():
    offenders = []
    for name, (path, _, nested) in _imports().items():
        for line, targets in nested:
            for target in targets:
                root = target.split(".")[0]
                if target.startswith("rlptune") and (
                    target in OPTIONAL_BOUNDARY or target.rsplit(".", 1)[0] in OPTIONAL_BOUNDARY
                ):
                    continue
                if target.startswith("rlptune") and name not in LAZY_ENTRY_POINTS:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
                elif (
                    not target.startswith("rlptune")
                    and not any(target == t or target.startswith(t + ".") for t in LAZY_THIRD_PARTY)
                    and root not in ("importlib",)
                ):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not offenders, "imports inside functions (move them to the module top):\n" + "\n".join(
        sorted(set(offenders))
    )
