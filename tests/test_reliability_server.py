"""rlptune serve under bad input, round 3 (docs/RELIABILITY.md, "Server (round 3)").

Every bad request gets a JSON 4xx ``{"error": "<one line>"}`` (503 for a request cut off at shutdown), nothing
is logged with a traceback, and the server never deletes or replaces a folder it does not serve. Most cases run
through the in-process client of tests/test_serve.py; the shutdown case and the fuzz loop run a real uvicorn
(the configuration ``rlptune serve`` uses) in a thread on 127.0.0.1, as tests/test_serve_live.py does in a
process.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import math
import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from test_serve import SERVE_ARCH, TOKEN, _upload, assert_one_line_error, make_adapter, make_client, make_images

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from rlptune.errors import RlptuneError  # noqa: E402
from rlptune.serve import ServeSettings, create_app  # noqa: E402
from rlptune.serve.app import MAX_TOP_K, _parse_json_int, parse_top_k  # noqa: E402
from rlptune.serve.cli import uvicorn_config  # noqa: E402
from rlptune.serve.metrics import METHODS, STATUSES  # noqa: E402
from rlptune.serve.settings import RANGES  # noqa: E402
from rlptune.serve.tasks import check_task_name  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROPERTY = hsettings(max_examples=60, deadline=None, derandomize=True, database=None)


# -- helpers ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from conftest import backbone_from_arch

    return backbone_from_arch(tmp_path_factory, SERVE_ARCH, "serve-r3")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, backbone, tiny_arch_path):
    """Adapter folders to copy or upload: a good one, one of another backbone, and ones whose logits overflow."""
    from rlptune.backbones import load_backbone

    root = tmp_path_factory.mktemp("sources")
    out = {
        "good": make_adapter(root / "good", backbone, "rlp", {}, seed=1),
        "foreign": make_adapter(root / "foreign", load_backbone(str(tiny_arch_path), device="cpu"), "rlp", {}, seed=1),
        "huge": scaled(make_adapter(root / "huge", backbone, "rlp", {}, seed=2), 1e30),
        "huge-maple": scaled(make_adapter(root / "huge-maple", backbone, "maple", {"depth": 2}, seed=3), 1e30),
    }
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), count=2)


def scaled(folder: Path, factor: float) -> Path:
    """The adapter with every float tensor times ``factor``: still finite, but its logits overflow."""
    from safetensors.torch import load_file, save_file

    path = folder / "rlptune_adapter.safetensors"
    tensors = load_file(str(path))
    scaled_tensors = {k: v * factor if v.is_floating_point() else v for k, v in tensors.items()}
    assert all(torch.isfinite(v).all() for v in scaled_tensors.values())
    save_file(scaled_tensors, str(path))
    return folder


def copy_adapter(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under the roots (links not followed) -> sha256 of its bytes, its link target, or 'dir'."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink():
                    out[str(path)] = "link -> " + os.readlink(path)
                elif path.is_dir():
                    out[str(path)] = "dir"
                else:
                    out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class Records(logging.Handler):
    """Every log record of the server's loggers (uvicorn's and rlptune's), whatever their propagation."""

    LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.asgi", "rlptune.serve")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: dict[int, logging.LogRecord] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records[id(record)] = record

    def __enter__(self) -> "Records":
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def text(self) -> str:
        return "\n".join(
            self.format(r) + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
            for r in self.records.values()
        )

    def assert_no_traceback(self) -> None:
        with_traceback = [r.getMessage() for r in self.records.values() if r.exc_info or r.stack_info]
        assert not with_traceback, with_traceback
        assert "Traceback" not in self.text() and "CancelledError" not in self.text()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """A real uvicorn on 127.0.0.1 with ``rlptune serve``'s configuration, in a thread of this process."""

    def __init__(self, backbone, adapters: Path, **overrides) -> None:
        self.settings = ServeSettings(backbone=backbone.spec, adapters=str(adapters), port=free_port(), **overrides)
        self.app = create_app(self.settings, backbone=backbone, token=TOKEN)
        self.server = uvicorn.Server(uvicorn_config(self.app, self.settings, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.settings.port}"

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not stop"


def assert_json_error(response, status: int | None = None) -> str:
    if status is None:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    else:
        assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


# -- data loss: a folder the server does not serve is never replaced or deleted --------------------------------------


def test_put_and_delete_never_touch_a_folder_the_server_does_not_serve(backbone, sources, tmp_path):
    root = tmp_path / "adapters"
    copy_adapter(sources["good"], root / "good")
    copy_adapter(sources["foreign"], root / "otherbb")  # another backbone: skipped at start
    (root / "notes").write_text("the user's own notes\n")
    elsewhere = copy_adapter(sources["good"], tmp_path / "elsewhere" / "linked")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(root, tmp_path / "elsewhere")
    with Records() as records, make_client(backbone, root) as c:
        assert [t["name"] for t in c.get("/v1/tasks").json()["tasks"]] == ["good"]
        skipped = " ".join(c.app.state.server.registry.skipped)
        assert "adapter was trained on backbone" in skipped and "symbolic link" in skipped
        for name in ("otherbb", "notes", "linked"):
            message = assert_one_line_error(
                _upload(c, name, sources["good"]), 409, f"task {name!r}", "does not serve", "never replaced or deleted"
            )
            assert str(root) not in message
            assert_one_line_error(c.delete(f"/v1/tasks/{name}", headers=AUTH), 404, "unknown task")
        assert _upload(c, "fresh", sources["good"]).status_code == 201  # a free name still works
        assert c.delete("/v1/tasks/fresh", headers=AUTH).status_code == 200
    assert snapshot(root, tmp_path / "elsewhere") == before
    records.assert_no_traceback()


def test_preload_skips_a_symlinked_or_non_finite_adapter_with_a_log_line(backbone, sources, tmp_path, images):
    root = tmp_path / "adapters"
    copy_adapter(sources["good"], root / "good")
    copy_adapter(sources["huge"], root / "huge")
    (root / "linked").symlink_to(copy_adapter(sources["good"], tmp_path / "elsewhere"), target_is_directory=True)
    before = snapshot(root)
    with Records() as records, make_client(backbone, root, preload=True) as c:
        assert [t["name"] for t in c.get("/v1/tasks").json()["tasks"]] == ["good"]
        skipped = c.app.state.server.registry.skipped
        assert (
            len(skipped) == 2 and any("symbolic link" in s for s in skipped) and any("not finite" in s for s in skipped)
        )
        files = [("image", ("a.png", images[0].read_bytes(), "image/png"))]
        assert c.post("/v1/classify", data={"task": "good"}, files=files).status_code == 200
        assert_one_line_error(c.post("/v1/classify", data={"task": "huge"}, files=files), 404, "unknown task")
        assert_one_line_error(_upload(c, "huge", sources["good"]), 409, "does not serve")  # skipped: never replaced
    lines = [r.getMessage() for r in records.records.values() if r.getMessage().startswith("skipped adapter:")]
    assert len(lines) == 2
    records.assert_no_traceback()
    assert snapshot(root) == before


# -- adapters whose logits are not finite -------------------------------------------------------------------------


def test_upload_of_a_config_nested_too_deep_or_with_a_huge_number_is_a_4xx(backbone, sources, tmp_path):
    root = tmp_path / "adapters"
    root.mkdir()
    config = json.loads((sources["good"] / "rlptune_adapter.json").read_text())
    long_number = json.dumps(config)[:-1] + ', "extra": ' + "7" * 5000 + "}"
    with Records() as records, make_client(backbone, root) as c:
        assert_one_line_error(
            _upload(c, "t", sources["good"], config=b"[" * 100_000 + b"]" * 100_000),
            400,
            "rlptune_adapter.json: not valid JSON (nested too deeply)",
        )
        assert_one_line_error(
            _upload(c, "t", sources["good"], config=long_number.encode()),
            400,
            "rlptune_adapter.json: not valid JSON",
            "4300 digits",
        )
        assert_one_line_error(
            _upload(c, "t", sources["good"], config=b"\xff{}"), 400, "rlptune_adapter.json: not UTF-8"
        )
    assert list(root.iterdir()) == []
    records.assert_no_traceback()


@pytest.mark.parametrize("source", ["huge", "huge-maple"])
def test_upload_of_an_adapter_whose_logits_overflow_is_a_4xx(backbone, sources, tmp_path, source):
    root = tmp_path / "adapters"
    root.mkdir()
    with Records() as records, make_client(backbone, root) as c:
        message = assert_one_line_error(_upload(c, "big", sources[source]), 400, "not finite")
        assert "atol" not in message
        assert c.get("/v1/tasks").json()["tasks"] == []
    assert list(root.iterdir()) == []
    records.assert_no_traceback()


def test_a_served_adapter_whose_logits_overflow_answers_409_on_classify(backbone, sources, tmp_path, images):
    root = tmp_path / "adapters"
    copy_adapter(sources["huge"], root / "huge")
    files = [("image", ("a.png", images[0].read_bytes(), "image/png"))]
    with Records() as records, make_client(backbone, root) as c:  # no --preload: loaded on first use
        assert_one_line_error(
            c.post("/v1/classify", data={"task": "huge"}, files=files),
            409,
            "task 'huge' cannot be loaded",
            "not finite",
        )
    records.assert_no_traceback()


def test_non_finite_logits_at_scoring_time_are_a_409_not_nan_probabilities(backbone, sources, tmp_path, images):
    """The batcher's own check, for logits that overflow on some images only (the load-time probe saw none)."""
    from rlptune.serve.tasks import LoadedTask

    root = tmp_path / "adapters"
    copy_adapter(sources["good"], root / "good")
    files = [("image", ("a.png", images[0].read_bytes(), "image/png"))]
    with Records() as records, make_client(backbone, root) as c:
        registry = c.app.state.server.registry
        good = registry.get("good")
        broken = LoadedTask(
            good.info, "affine", weight=torch.full_like(good.weight, float("nan")), bias=good.bias, nbytes=good.nbytes
        )
        registry._insert("good", broken)
        assert_one_line_error(
            c.post("/v1/classify", data={"task": "good"}, files=files), 409, "task 'good'", "logits are not finite"
        )
    records.assert_no_traceback()


# -- numbers and nesting in /v1/classify ------------------------------------------------------------------------------


def test_classify_top_k_and_json_nesting_are_4xx_naming_the_field(backbone, sources, tmp_path, images):
    root = tmp_path / "adapters"
    copy_adapter(sources["good"], root / "good")
    image = base64.b64encode(images[0].read_bytes()).decode()
    head = '{"task": "good", "images": ["' + image + '"], "top_k": '

    def raw(body: str):
        return c.post("/v1/classify", content=body.encode(), headers={"content-type": "application/json"})

    def form(top_k: str):
        return c.post(
            "/v1/classify", data={"task": "good", "top_k": top_k}, files=[("image", ("a.png", images[0].read_bytes()))]
        )

    with Records() as records, make_client(backbone, root) as c:
        assert_one_line_error(raw(head + "1e999}"), 400, "top_k must be a whole number", "got inf")
        assert_one_line_error(raw(head + "-1e999}"), 400, "top_k", "got -inf")
        assert_one_line_error(raw(head + "9" * 5000 + "}"), 400, "top_k", "got a 5000-digit number")
        assert_one_line_error(raw(head + "NaN}"), 400, "top_k", "got nan")
        assert_one_line_error(raw(head + "2.5}"), 400, "top_k", "got 2.5")
        assert_one_line_error(raw(head + "[[[1]]]}"), 400, "top_k", "got a JSON array")
        assert_one_line_error(raw(head + f"{MAX_TOP_K + 1}}}"), 400, "top_k", f"got {MAX_TOP_K + 1}")
        assert_one_line_error(raw('{"task": ' + "9" * 5000 + "}"), 400, "'task'")
        assert_one_line_error(raw("[" * 100_000 + "]" * 100_000), 400, "not valid JSON (nested too deeply)")
        assert_one_line_error(raw('{"a": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001), 400, "nested too deeply")
        assert_one_line_error(form("9" * 5000), 400, "top_k", "got a 5000-digit number")
        assert_one_line_error(form("1e999"), 400, "top_k", "got '1e999'")
        assert_one_line_error(form("nan"), 400, "top_k", "got 'nan'")
        # the same numbers in other spellings are accepted alike
        for body in (head + "3}", head + '"3"}', head + "3.0}", head + "3e0}", head + '" 3 "}'):
            response = raw(body)
            assert response.status_code == 200 and len(response.json()["predictions"][0]["labels"]) == 3, (
                body[-8:],
                response.text,
            )
        assert form("3.0").json()["predictions"][0]["labels"] == raw(head + "3}").json()["predictions"][0]["labels"]
        # still answering on the same connection
        assert c.get("/healthz").status_code == 200
    records.assert_no_traceback()


SPELLINGS = (
    lambda n: n,  # a JSON integer / Python int
    lambda n: str(n),  # a form field or a JSON string
    lambda n: f" {n} ",
    lambda n: float(n),  # a JSON float (exact for the integers drawn)
    lambda n: f"{n}.0",
    lambda n: f"{n}e0",
    lambda n: f"{n}E+0",
)


@PROPERTY
@given(n=st.one_of(st.integers(-5, 20), st.integers(MAX_TOP_K - 3, MAX_TOP_K + 3), st.integers(-(2**52), 2**52)))
def test_top_k_is_accepted_or_refused_alike_in_every_spelling(n):
    outcomes = set()
    for spell in SPELLINGS:
        value = spell(n)
        for parsed in (value, json.loads(json.dumps({"top_k": value}), parse_int=_parse_json_int)["top_k"]):
            try:
                outcomes.add(("ok", parse_top_k(parsed)))
            except Exception as exc:  # noqa: BLE001 - must be the one-line API error, asserted below
                assert type(exc).__name__ == "ApiError" and exc.status == 400 and "top_k must be" in exc.message, exc
                outcomes.add(("refused", None))
    assert outcomes == ({("ok", n)} if 1 <= n <= MAX_TOP_K else {("refused", None)}), (n, outcomes)


@PROPERTY
@given(text=st.text(min_size=1, max_size=12))
def test_top_k_never_raises_anything_but_the_api_error(text):
    for value in (text, text + "\n", f"1{text}"):
        try:
            number = parse_top_k(value)
        except Exception as exc:  # noqa: BLE001
            assert type(exc).__name__ == "ApiError" and exc.status == 400, exc
        else:
            assert 1 <= number <= MAX_TOP_K and float(value.strip()) == number


# -- names ------------------------------------------------------------------------------------------------------------


def test_task_names_ending_in_a_newline_are_refused(backbone, sources, tmp_path, images):
    root = tmp_path / "adapters"
    root.mkdir()
    image = base64.b64encode(images[0].read_bytes()).decode()
    with Records() as records, make_client(backbone, root) as c:
        for path in ("/v1/tasks/nl%0A", "/v1/tasks/nl%0D%0A", "/v1/tasks/nl%00"):
            assert_one_line_error(
                c.put(path, files={"config": ("c", b"{}"), "model": ("m", b"x")}, headers=AUTH), 400, "task name"
            )
            assert_one_line_error(c.get(path), 400, "task name")
            assert_one_line_error(c.delete(path, headers=AUTH), 400, "task name")
        assert_one_line_error(_upload(c, "nl%0A", sources["good"]), 400, "task name 'nl\\n'")
        assert_one_line_error(c.post("/v1/classify", json={"task": "good\n", "images": [image]}), 400, "task name")
    assert list(root.iterdir()) == []
    records.assert_no_traceback()


@PROPERTY
@given(name=st.text(max_size=140))
def test_an_accepted_task_name_is_always_one_plain_folder_name(name):
    try:
        check_task_name(name)
    except RlptuneError as exc:
        assert "\n" not in str(exc)
        return
    assert name.isascii() and name.isprintable() and "/" not in name and "\\" not in name and ".." not in name
    assert name[0].isalnum() and 1 <= len(name) <= 128 and name == name.strip()


def test_other_name_validators_refuse_a_final_newline():
    from rlptune.config import resolve_config
    from rlptune.engine import hub

    with pytest.raises(RlptuneError, match=r"backbone.device 'cpu\\n'"):
        resolve_config(None, {"backbone": {"device": "cpu\n"}})
    assert hub.base_model_of("hf:org/name\n") is None and hub.base_model_of("hf:org/name") == "org/name"
    with pytest.raises(RlptuneError, match="not a hub repo id") as caught:
        hub.from_pretrained("org/name\n")
    assert str(caught.value).startswith("'org/name\\n': ") and "\n" not in str(caught.value)
    with pytest.raises(RlptuneError, match=r"^'org/name\\n': not a hub repo id"):
        hub.push_to_hub(None, "org/name\n")


# -- settings ---------------------------------------------------------------------------------------------------------

BAD_FLAGS = [
    ("--max-wait-ms", "1e9"),
    ("--max-wait-ms", "nan"),
    ("--max-wait-ms", "-1"),
    ("--max-batch-size", "0"),
    ("--max-batch-size", "2.5"),
    ("--max-batch-size", "1e30"),
    ("--max-images-per-request", "inf"),
    ("--max-request-mb", "0"),
    ("--max-request-mb", "1e999"),
    ("--max-image-pixels", "99999999999999999999999999999999999999999999999999"),
    ("--cache-mb", "-inf"),
    ("--max-lifetime-s", "1e300"),
    ("--graceful-timeout-s", "nan"),
    ("--port", "70000"),
    ("--port", "http"),
    ("--adapters", ""),
    ("--host", " "),
]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_every_server_setting_is_bounded_with_one_line_naming_the_flag(flag, value, capsys, tmp_path):
    from rlptune.cli import main

    args = ["serve", "--backbone", "micro", "--adapters", str(tmp_path), "--device", "cpu", f"{flag}={value}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlptune: error: serve setting ") and f"({flag})" in err[0], err


@functools.lru_cache(maxsize=1)
def serve_parser():
    from rlptune.cli import build_parser

    return build_parser()


@PROPERTY
@given(name=st.sampled_from(sorted(RANGES)), n=st.one_of(st.integers(-3, 70_000), st.integers(-(2**40), 2**40)))
def test_settings_are_accepted_or_refused_alike_in_every_spelling(name, n):
    low, high, low_open, whole, _ = RANGES[name]
    inside = (n > low if low_open else n >= low) and n <= high
    for spelling in (n, float(n), str(n), f"{n}.0", f"{n}e0"):
        try:
            value = getattr(ServeSettings(**{name: spelling}).validate(), name)
        except RlptuneError as exc:
            assert not inside and f"serve setting {name} (--{name.replace('_', '-')})" in str(exc)
        else:
            assert inside and value == n and isinstance(value, int if whole else float)
    parsed = serve_parser().parse_args(["serve", f"--{name.replace('_', '-')}={n}e0"])
    assert getattr(parsed, name) == n


# -- metrics ----------------------------------------------------------------------------------------------------------


def series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("rlptune_requests_total{")}


def assert_bounded_labels(text: str) -> None:
    import re

    statuses = {str(s) for s in STATUSES} | {f"{c}xx" for c in range(1, 6)} | {"other"}
    for line in series(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        assert labels["method"] in set(METHODS) | {"other"}, line
        assert labels["status"] in statuses, line
        assert labels["route"] in {
            "/",
            "/healthz",
            "/metrics",
            "/v1/classify",
            "/v1/tasks",
            "/docs",
            "/openapi.json",
            "/v1/tasks/{name}",
            "other",
        }, line


def test_invented_method_names_add_no_series_to_metrics(backbone, tmp_path):
    root = tmp_path / "adapters"
    root.mkdir()
    rng = random.Random(7)
    paths = ["/v1/classify", "/v1/tasks", "/v1/tasks/x", "/healthz", "/nowhere"]
    with make_client(backbone, root) as c:
        for path in paths:  # one invented method on each kind of path
            assert_json_error(c.request("BREW", path))
        c.get("/metrics")
        before = c.get("/metrics").text
        for _ in range(150):
            method = "X" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(2, 24)))
            path = rng.choice(paths[:4] + [f"/random-{rng.random()}"])
            assert_json_error(c.request(method, path))
        after = c.get("/metrics").text
    assert series(after) == series(before)
    assert len(after) - len(before) < 300  # only counts and latency sums grew
    assert 'method="other"' in after
    assert_bounded_labels(after)


# -- shutdown ---------------------------------------------------------------------------------------------------------


def test_a_request_cut_off_by_the_graceful_timeout_gets_a_json_503(backbone, sources, tmp_path, images):
    root = tmp_path / "adapters"
    copy_adapter(sources["good"], root / "good")
    outcome = {}
    with Records() as records:
        live = LoopbackServer(
            backbone, root, max_wait_ms=8000, graceful_timeout_s=0.3
        )  # the request waits in the batcher
        with live:

            def send():
                files = [("image", ("a.png", images[0].read_bytes(), "image/png"))]
                outcome["response"] = httpx.post(
                    live.url + "/v1/classify", data={"task": "good"}, files=files, timeout=30
                )

            batcher = live.app.state.server.batcher
            submitted = threading.Event()
            submit = batcher.submit

            async def watched_submit(*args, **kwargs):
                submitted.set()
                return await submit(*args, **kwargs)

            batcher.submit = watched_submit
            thread = threading.Thread(target=send)
            thread.start()
            assert submitted.wait(30)
            time.sleep(0.1)  # the batcher took it and waits 8 s for more
            started = time.monotonic()
        thread.join(30)
        assert time.monotonic() - started < 6  # cut off at the timeout, not after the 8 s wait
    message = assert_json_error(outcome["response"], 503)
    assert "shutting down" in message and "--graceful-timeout-s" in message
    records.assert_no_traceback()
    assert any("cancelled at shutdown" in r.getMessage() for r in records.records.values())


# -- fuzz on loopback -------------------------------------------------------------------------------------------------


def _odd_number(rng: random.Random):
    return rng.choice(
        [
            lambda: 10 ** rng.randint(0, 60),
            lambda: -rng.randint(0, 10**6),
            lambda: rng.uniform(-1e6, 1e6),
            lambda: rng.choice([0, 1, 2, 3, MAX_TOP_K, MAX_TOP_K + 1, True, False, None]),
            lambda: rng.choice(
                ["1e999", "-1e999", "NaN", "Infinity", "0x10", "1_000", "٣", "", " ", "3", "3.0", "2.5"]
            ),
            lambda: "9" * rng.choice([41, 4300, 5000]),
            lambda: [[rng.random()]],
            lambda: {"n": 1},
        ]
    )()


def _json_text(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN"
    if isinstance(value, str) and value and value[0] == "9" and set(value) == {"9"} and len(value) > 40:
        return value  # a bare long integer
    return json.dumps(value)


FUZZ_REQUESTS = 320


def _fuzz_requests(rng: random.Random, image: str, png: bytes):
    """(method, path, headers, body) of malformed requests; a few well-formed ones in between."""
    names = [
        "good",
        "otherbb",
        "nl\n",
        "a..b",
        ".hidden",
        "x" * 300,
        "%00",
        "ünï",
        "a/b",
        "..",
        "con",
        "-",
        "good ",
        "GOOD",
        " ",
    ]
    for i in range(FUZZ_REQUESTS):
        kind = i % 8
        if kind == 0:
            top_k = _odd_number(rng)
            body = '{"task": "good", "images": ["' + image + '"], "top_k": ' + _json_text(top_k) + "}"
            yield "POST", "/v1/classify", {"content-type": "application/json"}, body.encode()
        elif kind == 1:
            depth = rng.choice([10, 500, 999, 1000, 5000, 100_000])
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
            yield (
                "POST",
                "/v1/classify",
                {"content-type": "application/json"},
                (opener * depth + "1" + closer * depth).encode(),
            )
        elif kind == 2:
            method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ_-") for _ in range(rng.randint(1, 30)))
            yield method, rng.choice(["/v1/classify", "/v1/tasks/good", "/metrics", "/", f"/x{i}"]), {}, b""
        elif kind == 3:
            ctype = rng.choice(
                [
                    "application/json; charset=utf-16",
                    "application/json; charset=nope",
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    "multipart/form-data; boundary=" + "b" * 200,
                    "application/x-www-form-urlencoded; charset=klingon",
                    "text/plain",
                    "application/JSON",
                    "*/*",
                    "application/json;",
                ]
            )
            body = rng.choice(
                [
                    b"",
                    b"{}",
                    b'{"task": "good"}',
                    b"task=good&top_k=3",
                    b"--b\r\n\r\n--b--",
                    bytes(rng.randrange(256) for _ in range(64)),
                ]
            )
            yield "POST", "/v1/classify", {"content-type": ctype}, body
        elif kind == 4:
            name = rng.choice(names)
            quoted = "".join(c if c.isalnum() else "%{:02X}".format(ord(c)) if ord(c) < 128 else c for c in name)
            method = rng.choice(["GET", "PUT", "DELETE", "POST", "PATCH"])
            headers = rng.choice(
                [{}, {"authorization": "Bearer " + TOKEN}, {"authorization": "Bearer"}, {"authorization": "Basic Zm9v"}]
            )
            if method == "DELETE" and name == "good":
                headers = {"authorization": "Bearer wrong-token-0123456789"}  # the one served task stays
            yield method, "/v1/tasks/" + quoted, headers, b""
        elif kind == 5:
            boundary = "fuzzb"
            top_k = _odd_number(rng)
            parts = f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\n{rng.choice(names)}\r\n'
            parts += f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{top_k}\r\n'
            data = (
                parts.encode()
                + f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'.encode()
                + png
                + f"\r\n--{boundary}--\r\n".encode()
            )
            yield "POST", "/v1/classify", {"content-type": f"multipart/form-data; boundary={boundary}"}, data
        elif kind == 6:
            headers = {
                "content-type": "multipart/form-data; boundary=zz",
                "authorization": rng.choice(["Bearer " + TOKEN, b"Bearer \x80\xff", "bearer  " + TOKEN]),
            }
            body = rng.choice(
                [
                    b"",
                    b"--zz--\r\n",
                    b'--zz\r\nContent-Disposition: form-data; name="config"; filename="c"\r\n\r\n'
                    + b"[" * 50_000
                    + b"\r\n--zz--\r\n",
                ]
            )
            yield "PUT", "/v1/tasks/" + rng.choice(["good", "fresh", "x"]), headers, body
        else:
            yield (
                "GET",
                rng.choice(["/healthz", "/v1/tasks", "/metrics", "/v1/tasks/good", "/v1/tasks/" + "a" * 500]),
                {"accept": rng.choice(["*/*", "text/html", b"text/\xff"])},
                b"",
            )


RAW_REQUESTS = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Odd: " + b"v" * 20_000 + b"\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"FOO\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/tasks/nl%0A HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\xc3\xa9T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
]


def _raw_status(port: int, request: bytes) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def test_fuzzed_requests_on_loopback_never_get_a_5xx_and_metrics_stay_bounded(backbone, sources, tmp_path, images):
    root = tmp_path / "adapters"
    copy_adapter(sources["good"], root / "good")
    copy_adapter(sources["foreign"], root / "otherbb")
    before = snapshot(root)
    png = images[0].read_bytes()
    image = base64.b64encode(png).decode()
    rng = random.Random(20260326)
    statuses: dict[int, int] = {}
    with (
        Records() as records,
        LoopbackServer(backbone, root) as live,
        httpx.Client(base_url=live.url, timeout=30) as client,
    ):
        sizes = []
        for i, (method, path, headers, body) in enumerate(_fuzz_requests(rng, image, png)):
            response = client.request(method, path, headers=headers, content=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 400:
                assert_json_error(response)
            else:
                assert response.status_code in (200, 307), (method, path, response.status_code)
            if i % 100 == 99:
                sizes.append(len(client.get("/metrics").text))
        for request in RAW_REQUESTS:
            status = _raw_status(live.settings.port, request)
            assert status is None or status < 500, (request[:60], status)
        assert client.get("/healthz").status_code == 200  # still serving
        metrics = client.get("/metrics").text
    assert sum(statuses.values()) == FUZZ_REQUESTS and max(statuses) < 500, statuses
    assert statuses.get(200, 0) >= 5 and statuses.get(400, 0) >= 50, statuses  # both paths were exercised
    assert_bounded_labels(metrics)
    assert len(series(metrics)) <= 9 * (len(METHODS) + 1) * (len(STATUSES) + 6)
    assert len(metrics) < 24_000 and sizes[-1] - sizes[0] < 4_000, sizes
    records.assert_no_traceback()
    assert snapshot(root) == before


# -- the catalogue ----------------------------------------------------------------------------------------------------

#: docs/RELIABILITY.md "Server (round 3)": case id -> the test that holds it.
CASES = {
    "serve-put-unserved-folder": test_put_and_delete_never_touch_a_folder_the_server_does_not_serve,
    "serve-put-over-a-file": test_put_and_delete_never_touch_a_folder_the_server_does_not_serve,
    "serve-put-over-a-symlink": test_put_and_delete_never_touch_a_folder_the_server_does_not_serve,
    "serve-delete-unserved-folder": test_put_and_delete_never_touch_a_folder_the_server_does_not_serve,
    "serve-top-k-inf": test_classify_top_k_and_json_nesting_are_4xx_naming_the_field,
    "serve-top-k-5000-digits": test_classify_top_k_and_json_nesting_are_4xx_naming_the_field,
    "serve-top-k-other-numbers": test_top_k_is_accepted_or_refused_alike_in_every_spelling,
    "serve-task-5000-digits": test_classify_top_k_and_json_nesting_are_4xx_naming_the_field,
    "serve-json-nested-deep": test_classify_top_k_and_json_nesting_are_4xx_naming_the_field,
    "serve-put-config-nested-deep": test_upload_of_a_config_nested_too_deep_or_with_a_huge_number_is_a_4xx,
    "serve-put-huge-tensors": test_upload_of_an_adapter_whose_logits_overflow_is_a_4xx,
    "serve-classify-non-finite-adapter": test_a_served_adapter_whose_logits_overflow_answers_409_on_classify,
    "serve-classify-nan-logits": test_non_finite_logits_at_scoring_time_are_a_409_not_nan_probabilities,
    "serve-preload-symlinked-folder": test_preload_skips_a_symlinked_or_non_finite_adapter_with_a_log_line,
    "serve-preload-non-finite-adapter": test_preload_skips_a_symlinked_or_non_finite_adapter_with_a_log_line,
    "serve-shutdown-timeout": test_a_request_cut_off_by_the_graceful_timeout_gets_a_json_503,
    "serve-task-name-newline": test_task_names_ending_in_a_newline_are_refused,
    "device-name-newline": test_other_name_validators_refuse_a_final_newline,
    "hub-repo-id-newline": test_other_name_validators_refuse_a_final_newline,
    "serve-metrics-invented-methods": test_invented_method_names_add_no_series_to_metrics,
    "serve-max-wait-ms-huge": test_every_server_setting_is_bounded_with_one_line_naming_the_flag,
    "serve-max-wait-ms-nan": test_every_server_setting_is_bounded_with_one_line_naming_the_flag,
    "serve-settings-out-of-range": test_settings_are_accepted_or_refused_alike_in_every_spelling,
    "serve-fuzz-loopback": test_fuzzed_requests_on_loopback_never_get_a_5xx_and_metrics_stay_bounded,
}


def test_the_server_cases_are_the_catalogue_section():
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    section = doc.split("### Server (round 3)", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert listed == list(CASES), "docs/RELIABILITY.md 'Server (round 3)' and CASES differ"
    assert "tests/test_reliability_server.py" in section
