"""Prometheus text-format metrics, hand-written (no client library): counters, histograms, gauges."""

from __future__ import annotations

import threading
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: The label values a request can produce. Anything a client invents (a method name, a status a future route
#: might send) is folded into a fixed label, so no request can add series to /metrics.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
STATUSES = (200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 413, 415, 422, 500, 503)


def method_label(method: str) -> str:
    """The request method if it is a standard one, else ``other``."""
    return method if method in METHODS else "other"


def status_label(status: int) -> str:
    """The status code if the server sends it, else its class (``2xx`` ... ``5xx``), else ``other``."""
    if status in STATUSES:
        return str(status)
    return f"{status // 100}xx" if isinstance(status, int) and 100 <= status <= 599 else "other"


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{suffix} {self.sum:.6f}")
        out.append(f"{name}_count{suffix} {self.total}")
        return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """What /metrics shows; gauges are read at scrape time through ``gauges`` callables."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.images = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request; ``route`` must come from a fixed set (the app's route labels)."""
        with self._lock:
            key = (route, method_label(method), status_label(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes.observe(size)
            self.images += size

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP rlptune_requests_total HTTP requests by route, method and status.",
                "# TYPE rlptune_requests_total counter",
            ]
            for (route, method, status), count in sorted(self.requests.items()):
                lines.append(f'rlptune_requests_total{{route="{route}",method="{method}",status="{status}"}} {count}')
            lines += [
                "# HELP rlptune_request_seconds Request latency in seconds by route.",
                "# TYPE rlptune_request_seconds histogram",
            ]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("rlptune_request_seconds", f'route="{route}"')
            lines += [
                "# HELP rlptune_batch_images Images per image-tower pass.",
                "# TYPE rlptune_batch_images histogram",
            ]
            lines += self.batch_sizes.lines("rlptune_batch_images")
            lines += [
                "# HELP rlptune_images_total Images through the image tower.",
                "# TYPE rlptune_images_total counter",
                f"rlptune_images_total {self.images}",
            ]
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(float(read()))}"]
        return "\n".join(lines) + "\n"
