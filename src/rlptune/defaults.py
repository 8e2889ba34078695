"""The defaults a user gets without naming them, in one place: the CLI, the Python API, the settings, the server
and the demo read these (the tests' fast backbone stays ``micro``, named explicitly where the tests need speed).

RLP is the package's flagship method and micro world v2's ViT CLIP the shipped backbone every method runs on.
"""

from __future__ import annotations

#: ``backbone.name`` when none is given (``rlptune train``, ``resolve_config``, ``rlptune serve``, the demo).
DEFAULT_BACKBONE = "micro-v2"
#: ``method.name`` when none is given: its official recipe is applied (``rlptune methods rlp`` prints it).
DEFAULT_METHOD = "rlp"
