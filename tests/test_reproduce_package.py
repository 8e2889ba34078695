"""The study (``rlptune.reproduce``) and the sweeps (``rlptune.sweeps``) as applications above the library: the
library never imports them, the study keeps no module state, shares no private names, and takes its methods from
the registry rather than from a list of names."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import rlptune
from rlptune import registry
from rlptune.cli import build_parser
from rlptune.methods import get_method_class
from rlptune.reproduce.analyse import analyse
from rlptune.reproduce.plan import StudyResults, baseline_placement, make_plan, prompt_methods, transfer_methods
from rlptune.reproduce.settings import BASELINE, PAPER_PARTS, PARTS, REFERENCE, SUBJECT, StudySettings, study_methods

PACKAGE = Path(rlptune.__file__).resolve().parent
#: The applications: they may import the study and the sweeps; every other module is the library.
APPLICATIONS = ("rlptune.cli", "rlptune.__main__", "rlptune.demo", "rlptune.reproduce", "rlptune.sweeps")


@functools.lru_cache(maxsize=1)
def _modules() -> tuple:
    """(module name, path, is a package, syntax tree) of every module of the package, parsed once."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path, path.name == "__init__.py", ast.parse(path.read_text(encoding="utf-8"))))
    return tuple(out)


def _imported(module: str, is_package: bool, node: ast.AST) -> list[tuple[str, str]]:
    """(module imported, name imported) of one import statement, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [(a.name, "") for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        keep = len(module.split(".")) - node.level + (1 if is_package else 0)
        base = ".".join(module.split(".")[:keep] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [(base, a.name) for a in node.names]


def _is_under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_library_never_imports_the_study_or_the_sweeps():
    """Layers: library (backbones … engine, analysis, protocols) < sweeps < reproduce / demo < cli. An import of the
    study or the sweeps from the library, even inside a function, would make the library depend on its apps."""
    offenders = []
    for name, path, is_package, tree in _modules():
        if _is_under(name, APPLICATIONS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for module, item in _imported(name, is_package, node):
                    target = f"{module}.{item}" if item else module
                    if _is_under(module, ("rlptune.reproduce", "rlptune.sweeps")) or _is_under(
                        target, ("rlptune.reproduce", "rlptune.sweeps")
                    ):
                        offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {target}")
    assert not offenders, "\n".join(offenders)


def test_sweeps_sit_below_the_study():
    for name, path, is_package, tree in _modules():
        if _is_under(name, ("rlptune.sweeps",)):
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    assert not any(
                        _is_under(m, ("rlptune.reproduce", "rlptune.demo", "rlptune.cli"))
                        for m, _ in _imported(name, is_package, node)
                    ), f"{path}:{node.lineno}"


def test_no_private_name_crosses_a_module_of_the_study_or_the_sweeps():
    """What the study shares between its modules (or takes from the library) is public: a private name imported
    from elsewhere is a coupling nobody sees when they change it."""
    offenders = []
    for name, path, is_package, tree in _modules():
        if not _is_under(name, ("rlptune.reproduce", "rlptune.sweeps")):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for module, item in _imported(name, is_package, node):
                    if module.startswith("rlptune") and item.startswith("_") and not item.startswith("__"):
                        offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {module}.{item}")
    assert not offenders, "\n".join(offenders)


def test_the_study_keeps_no_module_state():
    """No ``global`` statement and no module-level list or dict that a function writes: two studies in one process
    (a server, a notebook, the tests) must not see each other's results folder."""
    for name, path, _, tree in _modules():
        if not _is_under(name, ("rlptune.reproduce",)):
            continue
        assert not any(isinstance(n, ast.Global) for n in ast.walk(tree)), path
        mutable = {
            t.id
            for stmt in tree.body
            if isinstance(stmt, (ast.Assign, ast.AnnAssign))
            for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
            if isinstance(t, ast.Name) and isinstance(stmt.value, (ast.List, ast.Dict, ast.ListComp, ast.DictComp))
        }
        written = {
            n.value.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
        }
        assert not (mutable & written), f"{path}: module-level containers written by functions: {mutable & written}"


def _result(spec, base: float, new: float) -> dict:
    return {
        "method": spec.method,
        "dataset": spec.dataset,
        "seed": spec.seed,
        "shots": spec.shots,
        "protocol": "base2new",
        "tag": spec.tag(),
        "trainable_params": 10,
        "metrics": {"base": {"accuracy": base}, "new": {"accuracy": new}},
    }


def test_two_studies_in_one_process_read_their_own_results(tmp_path):
    """The results folder travels with the results object: analysing study A, then B, then A again gives A's
    numbers both times (a module global holding "the current folder" gave the last study's)."""
    settings = StudySettings(backbone="micro", quick=True, seeds=[1, 2], parts=["base2new"]).resolved()
    plan = make_plan(settings)
    studies = {}
    for label, base in (("a", 60.0), ("b", 40.0)):
        results = StudyResults(tmp_path / label)
        results.runs = {results.key(s): _result(s, base, base / 2) for specs in plan.runs.values() for s in specs}
        studies[label] = results
    first = analyse(plan, studies["a"], settings)[0][0]
    other = analyse(plan, studies["b"], settings)[0][0]
    again = analyse(plan, studies["a"], settings)[0][0]
    assert first.rows == again.rows and first.rows[0]["base"] == pytest.approx(60.0)
    assert other.rows[0]["base"] == pytest.approx(40.0) and other.rows[0]["runs"] == first.rows[0]["runs"] > 0


def test_the_study_takes_its_methods_from_the_registry_and_the_recipes():
    """Part 1 is every registered method with a recipe (the subject last); part 2 every prompt method that can
    change its prompt kind, ablations left to the method they ablate; part 5 the reference, the baseline's
    placement and the subject. These are the published study's lists: the refactor must not move them."""
    assert study_methods() == [
        "zeroshot",
        "linear_probe",
        "coop",
        "cocoop",
        "kgcoop",
        "deep_text",
        "deep_vision",
        "ivlp",
        "maple",
        "promptsrc",
        "clip_lora",
        "rlp",
    ]
    assert prompt_methods() == ["coop", "cocoop", "kgcoop", "ivlp", "maple", "promptsrc"]
    assert baseline_placement() == ["coop", "kgcoop"]
    assert transfer_methods(StudySettings()) == [REFERENCE, "coop", "kgcoop", SUBJECT]
    assert transfer_methods(StudySettings(quick=True)) == [REFERENCE, BASELINE, SUBJECT]
    for name in prompt_methods():
        cls = get_method_class(name)
        assert cls.learns_prompt and cls.requires_prompt_kind is None and cls.ablation_of is None


def test_a_trait_changes_the_study_and_a_method_without_a_recipe_stays_out(monkeypatch):
    """The lists follow the registry: an ablation that stops being one joins part 2, a method that stops learning a
    prompt leaves it, and a registered method with no official recipe is not part of the study."""
    monkeypatch.setattr(get_method_class("deep_text"), "ablation_of", None)
    monkeypatch.setattr(get_method_class("cocoop"), "learns_prompt", False)
    assert prompt_methods() == ["coop", "kgcoop", "deep_text", "ivlp", "maple", "promptsrc"]
    coop = get_method_class("coop")
    monkeypatch.setitem(
        registry._METHODS,
        "outside_coop",
        registry.MethodEntry("outside_coop", type("OutsideCoOp", (coop,), {}), coop.options_class),
    )
    assert "outside_coop" in registry.method_names() and "outside_coop" not in study_methods()
    assert "outside_coop" not in prompt_methods()


def test_the_part_names_have_one_owner():
    """The command's ``--parts`` choices are the study's parts (the package root no longer keeps a copy)."""
    parser = build_parser(["reproduce"])
    sub = next(a for a in parser._actions if a.dest == "command")
    reproduce = sub.choices["reproduce"]
    parts = next(a for a in reproduce._actions if a.dest == "parts")
    assert tuple(parts.choices) == PARTS and parts.default == list(PAPER_PARTS)
    spelled = [
        p for p in PACKAGE.rglob("*.py") if '"base2new", "lowrank", "rank", "ablation"' in p.read_text(encoding="utf-8")
    ]
    assert [p.relative_to(PACKAGE).as_posix() for p in spelled] == ["reproduce/settings.py"]
    assert not (PACKAGE / "evidence.py").exists() and not (PACKAGE / "protocols" / "evidence.py").exists()


def test_the_command_line_loads_the_study_and_the_sweeps_without_torch():
    code = (
        "import sys, rlptune.cli as c; c.build_parser(['reproduce']); import rlptune.reproduce.command, "
        "rlptune.sweeps.executors; assert 'torch' not in sys.modules, 'torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(PACKAGE.parent), "PATH": ""})


@hsettings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    parts=st.lists(st.sampled_from(["base2new", "lowrank", "transfer"]), min_size=1, unique=True),
    quick=st.booleans(),
    exclude=st.lists(st.sampled_from(["coop", "kgcoop", "clip_lora", "zeroshot"]), unique=True),
)
def test_a_plan_never_runs_an_excluded_method_and_never_a_run_twice(parts, quick, exclude):
    """Whatever parts, size and exclusions: excluded methods have no run (each is listed as skipped), no run folder
    is planned twice, and part 2 holds only prompt methods."""
    study = StudySettings(backbone="micro", seeds=[1], parts=parts, quick=quick, exclude=exclude).resolved()
    plan = make_plan(study)
    methods = {s.method for specs in plan.runs.values() for s in specs}
    assert not methods & set(exclude)
    assert {n for (_, n) in plan.skipped} >= {m for m in exclude if "base2new" in parts}
    dirs = [str(s.run_dir("r")) for s in plan.all_specs()]
    assert len(dirs) == len(set(dirs))
    assert {v.method for v in plan.variants.get("lowrank", [])} <= set(prompt_methods())
