"""rlptune serve as users run it: a real uvicorn process on loopback, and the web page in headless Chromium.

The server is ``python -m rlptune serve`` on 127.0.0.1 at a free port, bounded by ``--max-lifetime-s`` (it stops
by itself even if this test process dies) and stopped with SIGTERM by the last test, which checks that a request
in flight at that moment still gets its answer. The browser is Debian's Chromium driven over the DevTools
protocol (``websockets``); it uploads an image through the page's file input and the test reads the predicted
label off the page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_serve import SERVE_ARCH, TASKS, TOKEN, build_adapters, make_images

httpx = pytest.importorskip("httpx")

CHROMIUM = os.environ.get("RLPTUNE_CHROMIUM", "/usr/bin/chromium")
SERVER_LIFETIME_S = 240
BATCH_WAIT_MS = 1500  # long enough that the shutdown test's request is surely still in flight at SIGTERM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from conftest import backbone_from_arch

    backbone = backbone_from_arch(tmp_path_factory, SERVE_ARCH, "serve-live")
    root = tmp_path_factory.mktemp("live")
    adapters = build_adapters(root / "adapters", backbone)
    images = make_images(root / "images", count=4)
    token_file = root / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "rlptune",
        "serve",
        "--backbone",
        backbone.spec,
        "--adapters",
        str(adapters),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--token-file",
        str(token_file),
        "--max-wait-ms",
        str(BATCH_WAIT_MS),
        "--max-lifetime-s",
        str(SERVER_LIFETIME_S),
        "--preload",
    ]
    log = open(root / "server.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120, "the server to answer /healthz")
        yield {
            "url": url,
            "proc": proc,
            "adapters": adapters,
            "images": images,
            "backbone": backbone,
            "log": root / "server.log",
        }
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_real_server_answers_over_http_like_predict(live):
    from rlptune.engine.adapter import load_adapter
    from rlptune.engine.api import predict

    images = live["images"]
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in images]
    response = httpx.post(live["url"] + "/v1/classify", data={"task": "rlp-a", "top_k": "2"}, files=files, timeout=60)
    assert response.status_code == 200, response.text
    expected = predict(load_adapter(live["adapters"] / "rlp-a", live["backbone"]), images, top_k=2)
    for got, want in zip(response.json()["predictions"], expected):
        assert got["labels"] == want["labels"] and got["probs"] == pytest.approx(want["probs"], abs=1e-5)
    tasks = httpx.get(live["url"] + "/v1/tasks", timeout=10).json()["tasks"]
    assert sorted(t["name"] for t in tasks) == sorted(TASKS)
    denied = httpx.delete(live["url"] + "/v1/tasks/rlp-a", timeout=10)
    assert denied.status_code == 401 and set(denied.json()) == {"error"}
    assert "Traceback" not in live["log"].read_text()


class DevTools:
    """The few Chrome DevTools protocol calls the page test needs, over one websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


@pytest.fixture()
def chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; CI must run the browser test (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium); CI runs this test")
    try:
        import websockets.sync.client  # noqa: F401  (the DevTools protocol client)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the browser test needs the websockets package (pip install websockets); CI must run it")
        pytest.skip("the websockets package is not installed (pip install websockets); CI runs this test")
    profile = tmp_path / "profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        active = profile / "DevToolsActivePort"
        wait_until(
            lambda: active.is_file() and len(active.read_text().splitlines()) >= 2, 60, "Chromium's DevTools port"
        )
        port = int(active.read_text().splitlines()[0])
        targets = wait_until(
            lambda: [
                t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json() if t.get("type") == "page"
            ],
            30,
            "a page target",
        )
        from websockets.sync.client import connect

        with connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as ws:
            yield DevTools(ws)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)


def test_web_page_uploads_an_image_and_shows_the_predicted_label(live, chromium):
    image = live["images"][1]
    chromium.call("Page.enable")
    chromium.call("Runtime.enable")
    chromium.call("Page.navigate", url=live["url"] + "/")
    wait_until(
        lambda: chromium.evaluate("document.body && document.body.dataset.ready") == "1",
        30,
        "the page to list the tasks",
    )
    options = chromium.evaluate("Array.from(document.querySelectorAll('#task option')).map(o => o.value)")
    assert sorted(options) == sorted(TASKS)
    chromium.evaluate("document.getElementById('task').value = 'maple'; document.getElementById('topk').value = '3'")
    chromium.call("DOM.getDocument")
    node = chromium.call("Runtime.evaluate", expression="document.getElementById('file')")["result"]["objectId"]
    chromium.call("DOM.setFileInputFiles", files=[str(image)], objectId=node)
    label = wait_until(
        lambda: chromium.evaluate("document.getElementById('top-label').textContent"), 60, "the predicted label"
    )
    bars = chromium.evaluate("document.querySelectorAll('#results .row').length")
    error = chromium.evaluate("document.getElementById('error').textContent")
    api = httpx.post(
        live["url"] + "/v1/classify",
        json={"task": "maple", "top_k": 3, "images": [base64.b64encode(image.read_bytes()).decode()]},
        timeout=60,
    ).json()["predictions"][0]
    assert error == "" and bars == 3
    assert label == api["labels"][0]
    widths = chromium.evaluate(
        "Array.from(document.querySelectorAll('#results .bar')).map(b => parseFloat(b.style.width))"
    )
    assert widths == pytest.approx([round(100 * p, 1) for p in api["probs"]], abs=0.051)


def test_sigterm_lets_the_in_flight_request_finish_then_exits(live):
    """Last test of the module: the server drains on SIGTERM (the request waits in the batcher when it arrives)."""
    proc = live["proc"]
    image = live["images"][0]
    outcome = {}

    def send():
        start = time.monotonic()
        files = [("image", (image.name, image.read_bytes(), "image/png"))]
        response = httpx.post(live["url"] + "/v1/classify", data={"task": "coop"}, files=files, timeout=60)
        outcome["response"], outcome["seconds"] = response, time.monotonic() - start

    thread = threading.Thread(target=send)
    thread.start()
    wait_until(lambda: "rlptune_images_total" in httpx.get(live["url"] + "/metrics", timeout=5).text, 10, "metrics")
    time.sleep(BATCH_WAIT_MS / 1000 / 3)  # the request is now waiting for its batch
    proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert outcome["response"].status_code == 200, outcome["response"].text
    assert outcome["response"].json()["predictions"][0]["labels"]
    assert outcome["seconds"] >= 0.9 * BATCH_WAIT_MS / 1000  # it was held in the batcher across the SIGTERM
    assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    assert "Traceback" not in live["log"].read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(live["url"] + "/healthz", timeout=3)
