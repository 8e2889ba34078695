"""Server settings: one typed dataclass whose fields (with their help text) are also the command-line flags."""

from __future__ import annotations

import secrets

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ..errors import RlptuneError

TOKEN_ENV = "RLPTUNE_SERVE_TOKEN"


def _s(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ServeSettings:
    backbone: str = _s("micro", "backbone spec every adapter was trained on (micro, ARCH:TAG, random:ARCH, ...)")
    adapters: str = _s("adapters", "folder of adapter folders: <adapters>/<task name>/rlptune_adapter.json + rlptune_adapter.safetensors")
    host: str = _s("127.0.0.1", "address to bind; loopback by default (other hosts are reachable only if you say so)")
    port: int = _s(8000, "TCP port")
    device: str = _s("auto", "device for the backbone: auto, cpu, cuda, cuda:1 ...")
    token_file: Optional[str] = _s(None, f"file holding the token for PUT/DELETE (else ${TOKEN_ENV}, else a random one printed at start)")
    max_batch_size: int = _s(64, "most images per image-tower batch (requests of all frozen-image tasks share one batch)")
    max_wait_ms: float = _s(5.0, "longest a request waits for others to join its batch, in milliseconds")
    max_images_per_request: int = _s(32, "most images in one classify request")
    max_request_mb: float = _s(16.0, "largest request body, in MiB (classify and adapter upload)")
    max_image_pixels: int = _s(25_000_000, "largest decoded image, width x height (decompression-bomb guard)")
    cache_mb: float = _s(512.0, "memory for loaded tasks (class features; whole methods for image-tower tasks), in MiB, least recently used evicted")
    preload: bool = _s(False, "load every adapter's class features at start (else on first use)")
    max_lifetime_s: float = _s(0.0, "stop by itself (gracefully) after this many seconds; 0 = run until interrupted")
    graceful_timeout_s: float = _s(30.0, "on shutdown, how long in-flight requests may take to finish")

    def validate(self) -> "ServeSettings":
        for name in ("max_batch_size", "max_images_per_request", "max_image_pixels"):
            if int(getattr(self, name)) < 1:
                raise RlptuneError(f"serve setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "max_lifetime_s", "graceful_timeout_s"):
            if float(getattr(self, name)) < 0:
                raise RlptuneError(f"serve setting {name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_request_mb", "cache_mb"):
            if float(getattr(self, name)) <= 0:
                raise RlptuneError(f"serve setting {name} must be > 0, got {getattr(self, name)}")
        if not 0 <= int(self.port) <= 65535:
            raise RlptuneError(f"serve setting port must be 0..65535, got {self.port}")
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
                raise RlptuneError(f"{path}: cannot read the token file ({getattr(exc, 'strerror', None) or exc})") from None
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
