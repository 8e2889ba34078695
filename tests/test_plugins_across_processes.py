"""Plug-ins cross process boundaries: a method registered by a module outside the package (on a temporary folder)
trains in every worker of ``rlptune run --jobs 2``, of a local Ray instance and of submitit's local Slurm executor,
because the sweep hands each worker its plug-in modules (and where they were imported from); an entry-point plug-in
(a faked installed distribution) is loaded by the command line; a plug-in that cannot be imported is one line
naming it. The proof behind the "Plug-ins" section of docs/EXTENDING.md."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import sys
import textwrap
from pathlib import Path

import pytest

from rlptune import registry
from rlptune.cli import main
from rlptune.errors import RlptuneError
from rlptune.sweeps.runner import make_specs, run_sweep
from rlptune.sweeps.executors import ExecutorSettings, Task, run_task

TRAIN = {"train": {"epochs": 1, "aug_views": 0, "batch_size": 16}}
_NUMBERS = itertools.count()

METHOD_PLUGIN = '''
"""CoOp under another name, registered from outside the package, written as outside methods were before methods
got declared settings: a positional config handed on to CoOp, and a read of a section CoOp declares."""
import rlptune
from rlptune.methods.coop import CoOp


@rlptune.register_method("{name}")
class ToyPluginCoOp(CoOp):
    def __init__(self, config, backbone, classnames, dataset_template=None):
        super().__init__(config, backbone, classnames, dataset_template)
        self.words = config.prompt.ctx_init
'''


@pytest.fixture()
def clean_registry(monkeypatch):
    """Whatever a test registers or loads is forgotten afterwards (other tests' workers must not import it)."""
    registry.method_names(), registry.protocol_names()  # the built-ins, before the copies
    for name in ("_METHODS", "_PROTOCOLS", "_PLUGIN_MODULES"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    before = set(sys.modules)
    yield monkeypatch
    for module in set(sys.modules) - before:
        if module.startswith("toy_"):
            del sys.modules[module]


@pytest.fixture()
def method_plugin(tmp_path, clean_registry):
    """(module, method name): a plug-in module in a folder of its own, put on this process's sys.path only."""
    number = next(_NUMBERS)
    module, method = f"toy_method_plugin_{number}", f"toy_plugin_coop_{number}"
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{module}.py").write_text(METHOD_PLUGIN.format(name=method))
    clean_registry.syspath_prepend(str(folder))
    return module, method


@pytest.fixture()
def micro_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "micro-cache"
    monkeypatch.setenv("RLPTUNE_CACHE", str(cache))
    return cache


def _specs(method: str, arch: Path):
    return make_specs("few-shot", ["micro-colors"], [method], [1, 2], [1], backbone=str(arch), base_overrides=TRAIN)


def _methods_of(results: Path) -> list[str]:
    return sorted(json.loads(p.read_text())["method"] for p in results.rglob("result.json"))


def test_a_registering_module_is_recorded_with_its_folder_and_only_when_importable_by_name(method_plugin, tmp_path):
    module, method = method_plugin
    importlib.import_module(module)
    plugins = registry.PluginSet.current()
    assert module in plugins.modules and str((tmp_path / "plugins").resolve()) in plugins.paths
    assert registry.method_entry(method).method_class.__module__ == module
    # a file loaded under another name cannot be imported by that name elsewhere: not carried
    (tmp_path / "loose.py").write_text(METHOD_PLUGIN.format(name="toy_loose_coop"))
    spec = importlib.util.spec_from_file_location("toy_not_its_name", tmp_path / "loose.py")
    loose = importlib.util.module_from_spec(spec)
    sys.modules["toy_not_its_name"] = loose
    spec.loader.exec_module(loose)
    assert "toy_not_its_name" not in registry.plugin_modules()
    registry.note_plugin_module("__main__")
    assert "__main__" not in registry.plugin_modules()


def test_an_outside_method_trains_in_every_worker_of_run_jobs_2(
    method_plugin, tiny_arch_path, micro_cache, tmp_path, capsys
):
    module, method = method_plugin
    results = tmp_path / "res"
    code = main(
        [
            "--plugin",
            module,
            "run",
            "few-shot",
            "--datasets",
            "micro-colors",
            "--methods",
            method,
            "--seeds",
            "1",
            "2",
            "--shots",
            "1",
            "--backbone",
            str(tiny_arch_path),
            "--epochs",
            "1",
            "--aug-views",
            "0",
            "--jobs",
            "2",
            "--results",
            str(results),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert _methods_of(results) == [method, method]


def test_without_its_plugins_a_worker_cannot_resolve_the_outside_method(
    method_plugin, clean_registry, tiny_arch_path, micro_cache, tmp_path
):
    """The control: the same sweep with nothing carried fails in every worker as it did before plug-ins crossed."""
    module, method = method_plugin
    importlib.import_module(module)  # registered in this process only
    specs = _specs(method, tiny_arch_path)
    clean_registry.setattr(registry.PluginSet, "current", classmethod(lambda cls: cls()))
    with pytest.raises(RlptuneError, match=rf"2 of 2 runs failed .*method.name '{method}' is not known"):
        run_sweep(specs, tmp_path / "res", jobs=2, log=lambda m: None)


@pytest.fixture()
def local_ray():
    ray = pytest.importorskip("ray")
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            object_store_memory=100 * 2**20,
        )
    except Exception as exc:  # no shared memory, no free ports ...
        pytest.skip(f"Ray cannot start on this machine: {exc}")
    yield ray
    ray.shutdown()


def test_an_outside_method_trains_in_ray_workers(method_plugin, local_ray, tiny_arch_path, micro_cache, tmp_path):
    module, method = method_plugin
    importlib.import_module(module)  # registered here; recorded, and carried with its folder to Ray's workers
    rows = run_sweep(
        _specs(method, tiny_arch_path),
        tmp_path / "res",
        log=lambda m: None,
        executor=ExecutorSettings(kind="ray", cpus_per_run=1),
    )
    assert [r["method"] for r in rows] == [method, method]


def test_an_outside_method_trains_in_submitit_jobs(method_plugin, tiny_arch_path, micro_cache, tmp_path):
    pytest.importorskip("submitit")
    module, method = method_plugin
    importlib.import_module(module)
    settings = ExecutorSettings(
        kind="slurm",
        slurm_cluster="local",
        jobs=2,
        cpus_per_run=1,
        slurm_time_min=10,
        slurm_logs=str(tmp_path / "submitit"),
    )
    rows = run_sweep(_specs(method, tiny_arch_path), tmp_path / "res", log=lambda m: None, executor=settings)
    assert [r["method"] for r in rows] == [method, method]


def _fake_distribution(folder: Path, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees one: a ``*.dist-info`` with ``entry_points.txt``."""
    info = folder / "toy_rlptune_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-rlptune-plugin\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.PLUGIN_GROUP}]\n{lines}")
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))


def test_an_entry_point_plugin_is_loaded_by_the_command_line(clean_registry, tmp_path, capsys):
    _fake_distribution(
        tmp_path,
        {"toy": "toy_ep_protocol"},
        {
            "toy_ep_protocol": """
        import rlptune

        class Tiny(rlptune.Protocol):
            name = "toy-ep-protocol"

        rlptune.register_protocol(Tiny())
    """
        },
    )
    clean_registry.syspath_prepend(str(tmp_path))
    clean_registry.setattr(registry, "_startup_loaded", False)  # a new process: start-up plug-ins not loaded yet
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    assert "toy-ep-protocol" in capsys.readouterr().out  # `rlptune run` lists the plug-in's protocol
    assert "toy_ep_protocol" in registry.plugin_modules()


def test_a_plugin_that_cannot_be_imported_is_one_line_naming_it(clean_registry, tmp_path, capsys):
    _fake_distribution(tmp_path, {"broken": "toy_ep_broken"}, {"toy_ep_broken": "1 / 0\n"})
    clean_registry.syspath_prepend(str(tmp_path))
    clean_registry.setattr(registry, "_startup_loaded", False)
    assert main(["methods"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "rlptune: error: plug-in module 'toy_ep_broken' (entry point 'broken' of toy-rlptune-plugin in group "
        "rlptune.plugins) cannot be imported: ZeroDivisionError: division by zero"
    )
    (tmp_path / "toy_rlptune_plugin-0.1.dist-info" / "entry_points.txt").unlink()
    assert main(["--plugin", "toy_no_such_plugin", "methods"]) == 2
    assert capsys.readouterr().err.strip() == (
        "rlptune: error: plug-in module 'toy_no_such_plugin' (--plugin) cannot be "
        "imported: ModuleNotFoundError: No module named 'toy_no_such_plugin'"
    )
    clean_registry.setenv(registry.PLUGINS_ENV, "toy_env_missing")
    clean_registry.setattr(registry, "_startup_loaded", False)
    assert main(["methods"]) == 2
    assert "plug-in module 'toy_env_missing' ($RLPTUNE_PLUGINS) cannot be imported" in capsys.readouterr().err
    # in a worker: the run fails with the same one line, and the sweep goes on with the others
    clean_registry.delenv(registry.PLUGINS_ENV)
    clean_registry.setattr(registry, "_startup_loaded", False)
    outcome = run_task(lambda payload: "ok", Task("k", "t", None), plugins=registry.PluginSet(("toy_gone",)))
    assert outcome.error == (
        "plug-in module 'toy_gone' (a plug-in of the sweep's process) cannot be imported: "
        "ModuleNotFoundError: No module named 'toy_gone'"
    )
