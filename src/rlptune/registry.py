"""The method registry: name → (method class, typed options class), importable without torch.

Settings resolution (:mod:`rlptune.config`) needs a method's options class to validate ``method.options`` and its
declared requirements; the method classes themselves live in :mod:`rlptune.methods`, which imports torch. This small
module sits below both: methods register here when their module is imported, and :func:`method_entry` loads the
built-in methods on first use (the way a plug-in system loads its built-in plug-ins), so that ``rlptune --help``
stays fast and ``config`` never imports ``methods``.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import RlptuneError

BUILTIN_METHODS_MODULE = "rlptune.methods"
BUILTIN_PROMPTS_MODULE = "rlptune.prompts"
#: Packages that register datasets and backbones of their own when imported (the micro package: its ``micro-*``
#: datasets and the ``micro`` / ``micro-v2`` backbones, which sit above ``backbones`` because the package trains them).
BUILTIN_PLUGINS = ("rlptune.micro",)


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


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module(BUILTIN_METHODS_MODULE)


def method_names() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def method_entry(name: str) -> MethodEntry:
    """The registered method ``name``; an unknown name is one line with the closest match and the valid names."""
    _load_builtins()
    if name in _METHODS:
        return _METHODS[name]
    lowered = {n.lower(): n for n in _METHODS}
    close = [lowered[name.lower()]] if isinstance(name, str) and name.lower() in lowered else difflib.get_close_matches(str(name), list(_METHODS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RlptuneError(f"method.name {name!r} is not known{hint}; available: {', '.join(sorted(_METHODS))}")


_PROMPT_KINDS: dict[str, Callable[..., Any]] = {}


def register_prompt_kind(name: str, builder: Callable[..., Any]) -> None:
    """Record a prompt parameterisation ``builder(settings, init, from_text) -> PromptModule`` as ``prompt.kind``."""
    if not isinstance(name, str) or not name.strip():
        raise RlptuneError(f"prompt kind {name!r}: expected a non-empty name")
    _PROMPT_KINDS[name] = builder


def prompt_kinds() -> list[str]:
    importlib.import_module(BUILTIN_PROMPTS_MODULE)
    return sorted(_PROMPT_KINDS)


def prompt_builder(name: str) -> Callable[..., Any]:
    kinds = prompt_kinds()
    if name not in _PROMPT_KINDS:
        close = difflib.get_close_matches(str(name), kinds, n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RlptuneError(f"prompt.kind {name!r} is not known{hint}; expected one of {', '.join(kinds)}")
    return _PROMPT_KINDS[name]


def load_builtin_plugins() -> None:
    """Import the built-in packages that register datasets and backbones (idempotent: Python imports a module once)."""
    for module in BUILTIN_PLUGINS:
        importlib.import_module(module)


#: The module that saves and uploads adapters: ``Method.save_pretrained`` / ``Method.push_to_hub`` reach it through
#: here, the way built-in plug-ins are loaded, so that the methods never import the engine above them.
HUB_MODULE = "rlptune.engine.hub"


def hub_function(name: str) -> Callable[..., Any]:
    """The engine's hub function ``name`` (``save_pretrained``, ``push_to_hub``), imported on first use."""
    return getattr(importlib.import_module(HUB_MODULE), name)
