"""Image decoding: odd formats are converted to RGB, broken files get one-line errors, a policy skips them."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlptune.data import DatasetSplits, Item, MAX_IMAGE_PIXELS, check_images, load_image, skipped_report
from rlptune.errors import RlptuneError


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def test_rgb_passthrough(tmp_path):
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = load_image(save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.mode == "RGB" and out.size == (5, 4)
    assert np.array_equal(np.asarray(out), arr)


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 6)
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60  # cyan-free, full magenta + yellow = red


def test_sixteen_bit_grayscale_png(tmp_path):
    arr = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "g16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 255], [127, 1]]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_thirty_two_bit_int_and_float(tmp_path):
    small = Image.fromarray(np.array([[0, 200]], dtype=np.int32), mode="I")
    assert np.asarray(load_image(save(small, tmp_path / "i.tif")))[0, :, 0].tolist() == [0, 200]
    flt = Image.fromarray(np.array([[0.0, 1.0, 0.5]], dtype=np.float32), mode="F")
    assert np.asarray(load_image(save(flt, tmp_path / "f.tif")))[0, :, 0].tolist() == [0, 255, 128]


def test_rgba_alpha_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (255, 0, 0, 0)  # fully transparent -> white
    arr[1, 0] = (0, 0, 0, 128)  # half black -> mid grey
    out = np.asarray(load_image(save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert 120 <= out[1, 0, 0] <= 135


def test_la_and_palette_with_and_without_transparency(tmp_path):
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    assert np.asarray(load_image(save(la, tmp_path / "la.png")))[0].tolist() == [[255, 255, 255], [0, 0, 0]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    assert np.asarray(load_image(save(pal, tmp_path / "p.png")))[0].tolist() == [[10, 20, 30], [200, 100, 50]]
    out = np.asarray(load_image(save(pal, tmp_path / "pt.png", transparency=0)))
    assert out[0].tolist() == [[255, 255, 255], [200, 100, 50]]
    gif = np.asarray(load_image(save(pal, tmp_path / "p.gif")))
    assert gif.shape == (1, 2, 3)


def test_grayscale_and_bilevel(tmp_path):
    assert load_image(save(Image.new("L", (3, 3), 77), tmp_path / "l.png")).getpixel((1, 1)) == (77, 77, 77)
    assert load_image(save(Image.new("1", (3, 3), 1), tmp_path / "b.png")).getpixel((0, 0)) == (255, 255, 255)


def _png_bytes(size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.jpg", b"", r"empty\.jpg: image file is empty \(0 bytes\)"),
        ("text.jpg", b"hello, I am not an image\n" * 4, r"text\.jpg: not an image file"),
        ("cut.png", _png_bytes()[:-40], r"cut\.png: image file is (truncated|corrupt)"),
        ("cut.jpg", _jpeg_bytes()[: len(_jpeg_bytes()) // 2], r"cut\.jpg: image file is truncated"),
        ("garbage.png", _png_bytes()[:60] + b"\x00" * 200, r"garbage\.png: image file is (truncated|corrupt)"),
        (
            "flipped.png",
            _png_bytes()[:60] + bytes([_png_bytes()[60] ^ 0xFF]) + _png_bytes()[61:],
            r"flipped\.png: image file is corrupt",
        ),
    ],
)
def test_broken_files_get_one_line_errors_naming_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RlptuneError, match=match) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RlptuneError, match=r"nope\.png: image not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(RlptuneError, match="expected an image file"):
        load_image(tmp_path)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb needs no more to be dangerous)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [12_000, 60_000])
def test_decompression_bomb_guard(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(side, side))
    with pytest.raises(RlptuneError, match=r"bomb\.png: .*(above the limit|decompression bomb)"):
        load_image(path)


def test_pixel_limit_is_configurable(tmp_path):
    path = save(Image.new("RGB", (20, 20)), tmp_path / "a.png")
    with pytest.raises(RlptuneError, match="400 pixels, above the limit of 100"):
        load_image(path, max_pixels=100)
    assert load_image(path, max_pixels=None).size == (20, 20)


def _dataset(tmp_path: Path) -> DatasetSplits:
    save(Image.new("RGB", (4, 4)), tmp_path / "ok1.png")
    save(Image.new("CMYK", (4, 4)), tmp_path / "ok2.jpg")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(_jpeg_bytes()[:300])
    return DatasetSplits(
        "toy",
        tmp_path,
        ["a", "b"],
        train=[Item("ok1.png", 0, "a"), Item("zero.png", 1, "b"), Item("ok2.jpg", 1, "b")],
        val=[Item("cut.jpg", 0, "a")],
        test=[Item("ok1.png", 0, "a"), Item("zero.png", 1, "b")],
    )


def test_check_images_error_policy_raises_first_failure(tmp_path):
    with pytest.raises(RlptuneError, match=r"zero\.png: image file is empty"):
        check_images(_dataset(tmp_path), policy="error")


def test_check_images_skip_policy_reports_what_was_skipped(tmp_path):
    splits = _dataset(tmp_path)
    kept, skipped = check_images(splits, policy="skip")
    assert [i.path for i in kept.train] == ["ok1.png", "ok2.jpg"]
    assert kept.val == [] and [i.path for i in kept.test] == ["ok1.png"]
    assert [(s.split, s.path) for s in skipped] == [("train", "zero.png"), ("val", "cut.jpg"), ("test", "zero.png")]
    assert "empty" in skipped[0].reason and "truncated" in skipped[1].reason
    assert skipped_report(skipped)[1] == {"split": "val", "path": "cut.jpg", "reason": skipped[1].reason}
    assert splits.train[1].path == "zero.png"  # the input is not modified
    clean, none = check_images(kept, policy="skip")
    assert clean is kept and none == []


def test_check_images_bad_policy(tmp_path):
    with pytest.raises(RlptuneError, match="image policy 'ignore'"):
        check_images(_dataset(tmp_path), policy="ignore")
