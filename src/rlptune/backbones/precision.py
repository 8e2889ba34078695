"""Which precision a backbone runs in: ``backbone.precision = auto`` resolved by one rule, wherever a backbone runs.

``auto`` (the default) resolves to

- on CUDA: the method's official precision (:data:`rlptune.recipes.OFFICIAL_PRECISION`: fp16 for every Dassl method
  and for CLIP-LoRA), run as autocast with fp32 trainable tensors and a gradient scaler (docs/METHODS.md says how
  that differs from the official pure-fp16 weights);
- on a CPU with native bf16 (AMX or AVX-512 BF16, Arm BF16): bf16 autocast, but only while
  :data:`CPU_BF16_WITHIN_SEED_SPREAD` says the fidelity measurement found bf16 within the seed spread of fp32;
- anywhere else (a CPU without native bf16, MPS, XPU ...): fp32.

The resolved value, never ``auto``, is what a run records (``config.yaml``, the settings hash, the checkpoint digest,
the adapter), so a run folder says what it trained in and a CPU run's hash is the one it had when fp32 was the
default. ``auto`` defers to an explicit choice made when a backbone was loaded: a backbone loaded with
``precision="bf16"`` and passed to a run whose settings say ``auto`` trains in bf16; one loaded with ``auto`` is
re-resolved for the method that runs on it (see :func:`precision_for`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from .. import recipes
from ..errors import RlptuneError

#: Precisions a backbone runs in (autocast dtypes; fp32 = no autocast).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: What ``backbone.precision`` accepts.
SETTINGS: tuple[str, ...] = ("auto", *PRECISIONS)
AUTO = "auto"

CPU_BF16_WITHIN_SEED_SPREAD: bool = True
"""Whether ``auto`` may pick bf16 autocast on a CPU with native bf16.

The fidelity table in ``benchmarks/`` decides it: fp32 vs bf16 on the micro-v2 suite (7 datasets x seeds 1-3,
base-to-new, official recipes, fresh crops) for CoOp, RLP, KgCoOp, IVLP and PromptSRC, paired differences with 95%
intervals. Only when every method's difference lies within the seed spread is this set to True.

Measured (``benchmarks/bf16_fidelity_results.json``, 210 runs): every method within the seed spread on base, new and
H; pooled over 105 pairs, H bf16 - fp32 = -0.04 [-0.12, +0.05]. So it is True. The demo and the study pin fp32
(their published tables were measured in it, and a table should read the same on any CPU); the environment variable
``RLPTUNE_CPU_BF16=0`` keeps ``auto`` at fp32 on a bf16 CPU (the test suite sets it: its exactness checks are fp32)."""

#: /proc/cpuinfo flags of native bf16 arithmetic: x86 AMX and AVX-512 BF16, Arm's BF16 extension.
BF16_CPU_FLAGS: frozenset[str] = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def cpuinfo_has_bf16(text: str) -> bool:
    """True when a ``/proc/cpuinfo`` text lists a native-bf16 flag on its ``flags`` (x86) or ``Features`` (Arm) line."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features") and BF16_CPU_FLAGS & set(value.split()):
            return True
    return False


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether this machine's CPU computes bf16 natively (then bf16 autocast is 3-4x faster than fp32 on it).

    Read from ``/proc/cpuinfo`` (Linux); elsewhere from PyTorch's dispatch capability (``AMX`` builds only)."""
    if os.environ.get("RLPTUNE_CPU_BF16", "").strip() == "0":  # the user keeps auto at fp32 on this CPU
        return False
    try:
        return cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        pass
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "")()
    return "AMX" in str(capability).upper()


def device_kind(device: Any) -> str:
    """The device type a run lands on: ``auto`` is cuda when CUDA is available, else cpu (as the loader decides)."""
    text = str(device).strip()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(text).type
    except (RuntimeError, ValueError):
        raise RlptuneError(f"device {text!r}: expected auto, cpu, cuda, cuda:N, mps or xpu[:N]") from None


def official_precision(method: str | None) -> str:
    """The precision ``method``'s official code trains and evaluates in on a GPU (``recipes.OFFICIAL_PRECISION``).

    ``None`` (a backbone loaded before any method is known, e.g. by the server) means plain CLIP, as the zero-shot
    recipe runs it; a method without a recipe (a plug-in) gets fp32, since there is no official choice to follow."""
    entry = recipes.OFFICIAL_PRECISION.get("zeroshot" if method is None else str(method))
    return entry[0] if entry is not None else "fp32"


def check_precision(precision: Any, where: str = "backbone.precision") -> str:
    """``precision`` if it is one of :data:`SETTINGS`, else one line naming ``where`` and the accepted values."""
    if not isinstance(precision, str) or precision not in SETTINGS:
        raise RlptuneError(f"{where} {precision!r} is not supported: expected {', '.join(SETTINGS)}")
    return precision


def resolve_precision(precision: str, device: Any, method: str | None = None) -> str:
    """The precision to run in: an explicit fp32/bf16/fp16 as given; ``auto`` by the rule of this module.

    ``device`` is a device setting (``auto``, ``cpu``, ``cuda:1`` ...) or a ``torch.device``; ``method`` the
    registered method name (None: plain CLIP)."""
    precision = check_precision(precision)
    if precision != AUTO:
        return precision
    kind = device_kind(device)
    if kind == "cuda":
        return official_precision(method)
    if kind == "cpu" and CPU_BF16_WITHIN_SEED_SPREAD and cpu_native_bf16():
        return "bf16"
    return "fp32"


def requested_precision(backbone) -> str:
    """What a backbone was asked for when it was loaded: ``auto`` or an explicit precision."""
    return str(backbone.info.get("precision_requested", backbone.precision))


def precision_for(backbone, method: str | None, precision: str = AUTO) -> str:
    """The precision ``method`` runs in on ``backbone`` when the settings ask for ``precision``.

    An explicit setting wins; ``auto`` keeps an explicit choice made when the backbone was loaded, and otherwise
    resolves for ``method`` on the backbone's device."""
    precision = check_precision(precision)
    if precision != AUTO:
        return precision
    if requested_precision(backbone) != AUTO:
        return backbone.precision
    return resolve_precision(AUTO, backbone.device, method)


def settle_run_precision(config, backbone=None) -> str:
    """Resolve ``config.backbone.precision`` for the run's method and device and write the result back into it, so
    ``config.yaml``, the settings hash and the checkpoint digest record what runs (never ``auto``)."""
    b = config.backbone
    if backbone is not None:
        resolved = precision_for(backbone, config.method.name, b.precision)
    else:
        resolved = resolve_precision(b.precision, b.device, config.method.name)
    b.precision = resolved
    return resolved


__all__ = [
    "AUTO",
    "BF16_CPU_FLAGS",
    "CPU_BF16_WITHIN_SEED_SPREAD",
    "PRECISIONS",
    "SETTINGS",
    "check_precision",
    "cpu_native_bf16",
    "cpuinfo_has_bf16",
    "device_kind",
    "official_precision",
    "precision_for",
    "requested_precision",
    "resolve_precision",
    "settle_run_precision",
]
