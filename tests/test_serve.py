"""rlptune serve through an in-process client: every endpoint, every bad input, batching, LRU, parity with predict.

Adapters are built on the conftest's tiny architecture (4-layer ViT so image-tower methods apply) with their
trainable tensors moved off initialisation by a seeded perturbation, so every task scores differently, and saved
with ``save_adapter`` exactly as training does.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COLOURS, TINY_ARCH, backbone_from_arch, draw_image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rlptune.config import resolve_config  # noqa: E402
from rlptune.engine.adapter import load_adapter, save_adapter  # noqa: E402
from rlptune.engine.api import predict  # noqa: E402
from rlptune.methods import build_method  # noqa: E402
from rlptune.serve import ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SERVE_ARCH = copy.deepcopy(TINY_ARCH)
SERVE_ARCH["vision_cfg"]["layers"] = 4
CLASSES = ["red", "green", "blue", "yellow"]
TOKEN = "test-token-0123456789abcdef"

#: task name -> (method, options): frozen-image (affine), image-conditioned (CoCoOp), image-tower methods.
TASKS = {
    "rlp-a": ("rlp", {}),
    "rlp-b": ("rlp", {}),
    "coop": ("coop", {}),
    "kgcoop": ("kgcoop", {}),
    "probe": ("linear_probe", {}),
    "cocoop": ("cocoop", {}),
    "vpt": ("deep_vision", {"vision_depth": 2}),
    "maple": ("maple", {"depth": 2}),
}


def make_adapter(folder: Path, backbone, method_name: str, options: dict, seed: int, classes=CLASSES) -> Path:
    config = resolve_config(None, {"method": {"name": method_name, "options": options}})
    method = build_method(config, backbone, list(classes), None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in method.named_parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return save_adapter(folder, method, config)


def build_adapters(root: Path, backbone) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for seed, (name, (method, options)) in enumerate(TASKS.items()):
        make_adapter(root / name, backbone, method, options, seed)
    return root


def make_images(folder: Path, count: int = 6, seed: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        colour = list(COLOURS.values())[i % len(COLOURS)]
        path = folder / f"img{i}.png"
        draw_image(colour, rng).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return backbone_from_arch(tmp_path_factory, SERVE_ARCH, "serve-vit")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, backbone) -> Path:
    return build_adapters(tmp_path_factory.mktemp("adapters"), backbone)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("images"))


def make_client(backbone, adapters: Path, **overrides) -> TestClient:
    settings = ServeSettings(backbone=backbone.spec, adapters=str(adapters), **overrides)
    return TestClient(create_app(settings, backbone=backbone, token=TOKEN), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(backbone, adapters):
    with make_client(backbone, adapters) as c:
        yield c


def classify(client, task: str, paths: list[Path], top_k: int = 4):
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
    return client.post("/v1/classify", data={"task": task, "top_k": str(top_k)}, files=files)


def assert_one_line_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}
    message = body["error"]
    assert "\n" not in message and "Traceback" not in message and "/tmp" not in message and ".staging" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- endpoints ---------------------------------------------------------------------------------------------------


def test_tasks_lists_every_adapter_with_method_classes_and_backbone(client, backbone):
    body = client.get("/v1/tasks").json()
    assert body["backbone"] == backbone.identity
    listed = {t["name"]: t for t in body["tasks"]}
    assert set(listed) == set(TASKS)
    assert listed["vpt"]["method"] == "deep_vision" and listed["probe"]["classes"] == CLASSES
    assert all(t["backbone"] == backbone.identity and t["num_classes"] == 4 for t in listed.values())
    assert client.get("/v1/tasks/maple").json()["method"] == "maple"


@pytest.mark.parametrize("task", list(TASKS))
def test_classify_equals_predict(client, adapters, backbone, images, task):
    """Server predictions (batched across tasks) equal rlptune's predict on the same images and adapter."""
    response = classify(client, task, images, top_k=3)
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    expected = predict(load_adapter(adapters / task, backbone), images, top_k=3)
    assert [p["filename"] for p in got] == [p.name for p in images]
    for g, e in zip(got, expected):
        assert g["labels"] == e["labels"]
        assert g["probs"] == pytest.approx(e["probs"], abs=1e-5)


def test_cli_predict_and_server_agree(client, adapters, images, tmp_path):
    """The literal ``rlptune predict`` command (its CSV) gives the labels and probabilities the server gives."""
    import csv

    from rlptune.cli import main

    for task in ("rlp-a", "maple"):
        out = tmp_path / f"{task}.csv"
        assert (
            main(
                [
                    "predict",
                    str(adapters / task),
                    *map(str, images),
                    "--top-k",
                    "2",
                    "-o",
                    str(out),
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
        rows = list(csv.DictReader(out.open()))
        served = classify(client, task, images, top_k=2).json()["predictions"]
        for row, pred in zip(rows, served):
            assert [row["label_1"], row["label_2"]] == pred["labels"]
            assert [float(row["prob_1"]), float(row["prob_2"])] == pytest.approx(pred["probs"], abs=2e-6)


def test_json_base64_equals_multipart(client, images):
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in images[:3]]
    encoded[1] = "data:image/png;base64," + encoded[1]
    via_json = client.post("/v1/classify", json={"task": "kgcoop", "images": encoded, "top_k": 2}).json()["predictions"]
    via_form = classify(client, "kgcoop", images[:3], top_k=2).json()["predictions"]
    assert [p["labels"] for p in via_json] == [p["labels"] for p in via_form]
    assert [p["probs"] for p in via_json] == [p["probs"] for p in via_form]


def test_top_k_is_clipped_to_the_classes_and_probabilities_sum_to_one(client, images):
    pred = classify(client, "coop", images[:1], top_k=50).json()["predictions"][0]
    assert sorted(pred["labels"]) == sorted(CLASSES)
    assert sum(pred["probs"]) == pytest.approx(1.0, abs=1e-5)
    assert pred["probs"] == sorted(pred["probs"], reverse=True)


def test_health_metrics_page_and_openapi(client, backbone, images):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["backbone"] == backbone.identity and health["tasks"] == len(TASKS)
    classify(client, "rlp-b", images[:2])
    text = client.get("/metrics").text
    assert 'rlptune_requests_total{route="/v1/classify",method="POST",status="200"}' in text
    assert 'rlptune_request_seconds_bucket{route="/v1/classify",le="+Inf"}' in text
    assert "rlptune_batch_images_count" in text and f"rlptune_adapters_registered {len(TASKS)}" in text
    assert "rlptune_adapters_loaded" in text
    page = client.get("/")
    assert page.status_code == 200 and 'id="task"' in page.text and "/v1/classify" in page.text
    spec = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/tasks", "/v1/tasks/{name}", "/healthz", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


# -- batching ----------------------------------------------------------------------------------------------------


def _concurrent(client, jobs):
    results = [None] * len(jobs)

    def run(i, task, paths):
        results[i] = classify(client, task, paths, top_k=1)

    threads = [threading.Thread(target=run, args=(i, t, p)) for i, (t, p) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _batch_counts(client) -> tuple[int, int]:
    text = client.get("/metrics").text
    count = int(next(ln for ln in text.splitlines() if ln.startswith("rlptune_batch_images_count")).split()[-1])
    images = int(next(ln for ln in text.splitlines() if ln.startswith("rlptune_images_total")).split()[-1])
    return count, images


def test_requests_of_different_frozen_tasks_share_one_image_tower_pass(backbone, adapters, images):
    with make_client(backbone, adapters, max_wait_ms=1500, max_batch_size=64, preload=True) as c:
        jobs = [(t, images[:2]) for t in ("rlp-a", "rlp-b", "coop", "kgcoop", "probe", "cocoop")]
        results = _concurrent(c, jobs)
        assert all(r.status_code == 200 for r in results)
        passes, count = _batch_counts(c)
        assert count == 12
        assert passes < len(jobs)  # 6 requests of 6 tasks, fewer tower passes (one when all arrive within the wait)


def test_image_tower_tasks_are_batched_per_task(backbone, adapters, images):
    with make_client(backbone, adapters, max_wait_ms=1500, preload=True) as c:
        results = _concurrent(c, [("vpt", images[:2]), ("maple", images[:2]), ("rlp-a", images[:2])])
        assert all(r.status_code == 200 for r in results)
        passes, count = _batch_counts(c)
        assert count == 6 and passes >= 3  # the prompted towers differ per task: at least one pass per task


def test_batch_larger_than_max_batch_size_is_split(backbone, adapters, images):
    with make_client(backbone, adapters, max_batch_size=2) as c:
        assert classify(c, "rlp-a", images[:5]).status_code == 200
        passes, count = _batch_counts(c)
        assert (passes, count) == (3, 5)


def test_memory_bounded_lru_evicts_and_reloads(backbone, adapters, images):
    with make_client(backbone, adapters, cache_mb=900 / 2**20) as c:  # room for two 396-byte tasks
        first = classify(c, "rlp-a", images[:2]).json()
        for task in ("rlp-b", "coop", "kgcoop"):
            assert classify(c, task, images[:1]).status_code == 200
        server = c.app.state.server
        assert server.registry.cached <= 2 and server.registry.cached_bytes <= 900 and server.registry.evictions >= 2
        assert classify(c, "rlp-a", images[:2]).json() == first  # evicted, reloaded from disk, same answer


# -- adapters at run time ----------------------------------------------------------------------------------------


def _upload(client, name, folder: Path, token=TOKEN, config=None, model=None):
    files = {
        "config": (
            "rlptune_adapter.json",
            config if config is not None else (folder / "rlptune_adapter.json").read_bytes(),
        ),
        "model": (
            "rlptune_adapter.safetensors",
            model if model is not None else (folder / "rlptune_adapter.safetensors").read_bytes(),
        ),
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.put(f"/v1/tasks/{name}", files=files, headers=headers)


def test_put_and_delete_a_task_at_run_time(backbone, tmp_path, images):
    root = tmp_path / "served"
    root.mkdir()
    make_adapter(tmp_path / "new", backbone, "rlp", {}, seed=11, classes=["cat", "dog", "bird"])
    make_adapter(tmp_path / "newer", backbone, "coop", {}, seed=12, classes=["x", "y"])
    with make_client(backbone, root) as c:
        assert c.get("/v1/tasks").json()["tasks"] == []
        assert_one_line_error(classify(c, "pets", images[:1]), 404, "unknown task 'pets'")
        created = _upload(c, "pets", tmp_path / "new")
        assert created.status_code == 201 and created.json()["task"]["classes"] == ["cat", "dog", "bird"]
        assert set(classify(c, "pets", images[:1], top_k=3).json()["predictions"][0]["labels"]) == {
            "cat",
            "dog",
            "bird",
        }
        replaced = _upload(c, "pets", tmp_path / "newer")
        assert replaced.status_code == 200 and replaced.json()["replaced"] is True
        assert classify(c, "pets", images[:1], top_k=3).json()["predictions"][0]["labels"] in (["x", "y"], ["y", "x"])
        assert [t["name"] for t in c.get("/v1/tasks").json()["tasks"]] == ["pets"]
        deleted = c.delete("/v1/tasks/pets", headers={"Authorization": f"Bearer {TOKEN}"})
        assert deleted.status_code == 200
        assert_one_line_error(classify(c, "pets", images[:1]), 404, "unknown task")
    assert sorted(p.name for p in root.iterdir()) == []  # no staging or trash folders left behind


def test_a_server_restart_sees_uploaded_adapters(backbone, tmp_path, images):
    root = tmp_path / "served"
    root.mkdir()
    make_adapter(tmp_path / "new", backbone, "rlp", {}, seed=5)
    with make_client(backbone, root) as c:
        assert _upload(c, "kept", tmp_path / "new").status_code == 201
        before = classify(c, "kept", images[:2]).json()
    with make_client(backbone, root) as c:
        assert classify(c, "kept", images[:2]).json() == before


# -- bad input: always a 4xx JSON error with one line --------------------------------------------------------------


def test_bad_classify_requests(client, images, tmp_path):
    good = images[0].read_bytes()
    cases = [
        (
            client.post("/v1/classify", data={"task": "nope", "top_k": "1"}, files=[("image", ("a.png", good))]),
            404,
            "unknown task 'nope'",
        ),
        (
            client.post("/v1/classify", data={"task": "../etc", "top_k": "1"}, files=[("image", ("a.png", good))]),
            400,
            "task name",
        ),
        (client.post("/v1/classify", data={"task": ".hidden"}, files=[("image", ("a.png", good))]), 400, "task name"),
        (client.post("/v1/classify", data={"task": "rlp-a"}, files=[("other", ("a.png", good))]), 400, "no image"),
        (client.post("/v1/classify", data={"top_k": "1"}, files=[("image", ("a.png", good))]), 400, "'task'"),
        (client.post("/v1/classify", data={"task": "rlp-a", "image": "text"}), 400, "must be a file upload"),
        (
            client.post("/v1/classify", data={"task": "rlp-a", "top_k": "0"}, files=[("image", ("a.png", good))]),
            400,
            "top_k",
        ),
        (
            client.post("/v1/classify", data={"task": "rlp-a", "top_k": "many"}, files=[("image", ("a.png", good))]),
            400,
            "top_k",
        ),
        (
            client.post("/v1/classify", data={"task": "rlp-a"}, files=[("image", ("a.png", b"not an image"))]),
            400,
            "image 1 (a.png): not an image file",
        ),
        (
            client.post("/v1/classify", data={"task": "rlp-a"}, files=[("image", ("t.png", good[: len(good) // 2]))]),
            400,
            "image 1 (t.png)",
        ),
        (client.post("/v1/classify", data={"task": "rlp-a"}, files=[("image", ("e.png", b""))]), 400, "empty"),
        (
            client.post("/v1/classify", json={"task": "rlp-a", "images": ["%%%not base64"]}),
            400,
            "images[0] is not valid base64",
        ),
        (client.post("/v1/classify", json={"task": "rlp-a", "images": "abc"}), 400, "'images' must be a list"),
        (client.post("/v1/classify", json={"task": "rlp-a", "images": []}), 400, "no image"),
        (client.post("/v1/classify", json={"task": "rlp-a", "images": [1]}), 400, "base64 string"),
        (
            client.post(
                "/v1/classify", json={"task": "rlp-a", "images": [base64.b64encode(good).decode()], "top_k": True}
            ),
            400,
            "top_k",
        ),
        (client.post("/v1/classify", json=["rlp-a"]), 400, "JSON body must be an object"),
        (
            client.post("/v1/classify", content=b"{broken", headers={"content-type": "application/json"}),
            400,
            "not valid JSON",
        ),
        (
            client.post("/v1/classify", content=b"hello", headers={"content-type": "text/plain"}),
            415,
            "multipart/form-data",
        ),
        (
            client.post("/v1/classify", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
            400,
            "",
        ),
        (
            client.post("/v1/classify", json={"task": "rlp-a", "images": [base64.b64encode(good).decode()] * 33}),
            413,
            "limit is 32",
        ),
        (
            client.post(
                "/v1/classify", data={"task": "rlp-a"}, files=[("image", (f"{i}.png", good)) for i in range(40)]
            ),
            400,
            "",
        ),
        (client.get("/v1/nothing"), 404, "no such endpoint: GET /v1/nothing"),
        (client.delete("/v1/classify"), 405, "not allowed"),
        (client.get("/v1/tasks/unknown-task"), 404, "unknown task"),
    ]
    for response, status, fragment in cases:
        assert_one_line_error(response, status, fragment)


def test_request_body_and_pixel_limits(backbone, adapters, images):
    with make_client(backbone, adapters, max_request_mb=0.05, max_image_pixels=40 * 40) as c:
        big = b"\0" * 60_000
        assert_one_line_error(
            c.post("/v1/classify", data={"task": "rlp-a"}, files=[("image", ("b.png", big))]), 413, "over the limit"
        )

        def chunks():  # no content-length: the limit is enforced while the body streams in
            for _ in range(10):
                yield b"x" * 10_000

        streamed = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert_one_line_error(streamed, 413, "over the limit")
        bomb = io.BytesIO()
        Image.new("1", (4000, 4000)).save(bomb, format="PNG")  # 16 megapixels in a few kilobytes
        assert len(bomb.getvalue()) < 50_000
        message = assert_one_line_error(
            c.post("/v1/classify", data={"task": "rlp-a"}, files=[("image", ("bomb.png", bomb.getvalue()))]), 413
        )
        assert "image 1 (bomb.png)" in message and "4000x4000" in message
        assert (
            c.post(
                "/v1/classify", data={"task": "rlp-a"}, files=[("image", ("ok.png", images[0].read_bytes()))]
            ).status_code
            == 200
        )


def test_adapter_upload_needs_the_token_and_a_valid_adapter(backbone, tmp_path, tiny_arch_path):
    from rlptune.backbones import load_backbone

    root = tmp_path / "served"
    root.mkdir()
    source = make_adapter(tmp_path / "src", backbone, "rlp", {}, seed=1)
    other = load_backbone(str(tiny_arch_path), device="cpu")  # 2-layer image tower: another identity
    foreign = make_adapter(tmp_path / "foreign", other, "rlp", {}, seed=1)
    config = json.loads((source / "rlptune_adapter.json").read_text())
    with make_client(backbone, root) as c:
        assert_one_line_error(_upload(c, "t", source, token=None), 401, "Authorization: Bearer")
        assert_one_line_error(_upload(c, "t", source, token="wrong-token-0123456789"), 403, "wrong token")
        assert_one_line_error(c.delete("/v1/tasks/t"), 401)
        assert_one_line_error(
            c.delete("/v1/tasks/t", headers={"Authorization": f"Bearer {TOKEN}"}), 404, "unknown task"
        )
        assert_one_line_error(_upload(c, "..", source), 404)  # never reaches the folder: the path collapses
        assert_one_line_error(_upload(c, ".sneaky", source), 400, "task name")
        assert_one_line_error(_upload(c, "a..b", source), 400, "task name")
        assert_one_line_error(_upload(c, "x" * 200, source), 400, "task name")
        assert_one_line_error(_upload(c, "t", foreign), 400, "adapter was trained on backbone")
        assert_one_line_error(_upload(c, "t", source, model=b"\x80\x04pickle data"), 400, "not a safetensors file")
        assert_one_line_error(_upload(c, "t", source, config=b"{not json"), 400, "not valid JSON")
        assert_one_line_error(
            _upload(c, "t", source, config=json.dumps({**config, "method": "nope"}).encode()), 400, "method 'nope'"
        )
        bad_shapes = make_adapter(tmp_path / "coop", backbone, "coop", {}, seed=1)
        assert_one_line_error(
            _upload(c, "t", source, model=(bad_shapes / "rlptune_adapter.safetensors").read_bytes()),
            400,
            "do not match",
        )
        missing = c.put(
            "/v1/tasks/t",
            files={"config": ("rlptune_adapter.json", b"{}")},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert_one_line_error(missing, 400, "'model' is missing")
        assert_one_line_error(
            c.put("/v1/tasks/t", json={}, headers={"Authorization": f"Bearer {TOKEN}"}), 415, "multipart"
        )
        assert c.get("/v1/tasks").json()["tasks"] == []
    assert list(root.iterdir()) == []


def test_unservable_adapters_in_the_folder_are_skipped_not_fatal(backbone, tmp_path, tiny_arch_path, images):
    from rlptune.backbones import load_backbone

    root = tmp_path / "served"
    make_adapter(root / "good", backbone, "rlp", {}, seed=1)
    make_adapter(root / "foreign", load_backbone(str(tiny_arch_path), device="cpu"), "rlp", {}, seed=1)
    (root / "broken").mkdir()
    (root / "broken" / "rlptune_adapter.json").write_text("{")
    (root / "bad name!").mkdir()
    with make_client(backbone, root) as c:
        assert [t["name"] for t in c.get("/v1/tasks").json()["tasks"]] == ["good"]
        assert len(c.app.state.server.registry.skipped) == 3
        assert classify(c, "good", images[:1]).status_code == 200


# -- settings and command line -----------------------------------------------------------------------------------


def test_settings_are_safe_by_default_and_validated():
    from rlptune.errors import RlptuneError

    settings = ServeSettings()
    assert settings.host == "127.0.0.1" and settings.is_loopback
    assert not ServeSettings(host="0.0.0.0").is_loopback and ServeSettings(host="::1").is_loopback
    for bad in ({"max_batch_size": 0}, {"max_wait_ms": -1}, {"cache_mb": 0}, {"port": 70000}):
        with pytest.raises(RlptuneError):
            ServeSettings(**bad).validate()


def test_token_comes_from_file_or_environment_or_is_generated(tmp_path, monkeypatch):
    from rlptune.errors import RlptuneError

    monkeypatch.delenv("RLPTUNE_SERVE_TOKEN", raising=False)
    token, generated = ServeSettings().resolve_token()
    assert generated and len(token) >= 24 and token != ServeSettings().resolve_token()[0]
    monkeypatch.setenv("RLPTUNE_SERVE_TOKEN", "from-the-environment-123")
    assert ServeSettings().resolve_token() == ("from-the-environment-123", False)
    path = tmp_path / "token"
    path.write_text("short\n")
    with pytest.raises(RlptuneError, match="at least 16"):
        ServeSettings(token_file=str(path)).resolve_token()


def test_cli_serve_flags_and_one_line_error(capsys, tmp_path):
    from rlptune.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--adapters", "x", "--max-batch-size", "8", "--preload"])
    assert args.max_batch_size == 8 and args.preload is True and args.host == "127.0.0.1" and args.port == 8000
    code = main(["serve", "--backbone", "micro", "--adapters", str(tmp_path / "missing"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "adapters folder not found" in err[0]


def test_the_same_app_serves_again_after_a_shutdown(backbone, adapters, images):
    """Lifespan can run twice (ASGI servers and test clients restart apps): batcher and temp folder come back."""
    settings = ServeSettings(backbone=backbone.spec, adapters=str(adapters))
    app = create_app(settings, backbone=backbone, token=TOKEN)
    answers = []
    for _ in range(2):
        with TestClient(app) as c:
            response = classify(c, "rlp-a", images[:1])
            assert response.status_code == 200, response.text
            answers.append(response.json())
        assert not app.state.server.tmpdir.exists()
    assert answers[0] == answers[1]
