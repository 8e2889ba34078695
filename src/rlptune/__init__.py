"""rlptune: adapt a frozen CLIP to a new classification task by tuning a tiny prompt (CoOp, RLP, …)."""

__version__ = "0.1.0"

from .errors import RlptuneError  # noqa: E402

__all__ = ["RlptuneError", "__version__"]
