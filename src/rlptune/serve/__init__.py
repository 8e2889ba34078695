"""``rlptune serve``: one frozen CLIP, many kilobyte-sized task adapters, batched across tasks (docs/SERVE.md).

Importing this package needs no web stack; :func:`create_app` (in :mod:`rlptune.serve.app`) needs fastapi.
"""

from .cli import add_serve_parser
from .settings import ServeSettings

__all__ = ["ServeSettings", "add_serve_parser", "create_app"]


def create_app(*args, **kwargs):
    """The FastAPI app (see :func:`rlptune.serve.app.create_app`); imported lazily, fastapi is optional."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
