"""Methods: where prompts go and what the loss is; registered by name."""

from .base import Method, build_method, get_method_class, list_methods, register_method
from . import zeroshot as _zeroshot  # noqa: F401  (registers)
from . import coop as _coop  # noqa: F401
from . import cocoop as _cocoop, deep as _deep, kgcoop as _kgcoop  # noqa: F401  (the baselines register on import)
from . import linear_probe as _linear_probe, lora as _lora  # noqa: F401  (peft is imported lazily)
from . import promptsrc as _promptsrc  # noqa: F401  (registers on import)

__all__ = ["Method", "build_method", "get_method_class", "list_methods", "register_method"]
