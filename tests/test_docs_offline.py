"""``/docs`` works with no internet: Swagger UI's files are packaged and served by the server itself.

The no-browser test reads the page and every asset it names; the browser test serves the app with uvicorn on
loopback and loads ``/docs`` in headless Chromium whose every non-loopback request goes to a dead proxy, then
reads the rendered operations off the DOM.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_ARCH, backbone_from_arch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rlptune.serve import ServeSettings, create_app  # noqa: E402
from rlptune.serve.docs import STATIC_FILES, STATIC_PREFIX  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TOKEN = "docs-token-0123456789abcdef"
_URL = re.compile(r"""(?:src|href|url)\s*[=:(]\s*['"]?([^'")\s>]+)""", re.I)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    backbone = backbone_from_arch(tmp_path_factory, TINY_ARCH, "docs-tiny")
    adapters = tmp_path_factory.mktemp("docs-adapters")
    settings = ServeSettings(backbone=backbone.spec, adapters=str(adapters))
    return create_app(settings, backbone=backbone, token=TOKEN)


def test_docs_page_names_only_this_servers_files(app):
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text, page.text
        named = _URL.findall(page.text) + re.findall(r"""url:\s*'([^']+)'""", page.text)
        assert {STATIC_PREFIX + n for n in STATIC_FILES} <= set(named), named
        for url in named:
            assert url.startswith("/"), f"/docs loads {url} from elsewhere"
        for name, media in STATIC_FILES.items():
            asset = client.get(STATIC_PREFIX + name)
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(media.split(";")[0])
            assert len(asset.content) > 500, name
        assert client.get("/openapi.json").json()["paths"]["/v1/classify"]
        assert client.get(STATIC_PREFIX + "index.html").status_code == 404  # only the listed files are served
        assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load from a CDN too


def test_packaged_swagger_ui_carries_its_licence():
    static = Path(__import__("rlptune.serve", fromlist=["x"]).__file__).parent / "static"
    assert "Apache License" in (static / "LICENSE-swagger-ui.txt").read_text()
    css = (static / "swagger-ui.css").read_text()
    assert not re.search(r"url\(\s*['\"]?https?://", css), "the stylesheet loads a remote file"


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("RLPTUNE_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_docs_render_in_chromium_with_the_network_off(app, tmp_path):
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI: Chromium is required for the /docs browser test (apt-get install chromium)")
        pytest.skip("chromium is not installed (set CI=1 to make this a failure)")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        profile = tmp_path / "profile"
        cmd = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            f"--user-data-dir={profile}",
            # the network is off: every request not to loopback goes to a closed port and fails
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1200,900",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"http://127.0.0.1:{port}/docs",
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(profile)}
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    dom = done.stdout
    operations = re.findall(r'class="opblock opblock-(get|put|post|delete)', dom)
    assert len(operations) >= 5, (
        f"Swagger UI rendered {len(operations)} operations (rc {done.returncode}): {done.stderr[-1500:]}"
    )
    for path in ("/v1/classify", "/v1/tasks", "/healthz", "/metrics"):
        assert path in dom, f"{path} is not on the rendered page"
    assert "Top-k labels of one or more images for one task" in dom
