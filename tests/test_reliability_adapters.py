"""Adapters and text paths checked before they are trusted (docs/RELIABILITY.md, "Adapters and text (round 3)").

- Sizes an adapter's settings declare (rank, context tokens, vision tokens, LoRA rank, classes of a class-specific
  context) are checked against the stored tensors' shapes before the method is built: ``rank = 10**12`` is one line
  naming the file, the field and both numbers, and nothing is allocated.
- Tensors must be floating-point in the parameter's dtype, and the logits they give must be finite (a probe forward
  at load): tensors × 1e30 are finite but overflow inside the towers. Checked through the CLI (predict, eval), the
  Python API (load_adapter, from_pretrained) and the server's upload (it calls the same loader).
- A Hugging Face ``config.json`` with ``eos_token_id: null`` is one line (transformers itself cannot pool without it).
- A folder without tokenizer files gets transformers' own CLIPTokenizer ids, odd text included.
- A prompt of exactly the text context (77 tokens) is accepted and equals encode_text; 78 is refused.
- ``predict``'s printed lines escape tabs, newlines and backslashes in file names: one line per image.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import string
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from PIL import Image

from conftest import COLOURS, draw_image
from rlptune.backbones import load_backbone
from rlptune.cli import _printable, main
from rlptune.config import resolve_config
from rlptune.engine import adapter as adapter_mod
from rlptune.engine.adapter import load_adapter, save_adapter
from rlptune.engine.hub import from_pretrained
from rlptune.errors import RlptuneError
from rlptune.methods import build_method
from rlptune.text import PromptedClassText, text_embeddings

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = ["red", "green", "blue"]
CONFIG = "rlptune_adapter.json"
MODEL = "rlptune_adapter.safetensors"


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


@pytest.fixture(autouse=True)
def _recorded_backbone_is_tiny(monkeypatch, tiny):
    """Adapters record the tiny architecture's spec: load it once for the module, not once per case."""
    monkeypatch.setattr(adapter_mod, "load_backbone", lambda spec, device="cpu", **kw: tiny)


def make_adapter(
    folder: Path,
    backbone,
    method: str,
    options: dict | None = None,
    prompt: dict | None = None,
    seed: int = 0,
    classes=CLASSES,
    **method_settings,
) -> Path:
    """An adapter saved as training saves it, its tensors moved off their initialisation by seeded noise."""
    overrides = {"method": {"name": method, "options": options or {}, **method_settings}}
    if prompt:
        overrides["prompt"] = prompt
    config = resolve_config(None, overrides)
    built = build_method(config, backbone, list(classes), None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in built.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return save_adapter(folder, built, config)


def edit_config(folder: Path, change) -> Path:
    path = folder / CONFIG
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))
    return folder


def edit_tensors(folder: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    path = folder / MODEL
    save_file(change(load_file(str(path))), str(path))
    return folder


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_cli_error(code: int, out: str, err: str, *fragments: str) -> str:
    """Exit 2, nothing on stdout (no NaN row, no half output), one ``rlptune: error:`` line with every fragment
    (transformers' own loading bars may share stderr)."""
    lines = [line for line in err.splitlines() if line.startswith("rlptune")]
    assert code == 2 and out == "", (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("rlptune: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    import numpy as np

    folder = tmp_path_factory.mktemp("to-predict")
    rng = np.random.default_rng(0)
    for i, colour in enumerate(list(COLOURS.values())[:2]):
        draw_image(colour, rng).save(folder / f"img{i}.png")
    return folder


# -- declared sizes are checked before anything is built ------------------------------------------------------------

#: case -> (method, options, prompt settings, JSON path of the declared size, the field as the message names it)
SIZED = {
    "rlp-rank": ("rlp", {}, None, ("settings", "prompt", "options", "rank"), "settings.prompt.rank"),
    "coop-n-ctx": ("coop", {}, None, ("settings", "prompt", "n_ctx"), "settings.prompt.n_ctx"),
    "cocoop-n-ctx": (
        "cocoop",
        {},
        {"ctx_init": None, "n_ctx": 3},
        ("settings", "prompt", "n_ctx"),
        "settings.prompt.n_ctx",
    ),
    "deep-vision-ctx": (
        "deep_vision",
        {"vision_depth": 2},
        None,
        ("settings", "method", "options", "vision_ctx"),
        "settings.method.options.vision_ctx",
    ),
    "ivlp-rank": (
        "ivlp",
        {"text_depth": 2, "vision_depth": 2},
        {"kind": "lowrank"},
        ("settings", "prompt", "options", "rank"),
        "settings.prompt.rank",
    ),
    "promptsrc-text-ctx": (
        "promptsrc",
        {"text_depth": 2, "vision_depth": 2},
        {"ctx_init": None},
        ("settings", "method", "options", "text_ctx"),
        "settings.method.options.text_ctx",
    ),
    "clip-lora-r": ("clip_lora", {}, None, ("settings", "method", "options", "r"), "settings.method.options.r"),
}


@pytest.fixture(scope="module")
def sized_adapters(tmp_path_factory, tiny) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sized")
    return {case: make_adapter(root / case, tiny, m, o, p) for case, (m, o, p, _, _) in SIZED.items()}


def _declared(folder: Path, path: tuple[str, ...]) -> int:
    value = json.loads((folder / CONFIG).read_text())
    for key in path:
        value = value[key]
    return value


def _set(payload: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        payload = payload[key]
    payload[path[-1]] = value


@pytest.fixture()
def nothing_is_built(monkeypatch):
    """Building the method is where a declared size is allocated: the checks must refuse before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the method was built from settings that do not match the stored tensors")

    monkeypatch.setattr(adapter_mod, "build_method", refuse)


def test_a_huge_declared_rank_is_one_line_in_predict_and_from_pretrained(
    sized_adapters, tmp_path, images, capsys, nothing_is_built
):
    folder = shutil.copytree(sized_adapters["rlp-rank"], tmp_path / "rank")
    edit_config(folder, lambda p: p["settings"]["prompt"]["options"].update(rank=10**12))
    expected = f"{folder / CONFIG}: settings.prompt.rank must be <= 4096, got 1000000000000"  # the settings' bound
    code, out, err = run_cli(["predict", folder, images, "--no-progress", "--device", "cpu"], capsys)
    assert assert_cli_error(code, out, err) == f"rlptune: error: {expected}"
    with pytest.raises(RlptuneError) as info:
        from_pretrained(folder)
    assert one_line(info) == expected


@pytest.mark.parametrize("case", sorted(SIZED))
def test_every_declared_size_names_the_field_and_both_numbers(case, sized_adapters, tmp_path, nothing_is_built):
    method, _, _, path, field = SIZED[case]
    folder = shutil.copytree(sized_adapters[case], tmp_path / case)
    stored = _declared(folder, path)  # a consistent adapter declares what it stores
    edit_config(folder, lambda p: _set(p, path, 4000))  # within the settings' bound, not what is stored
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder)
    message = one_line(info)
    assert message.startswith(f"{folder / CONFIG}: {field} is 4000, but tensor '") and f" has {stored} there" in message
    edit_config(folder, lambda p: _set(p, path, 10**12))  # beyond the bound: refused before the shapes are read
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder)
    assert one_line(info) == f"{folder / CONFIG}: {field} must be <= 4096, got 1000000000000"


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(sorted(SIZED)), value=st.integers(min_value=1, max_value=10**15))
def test_no_declared_size_other_than_the_stored_one_is_ever_built(case, value, sized_adapters, nothing_is_built):
    """Property: whatever size is declared, if the stored tensors have another one the load is one line naming the
    field and both numbers, and the method is never built (nothing the settings declare is allocated)."""
    method, _, _, path, field = SIZED[case]
    stored = _declared(sized_adapters[case], path)
    assume(value != stored)
    with tempfile.TemporaryDirectory() as tmp:
        folder = shutil.copytree(sized_adapters[case], Path(tmp) / case)
        edit_config(folder, lambda p: _set(p, path, value))
        with pytest.raises(RlptuneError) as info:
            load_adapter(folder)
    message = one_line(info)
    if value > 4096:  # the settings' own bound comes first, naming the file and the field
        assert message == f"{folder / CONFIG}: {field} must be <= 4096, got {value}"
    else:
        assert f"{field} is {value}, but tensor " in message and f" has {stored} there" in message


def test_a_size_no_tensor_carries_is_bounded_by_the_stored_ones(tiny, tmp_path, nothing_is_built):
    """A low-rank rank declared over a full-rank file: no tensor carries it, so it may not exceed what is stored."""
    folder = make_adapter(tmp_path / "full", tiny, "coop")
    edit_config(folder, lambda p: p["settings"]["prompt"].update(kind="lowrank", rank=4000))
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder)
    assert one_line(info) == (
        f"{folder / CONFIG}: settings.prompt.rank is 4000, but no tensor of {MODEL} carries it and the largest "
        f"dimension stored is 32; the settings and the tensors do not belong together"
    )


def test_a_class_specific_context_must_hold_one_prompt_per_listed_class(tiny, tmp_path, nothing_is_built):
    folder = make_adapter(tmp_path / "csc", tiny, "coop", class_specific=True)
    edit_config(folder, lambda p: p.update(classnames=[f"class {i}" for i in range(5)]))
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder)
    assert one_line(info).endswith(
        f"the number of classnames (class-specific context) is 5, but tensor 'prompt.ctx' of {MODEL} has 3 there "
        f"(shape (3, 16, 32)); the settings and the tensors do not belong together"
    )


def test_consistent_adapters_of_every_sized_method_still_load(sized_adapters, tiny):
    for case, folder in sized_adapters.items():
        method = load_adapter(folder)
        assert method.registered_name == SIZED[case][0]


# -- dtypes and logits ----------------------------------------------------------------------------------------------


def test_an_int64_tensor_is_refused_not_converted(tiny, tmp_path):
    folder = edit_tensors(
        make_adapter(tmp_path / "int", tiny, "rlp"), lambda t: {k: (v * 1000).long() for k, v in t.items()}
    )
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder)
    assert one_line(info) == (
        f"{folder / MODEL}: tensor 'prompt.A' is int64, not floating-point; rlptune writes trained tensors as "
        f"floating-point numbers"
    )


def test_a_float64_tensor_is_refused_with_the_expected_dtype(tiny, tmp_path):
    folder = edit_tensors(make_adapter(tmp_path / "f64", tiny, "rlp"), lambda t: {k: v.double() for k, v in t.items()})
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder)
    assert (
        one_line(info)
        == f"{folder / MODEL}: tensor 'prompt.A' is float64 (floating-point), expected float32 as rlptune writes it"
    )


def test_load_adapter_state_checks_dtypes_for_checkpoints_too(tiny):
    method = build_method(resolve_config(None, {"method": {"name": "rlp"}}), tiny, CLASSES, None)
    state = {k: v.to(torch.float16) for k, v in method.adapter_state().items()}
    with pytest.raises(
        RlptuneError, match=r"^last.safetensors: tensor 'prompt.A' is float16 \(floating-point\), expected float32"
    ):
        method.load_adapter_state(state, "last.safetensors")


#: methods whose huge tensors overflow on the text side (rlp), in the meta-net (cocoop), in the image tower
#: (deep_vision) and in LoRA on both towers (clip_lora)
OVERFLOWING = {
    "rlp": ("rlp", {}),
    "cocoop": ("cocoop", {}),
    "deep_vision": ("deep_vision", {"vision_depth": 2}),
    "clip_lora": ("clip_lora", {}),
}


@pytest.mark.parametrize("name", sorted(OVERFLOWING))
def test_finite_tensors_whose_logits_are_not_finite_are_refused(name, tiny, tmp_path):
    method, options = OVERFLOWING[name]
    folder = make_adapter(tmp_path / name, tiny, method, options)
    edit_tensors(folder, lambda t: {k: v * 1e30 for k, v in t.items()})
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder)
    message = one_line(info)
    assert message.startswith(
        f"{folder / MODEL}: the tensors are finite but the logits they give are not finite (NaN or inf"
    )
    assert message.endswith("the file is damaged or its training diverged")


def test_huge_finite_tensors_are_one_line_in_predict_and_eval(tiny, tmp_path, images, colour_folder, capsys):
    folder = edit_tensors(make_adapter(tmp_path / "huge", tiny, "rlp"), lambda t: {k: v * 1e30 for k, v in t.items()})
    fragment = f"{folder / MODEL}: the tensors are finite but the logits they give are not finite"
    code, out, err = run_cli(["predict", folder, images, "--no-progress", "--device", "cpu"], capsys)
    assert_cli_error(code, out, err, fragment)
    code, out, err = run_cli(
        ["eval", folder, "--dataset", "folder", "--data-root", colour_folder, "--device", "cpu"], capsys
    )
    assert_cli_error(code, out, err, fragment)


def test_the_servers_upload_of_huge_finite_tensors_is_a_json_4xx(tiny, tmp_path):
    """The server loads adapters through the same loader: an upload and a lazily loaded folder are one-line JSON
    4xx answers, never a 500 (the upload is not installed)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rlptune.serve import ServeSettings, create_app

    folder = edit_tensors(make_adapter(tmp_path / "huge", tiny, "rlp"), lambda t: {k: v * 1e30 for k, v in t.items()})
    root = tmp_path / "served"
    root.mkdir()
    shutil.copytree(folder, root / "on-disk")  # found by the scan at start, loaded on its first request
    token = "test-token-0123456789abcdef"
    app = create_app(ServeSettings(backbone=tiny.spec, adapters=str(root)), backbone=tiny, token=token)
    files = {"config": (CONFIG, (folder / CONFIG).read_bytes()), "model": (MODEL, (folder / MODEL).read_bytes())}
    image = Image.new("RGB", (40, 40), COLOURS["red"])
    with TestClient(app, raise_server_exceptions=False) as client:
        uploaded = client.put("/v1/tasks/huge", files=files, headers={"Authorization": f"Bearer {token}"})
        tasks = [t["name"] for t in client.get("/v1/tasks").json()["tasks"]]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        classified = client.post(
            "/v1/classify", data={"task": "on-disk"}, files=[("image", ("a.png", buffer.getvalue(), "image/png"))]
        )
    for response in (uploaded, classified):
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        message = response.json()["error"]
        assert "\n" not in message and "the tensors are finite but the logits they give are not finite" in message
    assert tasks == ["on-disk"] and sorted(p.name for p in root.iterdir()) == ["on-disk"]


# -- Hugging Face: eos_token_id and the tokenizer fallback ---------------------------------------------------------


def _hf():
    """tests/test_backbone_hf.py's tiny CLIPModel folders (transformers is optional: skip without it)."""
    pytest.importorskip("transformers")
    import test_backbone_hf

    return test_backbone_hf


@pytest.mark.parametrize("eos, shown", [(None, "null"), (10**9, "1000000000")])  # a string: transformers refuses it
def test_an_unusable_eos_token_id_is_one_line(eos, shown, tmp_path, colour_folder, capsys):
    folder = _hf().save_tiny_clip(tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["eos_token_id"] = eos
    (folder / "config.json").write_text(json.dumps(config))
    expected = (
        f"backbone 'hf:{folder}': {folder / 'config.json'}: text_config.eos_token_id is {shown}, expected the id "
        f"of the end-of-text token below the vocabulary size 49408 (49407 in OpenAI CLIP's), or 2 for the legacy "
        f"pooling at the largest token id; transformers' CLIPTextModel cannot pool text without it"
    )
    with pytest.raises(RlptuneError) as info:
        load_backbone(f"hf:{folder}")
    assert one_line(info) == expected
    if eos is None:  # and through the command line
        code, out, err = run_cli(
            [
                "zeroshot",
                "--backbone",
                f"hf:{folder}",
                "--dataset",
                "folder",
                "--data-root",
                colour_folder,
                "--device",
                "cpu",
            ],
            capsys,
        )
        assert assert_cli_error(code, out, err) == f"rlptune: error: {expected}"


#: odd strings: HTML entities, curly quotes, ligatures, full-width letters, final sigma, control and odd white
#: space, special-token look-alikes, combining marks, digits of other scripts, emoji
ODD_TEXTS = [
    "AT&amp;T",
    "AT&T",
    "&lt;b&gt;bold&lt;/b&gt;",
    "HTML &#39;quote&#39;",
    "“curly” ‘quotes’",
    "ﬁsh and ﬂowers",
    "ＦＵＬＬ-width ＡＢＣ",
    "ΟΔΟΣ",
    "Straße",
    "İstanbul",
    "café",
    "cafe\u0301",
    "  two  spaces\tand\ttabs\n",
    "a\x1cb",
    "a\u00a0b",
    "a\x85b",
    "line\u2028break",
    "don't STOP",
    "x<|endoftext|>y",
    "<end_of_text>",
    "ǅemal",
    "½ cup",
    "١٢٣ ٤",
    "emoji 🐱 cat",
    "zero\u200bwidth",
    "mojibake Ã©",
    "golden retriever",
]


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """The same tiny CLIPModel with OpenAI's tokenizer files, and without any."""
    hf = _hf()
    root = tmp_path_factory.mktemp("hf-tok")
    with_files = hf.save_tiny_clip(root / "with-files")
    bare = hf.save_tiny_clip(root / "bare", tokenizer=False)
    return with_files, load_backbone(f"hf:{with_files}"), load_backbone(f"hf:{bare}")


def _reference(with_files: Path):
    import transformers

    return transformers.CLIPTokenizer(str(with_files / "vocab.json"), str(with_files / "merges.txt"))


def test_a_folder_without_tokenizer_files_gets_transformers_ids_for_odd_text(hf_pair):
    with_files, full, bare = hf_pair
    import open_clip
    import transformers

    reference = _reference(with_files)
    auto = transformers.AutoTokenizer.from_pretrained(str(with_files))
    for text in ODD_TEXTS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert bare.tokenizer.encode(text) == expected == auto(text, add_special_tokens=False)["input_ids"], text
    assert torch.equal(bare.tokenize(ODD_TEXTS), full.tokenize(ODD_TEXTS))
    with torch.no_grad():
        assert torch.equal(
            bare.encode_text_ids(bare.tokenize(ODD_TEXTS)), full.encode_text_ids(full.tokenize(ODD_TEXTS))
        )
    # open_clip's own tokenizer (the fallback before) cleans text differently: this list tells them apart
    simple = open_clip.tokenizer.SimpleTokenizer()
    differ = [t for t in ODD_TEXTS if simple.encode(t) != reference(t, add_special_tokens=False)["input_ids"]]
    assert {"AT&amp;T", "“curly” ‘quotes’", "ﬁsh and ﬂowers", "ＦＵＬＬ-width ＡＢＣ"} <= set(differ)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=40))
def test_the_fallback_tokenizer_equals_transformers_on_any_text(text, hf_pair):
    with_files, _, bare = hf_pair
    assert bare.tokenizer.encode(text) == _reference_cached(with_files)(text, add_special_tokens=False)["input_ids"]


_REFERENCES: dict = {}


def _reference_cached(with_files: Path):
    if with_files not in _REFERENCES:
        _REFERENCES[with_files] = _reference(with_files)
    return _REFERENCES[with_files]


# -- the text context: 77 tokens fit, 78 do not ---------------------------------------------------------------------


def _name_of(tokens: int) -> str:
    """A class name that makes "[SOS] a photo of a {name} . [EOT]" exactly ``tokens`` tokens long ("cat" is one)."""
    return " ".join(["cat"] * (tokens - 7))


def _check_context_limit(backbone) -> None:
    fits, over = _name_of(77), _name_of(78)
    text = PromptedClassText(backbone, [fits, "dog"], 4)
    assert int(text.eot[0]) == 76  # the end token sits at the last position: an exact fit
    with torch.no_grad():
        ours = text(text_embeddings(backbone, "a photo of a"))
        reference = backbone.encode_text_ids(
            backbone.tokenize([f"a photo of a {fits}.", "a photo of a dog."]), normalize=False
        )
    assert (ours - reference).abs().max() < 1e-5
    with pytest.raises(RlptuneError) as info:
        PromptedClassText(backbone, ["dog", over], 4)
    assert one_line(info) == f"class name {over!r} with 4 context tokens exceeds the text context of 77 tokens"


def test_a_prompt_of_exactly_the_text_context_is_accepted_and_one_more_token_is_not(tiny):
    _check_context_limit(tiny)


def test_the_text_context_limit_on_a_hugging_face_backbone(hf_pair):
    _, full, bare = hf_pair
    _check_context_limit(full)
    _check_context_limit(bare)


# -- predict's printed lines ----------------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[tnr\\])")


def _unescape(text: str) -> str:
    return _ESCAPE.sub(
        lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(m[1]) or chr(int(m[1][1:], 16)), text
    )


def test_predict_prints_one_line_per_image_whatever_the_file_names_hold(tiny, tmp_path, capsys):
    adapter = make_adapter(tmp_path / "adapter", tiny, "rlp")
    folder = tmp_path / "odd names"
    folder.mkdir()
    names = ["tab\there.png", "new\nline.png", "carriage\rreturn.png", "back\\slash.png", "escape\x1b.png", "plain.png"]
    source = Image.new("RGB", (40, 40), COLOURS["red"])
    for name in names:
        source.save(folder / name)
    code, out, err = run_cli(["predict", adapter, folder, "--no-progress", "--device", "cpu", "--top-k", "2"], capsys)
    assert code == 0, err
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(names)
    printed = set()
    for line in lines[:-1]:
        path, best = line.split("\t")  # exactly one tab per line: the separator
        printed.add(_unescape(path))
        assert re.fullmatch(r"\w+ \d\.\d{3}, \w+ \d\.\d{3}", best), best
    assert printed == {str(folder / name) for name in names}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(name=st.text(max_size=30) | st.text(alphabet=string.printable + "\\\x00\x1b\x85\u2028\u2029\xa0", max_size=30))
def test_printed_names_are_one_line_without_tabs_and_read_back_exactly(name):
    shown = _printable(name)
    assert "\t" not in shown and len(shown.splitlines()) <= 1
    assert _unescape(shown) == name


# -- the catalogue ----------------------------------------------------------------------------------------------

#: the case ids of docs/RELIABILITY.md's "Adapters and text (round 3)" section, each held by a test above
CASES = {
    "adapter-declared-rank-huge": "test_a_huge_declared_rank_is_one_line_in_predict_and_from_pretrained",
    "adapter-declared-n-ctx-huge": "test_every_declared_size_names_the_field_and_both_numbers",
    "adapter-declared-vision-ctx-huge": "test_every_declared_size_names_the_field_and_both_numbers",
    "adapter-declared-text-ctx-huge": "test_every_declared_size_names_the_field_and_both_numbers",
    "adapter-declared-deep-rank-huge": "test_every_declared_size_names_the_field_and_both_numbers",
    "adapter-declared-lora-rank-huge": "test_every_declared_size_names_the_field_and_both_numbers",
    "adapter-declared-size-not-carried": "test_a_size_no_tensor_carries_is_bounded_by_the_stored_ones",
    "adapter-class-specific-count": "test_a_class_specific_context_must_hold_one_prompt_per_listed_class",
    "adapter-declared-size-property": "test_no_declared_size_other_than_the_stored_one_is_ever_built",
    "adapter-tensors-huge-logits-nan": "test_huge_finite_tensors_are_one_line_in_predict_and_eval",
    "adapter-tensors-huge-image-side": "test_finite_tensors_whose_logits_are_not_finite_are_refused",
    "server-upload-tensors-huge": "test_the_servers_upload_of_huge_finite_tensors_is_a_json_4xx",
    "adapter-tensor-int64": "test_an_int64_tensor_is_refused_not_converted",
    "adapter-tensor-float64": "test_a_float64_tensor_is_refused_with_the_expected_dtype",
    "checkpoint-tensor-float16": "test_load_adapter_state_checks_dtypes_for_checkpoints_too",
    "hf-eos-token-id-null": "test_an_unusable_eos_token_id_is_one_line",
    "hf-eos-token-id-outside-vocab": "test_an_unusable_eos_token_id_is_one_line",
    "hf-no-tokenizer-files-odd-text": "test_a_folder_without_tokenizer_files_gets_transformers_ids_for_odd_text",
    "prompt-exactly-77-tokens": "test_a_prompt_of_exactly_the_text_context_is_accepted_and_one_more_token_is_not",
    "prompt-78-tokens": "test_a_prompt_of_exactly_the_text_context_is_accepted_and_one_more_token_is_not",
    "predict-file-name-tab-newline": "test_predict_prints_one_line_per_image_whatever_the_file_names_hold",
}


def test_every_case_is_in_the_catalogue_section_and_held_by_a_test():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    section = doc.split("### Adapters and text (round 3)", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert listed == list(CASES) and "tests/test_reliability_adapters.py" in section
    assert all(callable(globals().get(test)) for test in CASES.values())
