"""Importing the package keeps third-party import-time notices we cannot act on off the console."""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)


def test_no_torchvision_fallback_notice_when_diffusers_loads() -> None:
    code = "import tpgrpo, diffusers; diffusers.StableDiffusion3Pipeline; diffusers.FluxPipeline"
    out = python(code)
    assert "requires torchvision" not in out.stderr + out.stdout


def test_other_transformers_warnings_still_show() -> None:
    code = (
        "import tpgrpo, logging; "
        "logging.getLogger('transformers.utils.import_utils').warning('something else')"
    )
    out = python(code)
    assert "something else" in out.stderr
