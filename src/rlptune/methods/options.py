"""Compatibility import point for method modules: the options helpers live in :mod:`rlptune.options`."""

from ..options import NoOptions, option, option_fields, options_dict, parse_options

__all__ = ["NoOptions", "option", "option_fields", "options_dict", "parse_options"]
