"""The method registry: name → (method class, typed options class), importable without torch.

Settings resolution (:mod:`rlptune.config`) needs a method's options class to validate ``method.options`` and its
declared requirements; the method classes themselves live in :mod:`rlptune.methods`, which imports torch. This small
module sits below both: methods register here when their module is imported, and :func:`method_entry` loads the
built-in methods on first use (the way a plug-in system loads its built-in plug-ins), so that ``rlptune --help``
stays fast and ``config`` never imports ``methods``.

Protocols register here the same way (:func:`register_protocol`; the built-in four live in
:mod:`rlptune.protocols`), so settings, recipes, the command line, the run pipeline and the tables read one list.

Plug-ins: a module outside the package registers what it adds when it is imported. Such modules reach a process
three ways, all through :func:`load_plugins`: the ``rlptune.plugins`` entry-point group of installed distributions,
the ``RLPTUNE_PLUGINS`` variable (comma-separated module names) and explicit names (``rlptune --plugin MODULE``,
``rlptune.load_plugins``). Every registration also records its module (:func:`plugin_modules`), so that a sweep's
workers (other processes, Ray, Slurm) import the same modules before they resolve a run's settings.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from dataclasses import dataclass, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import RlptuneError

BUILTIN_METHODS_MODULE = "rlptune.methods"
BUILTIN_PROMPTS_MODULE = "rlptune.prompts"
#: Packages that register datasets and backbones of their own when imported (the micro package: its ``micro-*``
#: datasets and the ``micro`` / ``micro-v2`` backbones, which sit above ``backbones`` because the package trains them).
BUILTIN_PLUGINS = ("rlptune.micro",)
#: The package whose import registers the built-in protocols (few-shot, base2new, cross-dataset, domain-gen).
BUILTIN_PROTOCOLS_MODULE = "rlptune.protocols"
#: The entry-point group of plug-in distributions: each entry point names a module imported at start-up.
PLUGIN_GROUP = "rlptune.plugins"
#: Comma-separated plug-in module names imported at start-up (and carried to a sweep's workers).
PLUGINS_ENV = "RLPTUNE_PLUGINS"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    method_class: Any  # a subclass of rlptune.methods.Method
    options_class: type


_METHODS: dict[str, MethodEntry] = {}
_builtins_loaded = False


def register_method_class(name: str, method_class: Any, options_class: type) -> None:
    """Record ``method_class`` under ``name`` (re-registering the same name replaces it: plug-ins may override)."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise RlptuneError(f"method name {name!r}: expected a non-empty name without surrounding spaces")
    _METHODS[name] = MethodEntry(name, method_class, options_class)
    note_plugin_module(getattr(method_class, "__module__", None))


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module(BUILTIN_METHODS_MODULE)
        _load_startup_plugins()  # after the built-ins: a plug-in may subclass or replace one


def method_names() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def method_entry(name: str) -> MethodEntry:
    """The registered method ``name``; an unknown name is one line with the closest match and the valid names."""
    _load_builtins()
    if name in _METHODS:
        return _METHODS[name]
    lowered = {n.lower(): n for n in _METHODS}
    close = (
        [lowered[name.lower()]]
        if isinstance(name, str) and name.lower() in lowered
        else difflib.get_close_matches(str(name), list(_METHODS), n=1, cutoff=0.5)
    )
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RlptuneError(f"method.name {name!r} is not known{hint}; available: {', '.join(sorted(_METHODS))}")


_PROMPT_KINDS: dict[str, Callable[..., Any]] = {}
#: prompt kind -> its typed options dataclass (``prompt.options``); a kind registered without one has none
_PROMPT_OPTIONS: dict[str, type] = {}


@dataclass
class NoPromptOptions:
    """A prompt kind without options of its own (``full``)."""


def register_prompt_kind(name: str, builder: Callable[..., Any], options: type | None = None) -> None:
    """Record a prompt parameterisation ``builder(settings, init, from_text) -> PromptModule`` as ``prompt.kind``,
    with ``options``, the dataclass of its own settings (``prompt.options``; see :mod:`rlptune.options`), so that
    settings resolution checks and records them without importing the kind (or torch)."""
    if not isinstance(name, str) or not name.strip():
        raise RlptuneError(f"prompt kind {name!r}: expected a non-empty name")
    if options is not None and not (isinstance(options, type) and is_dataclass(options)):
        raise RlptuneError(f"prompt kind {name!r}: options must be a dataclass (fields made with rlptune.option)")
    _PROMPT_KINDS[name] = builder
    _PROMPT_OPTIONS[name] = options or NoPromptOptions
    note_plugin_module(getattr(builder, "__module__", None))


def prompt_kinds() -> list[str]:
    importlib.import_module(BUILTIN_PROMPTS_MODULE)
    _load_startup_plugins()
    return sorted(_PROMPT_KINDS)


def prompt_builder(name: str) -> Callable[..., Any]:
    kinds = prompt_kinds()
    if name not in _PROMPT_KINDS:
        close = difflib.get_close_matches(str(name), kinds, n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RlptuneError(f"prompt.kind {name!r} is not known{hint}; expected one of {', '.join(kinds)}")
    return _PROMPT_KINDS[name]


def prompt_options_class(name: str) -> type:
    """The options dataclass of prompt kind ``name`` (an unknown kind is one line, as :func:`prompt_builder`)."""
    prompt_builder(name)
    return _PROMPT_OPTIONS[name]


def load_builtin_plugins() -> None:
    """Import the built-in packages that register datasets and backbones (idempotent: Python imports a module once)."""
    for module in BUILTIN_PLUGINS:
        importlib.import_module(module)
    _load_startup_plugins()


# -- protocols ---------------------------------------------------------------------------------------------------

_PROTOCOLS: dict[str, Any] = {}  # registration order: the built-in four first, as the command line lists them
_protocols_loaded = False


def _spelling(name: str) -> str:
    """How table readers compare protocol spellings: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def register_protocol(protocol: Any) -> Any:
    """Record ``protocol`` (an instance of :class:`rlptune.protocols.Protocol`) under its ``name``; returns it.
    Re-registering a name replaces it (plug-ins may override), as for methods."""
    name = getattr(protocol, "name", None)
    if (
        not isinstance(name, str)
        or not name.strip()
        or name != name.strip()
        or name in (".", "..")
        or any(c in name for c in "/\\")
    ):
        raise RlptuneError(
            f"protocol name {name!r}: expected a non-empty name (a folder name: no spaces around it, no '/')"
        )
    missing = [
        a for a in ("training_subset", "evaluate", "default_targets") if not callable(getattr(protocol, a, None))
    ]
    missing += [a for a in ("recipe_key", "table_kind") if not isinstance(getattr(protocol, a, None), str)]
    if missing:
        raise RlptuneError(
            f"protocol {name!r}: expected an instance of rlptune.Protocol; it lacks {', '.join(missing)}"
        )
    _PROTOCOLS[name] = protocol
    note_plugin_module(type(protocol).__module__)
    return protocol


def unregister_protocol(name: str) -> None:
    """Remove a registered protocol (for tests, and plug-ins that replace one)."""
    get_protocol(name, what="protocol")
    del _PROTOCOLS[name]


def _load_protocols() -> None:
    global _protocols_loaded
    if not _protocols_loaded:
        _protocols_loaded = True
        importlib.import_module(BUILTIN_PROTOCOLS_MODULE)
        _load_startup_plugins()


def protocol_names() -> list[str]:
    """The registered protocols' names, built-in ones first."""
    _load_protocols()
    return list(_PROTOCOLS)


def protocol_aliases() -> dict[str, str]:
    """Every spelling a results file may use (:func:`_spelling` of a name or an alias) → the protocol's name."""
    _load_protocols()
    out: dict[str, str] = {}
    for name, protocol in _PROTOCOLS.items():
        for alias in (name, *getattr(protocol, "aliases", ())):
            out.setdefault(_spelling(alias), name)
    return out


def get_protocol(name: str, what: str = "data.protocol") -> Any:
    """The registered protocol ``name``; an unknown one is one line naming ``what`` with the closest match."""
    _load_protocols()
    if isinstance(name, str) and name in _PROTOCOLS:
        return _PROTOCOLS[name]
    known = list(_PROTOCOLS)
    close = protocol_aliases().get(_spelling(name))
    if close is None:
        found = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        close = found[0] if found else None
    hint = f" (did you mean {close!r}?)" if close else ""
    raise RlptuneError(f"{what} {name!r} is not known{hint}; available: {', '.join(known)}")


# -- plug-ins ----------------------------------------------------------------------------------------------------

#: module name → the folder it is imported from (None: found the ordinary way, e.g. installed), in load order
_PLUGIN_MODULES: dict[str, str | None] = {}
_startup_loaded = False


def _import_root(module: str) -> tuple[bool, str | None]:
    """(importable by its name, the sys.path folder it came from). A module loaded from a file under another name
    (``runpy``, ``importlib.util.spec_from_file_location``) cannot be imported by name in another process."""
    loaded = sys.modules.get(module)
    file = getattr(loaded, "__file__", None)
    if not file:
        return False, None
    path = Path(file).resolve()
    parts = module.split(".")
    folders = path.parent.parts if path.stem == "__init__" else (*path.parent.parts, path.stem)
    if len(folders) <= len(parts) or tuple(folders[-len(parts) :]) != tuple(parts):
        return False, None
    return True, str(Path(*folders[: -len(parts)]))


def note_plugin_module(module: str | None) -> None:
    """Record that ``module`` registered something, so a sweep's workers import it too; rlptune itself, a script's
    ``__main__`` and modules that cannot be imported by their name elsewhere are not recorded."""
    if not module or module in ("__main__", "__mp_main__") or module == "rlptune" or module.startswith("rlptune."):
        return
    if module not in _PLUGIN_MODULES:
        importable, root = _import_root(module)
        if importable:
            _PLUGIN_MODULES[module] = root


def plugin_modules() -> list[str]:
    """The plug-in modules of this process, in the order they were loaded or registered something."""
    return list(_PLUGIN_MODULES)


@dataclass(frozen=True)
class PluginSet:
    """The plug-ins of one process as plain data that pickles anywhere: what a sweep hands each worker (another
    process, a Ray worker, a Slurm job) to import before it resolves a run's settings. ``paths`` are the folders
    the modules were imported from, for workers started without the parent's ``sys.path``."""

    modules: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @classmethod
    def current(cls) -> "PluginSet":
        paths = dict.fromkeys(p for p in _PLUGIN_MODULES.values() if p)
        return cls(tuple(_PLUGIN_MODULES), tuple(paths))

    def load(self, where: str = "a plug-in of the sweep's process") -> list[str]:
        """Import them here (and the start-up plug-ins); a module that cannot be imported is one line naming it."""
        for folder in self.paths:
            if folder not in sys.path:
                sys.path.append(folder)  # after this process's own entries: a plug-in never shadows a module
        return load_plugins(self.modules, where=where)


def _import_plugin(module: str, where: str) -> None:
    if not isinstance(module, str) or not module.strip():
        raise RlptuneError(f"plug-in module {module!r} ({where}): expected a module name such as my_package.plugin")
    module = module.strip()
    try:
        importlib.import_module(module)
    except RlptuneError as exc:
        raise RlptuneError(f"plug-in module {module!r} ({where}) failed to load: {exc}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # ImportError, SyntaxError, SystemExit: any error of the module's own code
        text = str(exc).strip().splitlines()
        raise RlptuneError(
            f"plug-in module {module!r} ({where}) cannot be imported: {type(exc).__name__}"
            + (f": {text[0]}" if text else "")
        ) from None
    if module not in _PLUGIN_MODULES:
        _PLUGIN_MODULES[module] = _import_root(module)[1]


def _entry_point_plugins() -> list[tuple[str, str]]:
    """(module, where) of each entry point of the ``rlptune.plugins`` group, in a stable order."""
    found = []
    for entry in sorted(metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: (e.name, e.value)):
        dist = getattr(getattr(entry, "dist", None), "name", None)
        where = f"entry point {entry.name!r}" + (f" of {dist}" if dist else "") + f" in group {PLUGIN_GROUP}"
        found.append((entry.value.split(":", 1)[0].strip(), where))
    return found


def _env_plugins() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _load_startup_plugins() -> None:
    """The entry-point plug-ins and ``$RLPTUNE_PLUGINS``, once per process (on first use of any registry)."""
    global _startup_loaded
    if _startup_loaded:
        return
    _startup_loaded = True
    try:
        for module, where in _entry_point_plugins():
            _import_plugin(module, where)
        for module in _env_plugins():
            _import_plugin(module, f"${PLUGINS_ENV}")
    except RlptuneError:
        _startup_loaded = False  # the next use reports it again rather than going on without the plug-in
        raise


def load_plugins(modules: Iterable[str] = (), where: str = "load_plugins") -> list[str]:
    """Import the start-up plug-ins (entry points, ``$RLPTUNE_PLUGINS``) and ``modules``; return every plug-in
    module of this process (:func:`plugin_modules`). Importing is idempotent; a module that cannot be imported is
    one line naming it and where it was asked for."""
    if isinstance(modules, str):
        modules = [modules]
    _load_startup_plugins()
    for module in modules:
        _import_plugin(module, where)
    return plugin_modules()


#: The module that saves and uploads adapters: ``Method.save_pretrained`` / ``Method.push_to_hub`` reach it through
#: here, the way built-in plug-ins are loaded, so that the methods never import the engine above them.
HUB_MODULE = "rlptune.engine.hub"


def hub_function(name: str) -> Callable[..., Any]:
    """The engine's hub function ``name`` (``save_pretrained``, ``push_to_hub``), imported on first use."""
    return getattr(importlib.import_module(HUB_MODULE), name)
