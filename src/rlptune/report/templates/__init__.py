"""Jinja2 templates of the HTML report; jinja2 is imported only when HTML is rendered (``pip install rlptune[report]``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from rlptune.errors import RlptuneError

TEMPLATE_DIR = Path(__file__).parent


@lru_cache(maxsize=1)
def environment() -> Any:
    """The shared Jinja2 environment: autoescaping on (every value is text), undefined names are errors."""
    try:
        import jinja2
    except ImportError:
        raise RlptuneError("report.html needs the jinja2 package: pip install 'rlptune[report]' (or jinja2)") from None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(name: str, **context: Any) -> str:
    """Render a whole template file, e.g. ``render("report.html", title=..., sections=...)``."""
    return environment().get_template(name).render(**context)


def render_macro(template: str, macro: str, *args: Any) -> str:
    """Call one macro of a template file (e.g. the results table) and return its HTML."""
    return str(getattr(environment().get_template(template).module, macro)(*args)).strip() + "\n"
