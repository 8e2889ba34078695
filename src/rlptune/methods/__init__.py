"""Methods: where prompts go and what the loss is; registered by name."""

from .base import Method, build_method, get_method_class, list_methods, register_method
from . import zeroshot as _zeroshot  # noqa: F401  (registers)
from . import coop as _coop  # noqa: F401

__all__ = ["Method", "build_method", "get_method_class", "list_methods", "register_method"]
