"""``rlptune serve`` under load: one frozen CLIP, 1 / 10 / 1,000 task adapters, mixed concurrent traffic, loopback.

For each backbone (the shipped micro CLIP, and a ViT-B-16-sized backbone with random weights):

1. **Bare image tower**: ``backbone.encode_image`` on preprocessed batches of ``--batch`` images, images/s,
   measured right before and right after each setting's traffic (mean of the two; the server idle), since a
   shared machine's load drifts. This is the ceiling: the tower alone with perfectly full batches and no HTTP,
   decoding or scoring.
2. **Server**: ``python -m rlptune serve`` on 127.0.0.1 (a free port, ``--max-lifetime-s`` so it always stops)
   with N adapters registered (RLP, CoOp and KgCoOp in turn, 10 classes each, preloaded), and ``--clients``
   concurrent clients sending PNG files, each request for a task drawn uniformly at random, 1 image (3 requests
   in 4) or 4 images (1 in 4), for ``--seconds`` per setting (at most ``--max-requests``). Reported: images/s,
   its ratio to the bare tower (goal >= 0.8), request latency p50 / p99, failed requests (goal 0), and the
   server's resident memory with N adapters registered. Also the CPU time per image of the bare tower and of the
   whole server process (HTTP, decoding, batching, tower, scoring) and their ratio: on a machine shared with the
   clients and other work the wall-clock ratio measures contention as much as the server, the CPU ratio does not.
3. **Parity**: the server's answers for a few tasks and images equal ``rlptune.engine.api.predict`` (the function
   behind ``rlptune predict``) on the same adapter folders.

The clients run in this process and share the machine's cores with the server (the numbers include that cost).

Usage::

    .venv/bin/python benchmarks/serve.py                          # both backbones, 1 / 10 / 1000 tasks
    .venv/bin/python benchmarks/serve.py --backbones micro --seconds 5 --tasks 1 10
    .venv/bin/python benchmarks/serve.py --json benchmarks/serve_results.json
    .venv/bin/python benchmarks/serve.py --backbones random:ViT-B-16 --tasks 1000 --registered-only
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlptune.backbones import load_backbone  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.engine.adapter import load_adapter, save_adapter  # noqa: E402
from rlptune.engine.api import predict  # noqa: E402
from rlptune.methods import build_method  # noqa: E402

METHODS = ("rlp", "coop", "kgcoop")
CLASSES = [f"class {i}" for i in range(10)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pngs(count: int, size: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = Image.fromarray(rng.integers(60, 200, size=(size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        r = size // 4
        cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def make_adapters(root: Path, backbone, count: int) -> None:
    """``count`` adapters cycling through METHODS, each a seeded perturbation away from its initialisation."""
    root.mkdir(parents=True, exist_ok=True)
    methods = {}
    for name in METHODS:
        config = resolve_config(None, {"method": {"name": name}})
        methods[name] = (build_method(config, backbone, CLASSES, None), config)
    for i in range(count):
        method, config = methods[METHODS[i % len(METHODS)]]
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for _, param in method.named_parameters():
                if param.requires_grad:
                    param.normal_(0.0, 0.5, generator=generator)
        save_adapter(root / f"task{i:04d}", method, config)


@torch.no_grad()
def tower_throughput(backbone, batch: int, seconds: float) -> tuple[float, float]:
    """(images/s, CPU ms per image) of the bare image tower on full batches."""
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size)
    backbone.encode_image(images)  # warm-up
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or done == 0:
        backbone.encode_image(images)
        done += batch
    return done / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / done


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProcess:
    def __init__(
        self, spec: str, adapters: Path, batch: int, threads: int, lifetime: float, log: Path, preload: bool = True
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "rlptune",
            "serve",
            "--backbone",
            spec,
            "--adapters",
            str(adapters),
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-batch-size",
            str(batch),
            "--max-wait-ms",
            "5",
            "--max-lifetime-s",
            str(lifetime),
        ] + (["--preload"] if preload else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RLPTUNE_SERVE_TOKEN": "benchmark-token-0123456789"}
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float) -> float:
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


async def load(
    url: str, tasks: list[str], pngs: list[bytes], clients: int, seconds: float, max_requests: int, seed: int
) -> dict:
    import httpx

    rng = random.Random(seed)
    latencies: list[float] = []
    failures: list[str] = []
    counts = {"images": 0, "requests": 0}
    deadline = time.perf_counter() + seconds

    async def client(session: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and counts["requests"] < max_requests:
            counts["requests"] += 1
            n = 4 if rng.random() < 0.25 else 1
            files = [("image", (f"{i}.png", pngs[rng.randrange(len(pngs))], "image/png")) for i in range(n)]
            start = time.perf_counter()
            try:
                response = await session.post(
                    url + "/v1/classify", data={"task": rng.choice(tasks), "top_k": "3"}, files=files
                )
                ok = response.status_code == 200
                if not ok:
                    failures.append(f"{response.status_code} {response.text[:120]}")
            except httpx.HTTPError as exc:
                ok = False
                failures.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)
            if ok:
                counts["images"] += n

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "images": counts["images"],
        "seconds": elapsed,
        "images_per_s": counts["images"] / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "failed": len(failures),
        "failures": failures[:5],
    }


def check_parity(url: str, adapters: Path, backbone, pngs: list[bytes], workdir: Path) -> bool:
    import httpx

    paths = []
    for i, data in enumerate(pngs[:4]):
        path = workdir / f"parity{i}.png"
        path.write_bytes(data)
        paths.append(path)
    for task in sorted(p.name for p in adapters.iterdir())[:3]:
        files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
        served = httpx.post(url + "/v1/classify", data={"task": task, "top_k": "3"}, files=files, timeout=120).json()[
            "predictions"
        ]
        expected = predict(load_adapter(adapters / task, backbone), paths, top_k=3)
        for got, want in zip(served, expected):
            if got["labels"] != want["labels"] or max(abs(a - b) for a, b in zip(got["probs"], want["probs"])) > 1e-5:
                return False
    return True


def registered_only(spec: str, args, workdir: Path) -> None:
    """Resident memory of a server with N adapters registered but none loaded yet (no traffic)."""
    backbone = load_backbone(spec, device="cpu")
    for count in args.tasks:
        adapters = workdir / f"{spec.replace(':', '_')}-{count}"
        make_adapters(adapters, backbone, count)
        server = ServerProcess(
            spec,
            adapters,
            args.batch,
            args.threads,
            args.server_lifetime,
            workdir / f"server-{count}.log",
            preload=False,
        )
        try:
            ready = server.wait_ready(args.ready_timeout)
            print(
                f"{spec}: {count} adapters registered (none loaded): server RSS {rss_mib(server.proc.pid):.0f} MiB, ready in {ready:.1f}s",
                flush=True,
            )
        finally:
            server.stop()
        shutil.rmtree(adapters, ignore_errors=True)


def run_backbone(spec: str, args, workdir: Path) -> list[dict]:
    torch.set_num_threads(args.threads)
    backbone = load_backbone(spec, device="cpu")
    pngs = make_pngs(16, backbone.image_size)
    rows = []
    for count in args.tasks:
        adapters = workdir / f"{spec.replace(':', '_')}-{count}"
        start = time.perf_counter()
        make_adapters(adapters, backbone, count)
        built = time.perf_counter() - start
        server = ServerProcess(
            spec, adapters, args.batch, args.threads, args.server_lifetime, workdir / f"server-{count}.log"
        )
        try:
            ready = server.wait_ready(args.ready_timeout)
            rss = rss_mib(server.proc.pid)
            parity = check_parity(server.url, adapters, backbone, pngs, workdir)
            tasks = sorted(p.name for p in adapters.iterdir())
            # the bare tower right before and after the traffic (server idle): the machine's load drifts
            before = tower_throughput(backbone, args.batch, args.tower_seconds)
            cpu_before = cpu_seconds(server.proc.pid)
            result = asyncio.run(
                load(server.url, tasks, pngs, args.clients, args.seconds, args.max_requests, seed=count)
            )
            result["server_cpu_ms_per_image"] = (
                1000 * (cpu_seconds(server.proc.pid) - cpu_before) / max(1, result["images"])
            )
            after = tower_throughput(backbone, args.batch, args.tower_seconds)
            tower, tower_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        finally:
            server.stop()
        row = {
            "backbone": spec,
            "tasks": count,
            "clients": args.clients,
            "batch": args.batch,
            "tower_images_per_s": tower,
            "tower_cpu_ms_per_image": tower_cpu,
            **result,
            "cpu_ratio": tower_cpu / result["server_cpu_ms_per_image"],
            "ratio": result["images_per_s"] / tower,
            "rss_mib": rss,
            "startup_s": ready,
            "adapters_built_s": built,
            "parity": parity,
        }
        rows.append(row)
        print(
            f"  {count:>5} tasks: {row['images_per_s']:.1f} images/s = {row['ratio']:.2f}x tower, p50 {row['p50_ms']:.0f} ms, "
            f"p99 {row['p99_ms']:.0f} ms, {row['requests']} requests, {row['failed']} failed, RSS {rss:.0f} MiB, "
            f"server CPU {result['server_cpu_ms_per_image']:.1f} ms/image, start {ready:.1f}s, parity {'ok' if parity else 'MISMATCH'}",
            flush=True,
        )
        shutil.rmtree(adapters, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| backbone | tasks | clients / batch | bare tower (img/s) | server (img/s) | ratio | p50 (ms) | p99 (ms) | requests | failed | CPU per image: tower / server (ms) | CPU ratio | server RSS (MiB) | = predict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['tasks']} | {r['clients']} / {r['batch']} | {r['tower_images_per_s']:.1f} | {r['images_per_s']:.1f} | {r['ratio']:.2f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['requests']} | {r['failed']} | {r['tower_cpu_ms_per_image']:.1f} / {r['server_cpu_ms_per_image']:.1f} | "
            f"{r['cpu_ratio']:.2f} | {r['rss_mib']:.0f} | "
            f"{'yes' if r['parity'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["micro", "random:ViT-B-16"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[1, 10, 1000])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--batch", type=int, default=32, help="server max batch size = bare-tower batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="traffic per setting")
    parser.add_argument("--max-requests", type=int, default=5000, help="cap on requests per setting")
    parser.add_argument("--tower-seconds", type=float, default=5.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the server and of the bare-tower run (1: on a shared machine more threads oversubscribe)",
    )
    parser.add_argument("--server-lifetime", type=float, default=900.0, help="each server stops by itself after this")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="give up when a server (loading its adapters) is not ready by then",
    )
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument(
        "--registered-only",
        action="store_true",
        help="only the server's memory with the adapters registered, none loaded (no traffic)",
    )
    parser.add_argument(
        "--from-json", nargs="+", help="only print the table of rows written earlier with --json (one or more files)"
    )
    args = parser.parse_args()
    if args.from_json:
        print(table([row for path in args.from_json for row in json.loads(Path(path).read_text())]))
        return 0
    if args.registered_only:
        with tempfile.TemporaryDirectory(prefix="rlptune-serve-bench-") as tmp:
            for spec in args.backbones:
                registered_only(spec, args, Path(tmp))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlptune-serve-bench-") as tmp:
        for spec in args.backbones:
            rows += run_backbone(spec, args, Path(tmp))
    print()
    print(f"{args.clients} clients, batch {args.batch}, {args.threads} torch thread(s), {args.seconds:g} s per setting")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["failed"] == 0 and r["parity"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
