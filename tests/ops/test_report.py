"""`tpgrpo report`: PNG plots and one self-contained HTML page, rendered in headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import StoredRun, assert_user_error, run_cli

EXPECTED = [
    "rewards.png",
    "eval_samples.png",
    "turning_points.png",
    "learning.png",
    "strips_iter=0000.png",
    "strips_iter=0001.png",
]


@pytest.fixture(scope="module")
def report_dir(stored_run: StoredRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    result = run_cli("report", *stored_run.args("--out", str(out)))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("png:")] == [f"png:  {out / name}" for name in EXPECTED]
    # last: what the model learned, the paired gain of the last evaluated checkpoint over the first
    assert lines[-2] == f"html: {out / 'index.html'}"
    assert lines[-1].startswith("learned: Paired gain of checkpoint 2 over checkpoint 0 (same images")
    assert "score " in lines[-1] and "95 % CI" in lines[-1]
    return out


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    return path


def _headless(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_plots_are_real_images(report_dir: Path) -> None:
    for name in EXPECTED:
        image = np.asarray(Image.open(report_dir / name).convert("RGB"))
        assert image.shape[0] > 200 and image.shape[1] > 200, name
        assert (image < 250).mean() > 0.02, f"{name} is (nearly) blank"
    rewards = Image.open(report_dir / "rewards.png")
    assert rewards.width > rewards.height  # three panels side by side


def test_html_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(EXPECTED)
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert sorted(embedded) == sorted((report_dir / name).read_bytes() for name in EXPECTED)
    for external in ("http://", "https://", "<script", "<link", 'src="file', "url("):
        assert external not in page, external
    headings = ("Run", "Reward", "Evaluation", "Turning points", "Learning health", "Example trajectories")
    for heading in headings:
        assert f"<h2>{heading}</h2>" in page


def test_html_loads_with_its_images_in_chromium(report_dir: Path, tmp_path: Path) -> None:
    """Chromium loads the page (a copy with a probe script) and decodes every embedded image."""
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    probe = (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        "document.body.setAttribute('data-images', imgs.length);"
        "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);"
        "document.body.setAttribute('data-decoded', ok.length);"
        "document.body.setAttribute('data-widths', imgs.map(i => i.naturalWidth).join(','));});</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    done = _headless(probed.as_uri(), tmp_path, "--virtual-time-budget=10000", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body is not None, done.stdout[:500]
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert attrs["images"] == attrs["decoded"] == str(len(EXPECTED)), attrs
    widths = sorted(int(w) for w in attrs["widths"].split(","))
    assert widths == sorted(Image.open(report_dir / n).width for n in EXPECTED)
    assert "<h1>tpgrpo run opsrun</h1>" in done.stdout


def test_html_renders_in_chromium(report_dir: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    done = _headless(
        (report_dir / "index.html").as_uri(), tmp_path, "--window-size=1400,2400", f"--screenshot={shot}"
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2400, 1400)
    # plots and sample images make a good part of the first screen non-white (the page is white,
    # the samples' backgrounds light grey: 240 per channel)
    assert (image.sum(axis=2) < 750).mean() > 0.05
    assert len(np.unique(image.reshape(-1, 3)[::7], axis=0)) > 50  # not a flat page


def test_report_bad_arguments(stored_run: StoredRun, tmp_path: Path) -> None:
    out = str(tmp_path / "r")
    assert_user_error(
        run_cli("report", *stored_run.args("--out", out, "--reward", "nope")), "reward key 'nope'"
    )
    assert_user_error(
        run_cli("report", *stored_run.args("--out", out, "--mode", "best")), "unknown reward mode 'best'"
    )
    assert_user_error(
        run_cli("report", "--run", "nope", "--root", str(stored_run.root)), "unknown run 'nope'"
    )
    assert not Path(out).exists()
