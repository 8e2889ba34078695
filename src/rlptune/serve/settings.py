"""Server settings: one typed dataclass whose fields (with their help text) are also the command-line flags."""

from __future__ import annotations

import secrets

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ..defaults import DEFAULT_BACKBONE
from ..errors import RlptuneError

TOKEN_ENV = "RLPTUNE_SERVE_TOKEN"

#: Every number a server takes, with its range: (lowest, highest, lowest excluded, whole numbers only, unit).
#: A value outside (NaN, an infinity, a wait of 1e9 ms that leaves a lone request unanswered) is refused at start.
RANGES: dict[str, tuple[float, float, bool, bool, str]] = {
    "port": (0, 65535, False, True, ""),
    "max_batch_size": (1, 4096, False, True, " images"),
    "max_wait_ms": (0, 10_000, False, False, " milliseconds"),
    "max_images_per_request": (1, 1024, False, True, " images"),
    "max_request_mb": (0, 1024, True, False, " MiB"),
    "max_image_pixels": (1, 1_000_000_000, False, True, " pixels"),
    "cache_mb": (0, 1_048_576, True, False, " MiB"),
    "max_lifetime_s": (0, 31_536_000, False, False, " seconds"),
    "graceful_timeout_s": (0, 3600, False, False, " seconds"),
}
_NUMBER_TEXT = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


def parse_number(text: str) -> Any:
    """A command-line number: an int when written as one, else a float; other text is returned as it is, for
    :meth:`ServeSettings.validate` to refuse in one line that names the flag (so ``1e3`` and ``1000`` agree)."""
    if not isinstance(text, str) or not _NUMBER_TEXT.fullmatch(text) or len(text) > 400:
        return text
    stripped = text.strip()
    if stripped.lstrip("+-").isdigit():
        return int(stripped) if len(stripped) <= 40 else float("inf")
    return float(stripped)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _n(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def describe_range(name: str) -> str:
    """``from 1 to 4,096 images``: the range of a numeric setting, as the help text and the error line say it."""
    low, high, low_open, _, unit = RANGES[name]
    return (f"above {_n(low)} up to {_n(high)}" if low_open else f"from {_n(low)} to {_n(high)}") + unit


def _shown(value: Any) -> str:
    if isinstance(value, int) and abs(value) >= 10**40:
        return "a number of more than 40 digits"
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _s(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ServeSettings:
    backbone: str = _s(
        DEFAULT_BACKBONE,
        "backbone spec every adapter was trained on (micro-v2, micro, ARCH:TAG, hf:PATH, random:ARCH, ...)",
    )
    adapters: str = _s(
        "adapters",
        "folder of adapter folders: <adapters>/<task name>/rlptune_adapter.json + rlptune_adapter.safetensors",
    )
    host: str = _s("127.0.0.1", "address to bind; loopback by default (other hosts are reachable only if you say so)")
    port: int = _s(8000, "TCP port")
    device: str = _s("auto", "device for the backbone: auto, cpu, cuda, cuda:1 ...")
    token_file: Optional[str] = _s(
        None, f"file holding the token for PUT/DELETE (else ${TOKEN_ENV}, else a random one printed at start)"
    )
    max_batch_size: int = _s(
        64, "most images per image-tower batch (requests of all frozen-image tasks share one batch)"
    )
    max_wait_ms: float = _s(5.0, "longest a request waits for others to join its batch, in milliseconds")
    max_images_per_request: int = _s(32, "most images in one classify request")
    max_request_mb: float = _s(16.0, "largest request body, in MiB (classify and adapter upload)")
    max_image_pixels: int = _s(25_000_000, "largest decoded image, width x height (decompression-bomb guard)")
    cache_mb: float = _s(
        512.0,
        "memory for loaded tasks (class features; whole methods for image-tower tasks), in MiB, least recently used evicted",
    )
    preload: bool = _s(False, "load every adapter's class features at start (else on first use)")
    max_lifetime_s: float = _s(0.0, "stop by itself (gracefully) after this many seconds; 0 = run until interrupted")
    graceful_timeout_s: float = _s(
        30.0,
        "on shutdown, how long in-flight requests may take to finish; any still running then get a 503 (0 = no wait)",
    )

    def validate(self) -> "ServeSettings":
        """Check every setting (one line naming the setting and its flag); whole-number settings become ints."""
        for name in ("backbone", "adapters", "host", "device"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RlptuneError(
                    f"serve setting {name} ({_flag(name)}) must be a non-empty text, got {_shown(value)}"
                )
        for name, (low, high, low_open, whole, _) in RANGES.items():
            raw = getattr(self, name)
            value = parse_number(raw) if isinstance(raw, str) else raw
            kind = "a whole number" if whole else "a number"
            ok = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
            ok = ok and not isinstance(value, bool) and (value > low if low_open else value >= low) and value <= high
            ok = ok and (not whole or float(value).is_integer())
            if not ok:
                raise RlptuneError(
                    f"serve setting {name} ({_flag(name)}) must be {kind} {describe_range(name)}, got {_shown(raw)}"
                )
            setattr(self, name, int(value) if whole else float(value))
        return self

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 1024 * 1024)

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect (127.0.0.0/8, ::1, localhost)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def resolve_token(self) -> tuple[str, bool]:
        """(token, generated): from --token-file, then the environment, else a fresh random one."""
        if self.token_file:
            path = Path(self.token_file)
            try:
                token = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise RlptuneError(
                    f"{path}: cannot read the token file ({getattr(exc, 'strerror', None) or exc})"
                ) from None
            if len(token) < 16:
                raise RlptuneError(f"{path}: token must be at least 16 characters")
            return token, False
        token = os.environ.get(TOKEN_ENV, "").strip()
        if token:
            if len(token) < 16:
                raise RlptuneError(f"${TOKEN_ENV} must be at least 16 characters")
            return token, False

        return secrets.token_urlsafe(24), True


def settings_fields() -> list:
    """The dataclass fields in order (the CLI builds one flag per field)."""
    return list(fields(ServeSettings))
