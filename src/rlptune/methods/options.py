"""Compatibility import point for method modules: the options helpers live in :mod:`rlptune.options`."""

from ..options import (
    MAX_BATCH,
    MAX_ITERATIONS,
    MAX_LAYERS,
    MAX_TOKENS,
    NoOptions,
    option,
    option_fields,
    options_dict,
    parse_options,
)

__all__ = [
    "MAX_BATCH",
    "MAX_ITERATIONS",
    "MAX_LAYERS",
    "MAX_TOKENS",
    "NoOptions",
    "option",
    "option_fields",
    "options_dict",
    "parse_options",
]
