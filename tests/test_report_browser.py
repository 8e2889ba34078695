"""report.html opened in a real headless Chromium: every figure and table is laid out, painted and not clipped.

Two Chromium runs on a sample results folder (base-to-new, few-shot with zero-shot CLIP, a plain train run, spectra,
training curves with validation accuracy): ``--dump-dom`` on a copy of the page with a measuring script appended
(the report itself has no scripts) gives each figure's and table's box, computed style and image decode state;
``--screenshot`` of the untouched page at its full height gives the pixels, and each measured box must contain
ink, not blank page. The screenshot stays in the test's temporary folder (``report.png``) as an artifact.

Skipped only when Chromium is missing and ``CI`` is unset; in CI a missing browser fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rlptune.report.writer import write_report
from rlptune.analysis.spectrum import prompt_diagnostics

WIDTH = 1200
_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--mute-audio",
]

# Appended to a copy of report.html: after load, measure every figure image and results table into a <pre>.
_MEASURE = """
<script>
window.addEventListener("load", () => {
  const page = document.documentElement.getBoundingClientRect();
  const items = [];
  const seen = (el, kind, id) => {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    let clipped = false;
    for (let p = el.parentElement; p; p = p.parentElement) {
      const ps = getComputedStyle(p);
      if (ps.overflowX !== "visible" && p.scrollWidth > p.clientWidth + 1) clipped = "scrolls inside " + p.className;
    }
    items.push({kind, id, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height, display: s.display,
                visibility: s.visibility, opacity: parseFloat(s.opacity), clipped,
                decoded: el.tagName !== "IMG" || (el.complete && el.naturalWidth > 0),
                natural: el.tagName === "IMG" ? [el.naturalWidth, el.naturalHeight] : null});
  };
  document.querySelectorAll("figure").forEach(f => seen(f.querySelector("img"), "figure", f.id));
  document.querySelectorAll("table.results").forEach(t => seen(t, "table", t.id));
  const out = document.createElement("pre");
  out.id = "measurements";
  out.textContent = JSON.stringify({width: page.width, height: document.documentElement.scrollHeight,
                                    viewport: innerWidth, items});
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _run_chromium(binary: str, profile: Path, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [binary, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": str(profile)}  # no reads of, or writes to, the user's real browser profile
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def _runs(root: Path) -> None:
    """A results folder like a small real sweep, with the cases the report must not get wrong."""
    rng = np.random.default_rng(0)

    def write(name: str, result: dict, history: list | None = None) -> None:
        run = root / name
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps(result))
        if history:
            (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))

    def diag(rank: int) -> dict:
        import torch

        g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
        p0 = torch.randn(4, 32, generator=g)
        return {
            "ctx": prompt_diagnostics(p0 + torch.randn(4, rank, generator=g) @ torch.randn(rank, 32, generator=g), p0)
        }

    for ds in ("micro-shapes", "micro-patterned-textures-with-a-long-name"):
        for seed in (1, 2):
            write(
                f"base2new/{ds}/zeroshot/shots0/seed{seed}",
                {
                    "protocol": "base2new",
                    "dataset": ds,
                    "method": "zeroshot",
                    "seed": seed,
                    "shots": 0,
                    "metrics": {"base": {"top1": 70.0}, "new": {"top1": 72.0}},
                },
            )
            for method, rank, gain in (("coop", 4, 6.0), ("rlp", 1, 8.0)):
                shift = gain + len(ds) / 10  # each run its own curve
                history = (
                    [
                        {
                            "epoch": e,
                            "lr": 0.002,
                            "loss": 1.5 / e + 0.1 * (e % 4) + shift / 50,
                            "train_acc": 50 + shift + 3 * e - 2 * (e % 4),
                            "val_acc": 48 + shift + 2.5 * e,
                        }
                        for e in range(1, 9)
                    ]
                    if seed == 1
                    else None
                )
                write(
                    f"base2new/{ds}/{method}/shots4/seed{seed}",
                    {
                        "protocol": "base2new",
                        "dataset": ds,
                        "method": method,
                        "seed": seed,
                        "shots": 4,
                        "trainable_params": 2048 if method == "coop" else 36,
                        "metrics": {"base": {"top1": 70 + gain + seed}, "new": {"top1": 71 + gain / 2 - seed}},
                        "prompt_diagnostics": diag(rank),
                        "settings": {},
                    },
                    history,
                )
        for shots in (1, 2, 4):
            for seed in (1, 2):
                write(
                    f"few-shot/{ds}/zeroshot/shots{shots}/seed{seed}",
                    {
                        "protocol": "few-shot",
                        "dataset": ds,
                        "method": "zeroshot",
                        "seed": seed,
                        "shots": shots,
                        "metrics": {"test": {"top1": 65.0}},
                    },
                )
                for method in ("coop", "rlp"):  # equal accuracies: the curves must not hide each other
                    write(
                        f"few-shot/{ds}/{method}/shots{shots}/seed{seed}",
                        {
                            "protocol": "few-shot",
                            "dataset": ds,
                            "method": method,
                            "seed": seed,
                            "shots": shots,
                            "metrics": {"test": {"top1": 60.0 + 4 * shots}},
                        },
                    )
    write(
        "train/colours",
        {
            "protocol": "train",
            "dataset": "colours",
            "method": "rlp",
            "seed": 1,
            "shots": 4,
            "metrics": {"test": {"top1": 81.0, "macro_f1": 80.0}},
        },
    )


def _ink(shot: np.ndarray, item: dict) -> float:
    """Share of pixels in the element's box that differ from the white page."""
    x0, y0 = max(int(item["x"]) + 2, 0), max(int(item["y"]) + 2, 0)
    x1, y1 = int(item["x"] + item["w"]) - 2, int(item["y"] + item["h"]) - 2
    box = shot[y0:y1, x0:x1, :3].astype(int)
    assert box.size, f"{item['id']}: box {x0},{y0}-{x1},{y1} is outside the screenshot {shot.shape}"
    return float((np.abs(box - 255).sum(-1) > 30).mean())


def test_report_html_renders_every_figure_and_table_in_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI: Chromium is required for the report browser test (apt-get install chromium)")
        pytest.skip("chromium is not installed (set CI=1 to make this a failure)")
    from PIL import Image

    _runs(tmp_path / "runs")
    out = tmp_path / "report"
    write_report(tmp_path / "runs", out)
    html = (out / "report.html").read_text(encoding="utf-8")
    expected_figures = sorted(re.findall(r'<figure id="([^"]+)"', html))
    expected_tables = sorted(re.findall(r'<table class="results" id="([^"]+)"', html))
    assert expected_figures == sorted(
        [
            "figure-base2new-bars",
            "figure-few-shot-curves",
            "figure-id-vs-new",
            "figure-spectra",
            "figure-spectra-delta",
            "figure-training-curves",
        ]
    )
    assert expected_tables == sorted(
        ["table-base2new", "table-few_shot", "table-other_runs", "table-comparisons", "table-diagnostics"]
    )

    measure = out / "measure.html"  # next to report.html so relative paths would resolve the same way
    measure.write_text(html.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    dumped = _run_chromium(
        binary,
        tmp_path / "profile-dom",
        [f"--window-size={WIDTH},900", "--virtual-time-budget=10000", "--dump-dom", measure.as_uri()],
    )
    found = re.search(r'<pre id="measurements">(.*?)</pre>', dumped.stdout, re.S)
    assert found, f"no measurements in Chromium's DOM (rc {dumped.returncode}): {dumped.stderr[-2000:]}"
    page = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    items = page["items"]
    assert sorted(i["id"] for i in items if i["kind"] == "figure") == expected_figures
    assert sorted(i["id"] for i in items if i["kind"] == "table") == expected_tables
    for item in items:
        where = f"{item['kind']} {item['id']}"
        assert item["display"] != "none" and item["visibility"] == "visible" and item["opacity"] == 1.0, where
        assert item["w"] >= 200 and item["h"] >= 40, f"{where} is {item['w']}×{item['h']} px"
        assert item["x"] >= 0 and item["x"] + item["w"] <= page["viewport"] + 0.5, f"{where} sticks out of the page"
        assert item["decoded"], f"{where}: the embedded PNG did not decode"
        assert not item["clipped"], f"{where}: {item['clipped']}"
    for item in items:
        if item["kind"] == "figure":  # scaled to the column, aspect ratio kept
            natural_w, natural_h = item["natural"]
            assert item["w"] <= natural_w and abs(item["h"] / item["w"] - natural_h / natural_w) < 0.01, item["id"]

    height = int(page["height"]) + 10
    shot_path = tmp_path / "report.png"  # the artifact: kept in the test's temporary folder
    shot = _run_chromium(
        binary,
        tmp_path / "profile-shot",
        [
            f"--window-size={WIDTH},{height}",
            "--virtual-time-budget=10000",
            f"--screenshot={shot_path}",
            (out / "report.html").as_uri(),
        ],
    )
    assert shot_path.is_file(), f"Chromium wrote no screenshot (rc {shot.returncode}): {shot.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot_path).convert("RGB"))
    assert pixels.shape[1] == WIDTH and pixels.shape[0] >= page["height"] - 1, pixels.shape
    for item in items:
        ink = _ink(pixels, item)
        assert ink > 0.01, f"{item['kind']} {item['id']}: its box is blank in the screenshot ({ink:.3%} ink)"
    print(f"screenshot: {shot_path} ({pixels.shape[1]}×{pixels.shape[0]} px, {len(items)} elements checked)")
