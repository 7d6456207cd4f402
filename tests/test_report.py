"""`make report` on a copy of the finished test run, opened in headless Chromium.

Chromium is Debian's `chromium` package: the test installs it with apt-get when run as root (as the
SLURM test does with its packages) and skips, printing why, otherwise. Chromium runs the report's
JavaScript app; the test reads the DOM after load and a screenshot."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from workflow_runner import REPO, VENV_BIN, clone_run, machine_lock, workflow_env

sys.path.insert(0, str(REPO / "workflow"))
from quiltflow.compare.mdhtml import markdown_to_html  # noqa: E402

MODELS = ("custom_cnn", "resnet50_frozen", "resnet50_finetune")  # config/test.yaml
ROWS = (*MODELS, "ensemble", "majority_baseline", "stratified_baseline")
EXPLAINED = "custom_cnn"  # the galleries looked for in the report (explained_run explains every model)
EXTERNAL = re.compile(r"<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]


def chromium_or_skip() -> str:
    """The chromium binary; installed with apt-get as root when missing, else the test skips."""
    found = shutil.which("chromium")
    if found:
        return found
    reason = None
    if os.geteuid() != 0:
        reason = "chromium is not installed and installing it needs root (apt-get install chromium)"
    elif not shutil.which("apt-get"):
        reason = "chromium is not installed and there is no apt-get to install it"
    else:
        reason = _apt_install_chromium()
    if reason is None and not shutil.which("chromium"):
        reason = "apt-get installed chromium but there is no `chromium` on PATH"
    if reason:
        print(f"SKIP report in a browser: {reason}")
        pytest.skip(reason)
    return shutil.which("chromium")


def _apt_install_chromium(timeout: float = 600) -> str | None:
    """apt-get update + install; the reason it failed, or None."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    start = time.monotonic()
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            with machine_lock("apt-get"):  # the other pytest worker may be installing SLURM
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return f"'{' '.join(cmd)}' took over {timeout:.0f} s (no network?)"
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
            return f"'{' '.join(cmd)}' failed: {tail[0]}"
    print(f"apt-get installed chromium in {time.monotonic() - start:.0f} s")
    return None


class ReportDom(HTMLParser):
    """What the test checks in the DOM after load: the comparison table's rows (first cells),
    every <img> src on the page, and the report's embedded `results` (file -> record)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self.results: dict = {}
        self._in_table = self._in_cell = self._in_results = False
        self._table_depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "comparison-table":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._in_cell = True
            self.rows[-1].append("")
        elif tag == "img":
            self.images.append(attrs.get("src") or "")
        elif tag == "script" and attrs.get("id") == "results":
            self._in_results = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th"):
            self._in_cell = False
        elif tag == "script":
            self._in_results = False

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1][-1] += data.strip()
        elif self._in_results and "var results =" in data:
            text = data.split("var results =", 1)[1].lstrip()
            self.results, _ = json.JSONDecoder().raw_decode(text)


def decode_png(uri: str) -> Image.Image:
    """A data: URI's PNG (fails if it is not one, i.e. if the image was not embedded)."""
    assert uri.startswith("data:image/png"), uri[:80]
    image = Image.open(io.BytesIO(base64.b64decode(uri.split("base64,", 1)[1])))
    image.load()
    assert image.format == "PNG" and image.width > 0 and image.height > 0
    return image


def build_report(workdir: Path) -> float:
    """`make report` (the target itself: the venv is the test's, the config the test config)."""
    shutil.copy2(REPO / "Makefile", workdir / "Makefile")
    start = time.monotonic()
    cmd = ["make", "-o", "venv", "report", f"VENV={VENV_BIN.parent}", "REPORT_ARGS=--configfile config/test.yaml"]
    proc = subprocess.run(cmd, cwd=workdir, env=workflow_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return time.monotonic() - start


def open_in_chromium(chromium: str, html: Path, screenshot: Path) -> str:
    """The DOM after the report's app rendered, and a 1400 x 2000 screenshot of it."""
    url = html.resolve().as_uri()
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, "--window-size=1400,2000", f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    return dom.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_make_report_renders_table_plots_and_galleries_in_chromium(explained_run, tmp_path):
    chromium = chromium_or_skip()
    # The shared explained_run (finished_run after `snakemake explain`): its galleries are in the report.
    workdir = clone_run(explained_run, tmp_path / "run")
    timings = {"make report": build_report(workdir)}
    report = workdir / "results/report.html"
    # Self-contained: nothing is fetched (CI has no internet); the strings in bundled scripts aside.
    external = EXTERNAL.search(report.read_text(errors="ignore"))
    assert external is None, external
    start = time.monotonic()
    dom = ReportDom()
    dom.feed(open_in_chromium(chromium, report, tmp_path / "report.png"))
    timings["chromium"] = time.monotonic() - start
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()}, file=sys.stderr)

    # The landing page: the comparison table, one row per model, the ensemble and the baselines.
    header, *body = dom.rows
    assert header[0] == "model" and sorted(row[0] for row in body) == sorted(ROWS), dom.rows
    # Its images (the main plots) are embedded PNGs with a size.
    page_pngs = [decode_png(src) for src in dom.images if src.startswith("data:image/png")]
    assert len(page_pngs) >= 2, [src[:40] for src in dom.images]
    assert all(not src.startswith(("http:", "https:", "file:")) for src in dom.images)
    _assert_every_result_embedded(dom.results)
    _assert_not_blank(Image.open(tmp_path / "report.png"))


def _assert_every_result_embedded(results: dict) -> None:
    """Every report item is in the file as a data: URI; the PNGs decode (galleries included)."""
    expected = {
        "results/comparison.html",
        "results/comparison.md",
        "results/plots/metrics.png",
        "results/plots/training_curves.png",
        "results/metadata/filter_report.json",
        *(f"results/plots/{kind}_{m}.png" for kind in ("confusion", "reliability") for m in MODELS),
        f"results/explain/{EXPLAINED}/mistakes.png",
    }
    assert expected <= set(results), sorted(expected - set(results))
    galleries = [path for path in results if path.startswith(f"results/explain/{EXPLAINED}/")]
    assert len(galleries) >= 2, galleries  # mistakes.png and at least one class
    for path, record in results.items():
        assert record["data_uri"].startswith("data:"), path
        if path.endswith(".png"):
            decode_png(record["data_uri"])


def _assert_not_blank(screenshot: Image.Image) -> None:
    """The page drew something: many colours and real contrast, not one flat colour."""
    grey = screenshot.convert("L")
    assert screenshot.size == (1400, 2000)
    assert len(grey.getcolors(maxcolors=256) or range(256)) > 16
    assert ImageStat.Stat(grey).stddev[0] > 10


def test_markdown_subset_becomes_escaped_html_with_one_table_id():
    text = "# T\n\nA **b** `c` <x>.\n\n| m | v |\n| --- | --- |\n| a | 1 |\n\n- one\n- two\n\n| x |\n| --- |\n| y |\n"
    dom = ReportDom()
    page = markdown_to_html(text, table_id="comparison-table")
    dom.feed(page)
    assert "<h1>T</h1>" in page and "<p>A <strong>b</strong> <code>c</code> &lt;x&gt;.</p>" in page
    assert dom.rows == [["m", "v"], ["a", "1"]]  # only the first table gets the id
    assert page.count('id="comparison-table"') == 1 and "<li>two</li>" in page
