"""Credentials never leave the process: not in manifests, `run.json`, logs, Prefect's database or
reports.

A run on the moto S3 server with secret-looking `storage.s3.key/secret` in its config and other
secret-looking `AWS_*` variables in the environment (the commands reading the run back use those),
then every object of the run, the report, every file of the Prefect server's and clients' homes
(flow parameters are stored there) and everything printed or logged is scanned for the secrets, raw
and base64-encoded.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
from flows.conftest import small_config
from ops.conftest import run_cli

from .conftest import PrefectServer, use_server

pytestmark = [pytest.mark.s3, pytest.mark.integration]

CONFIG_KEY = "AKIACONFIGKEY7Q3XW9ZL"
CONFIG_SECRET = "cfgSecret/8Jk+2mPq9vR7sT4uW1xY3zA6bC0dEfGh"
ENV_KEY = "AKIAENVIRONKEY5H2J8K"
ENV_SECRET = "envSecret/Qw3+Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz"
ENV_TOKEN = "envToken/FwoGZXIvYXdzEJr//////////wEaDPLEASEdontLEAKme"
SECRETS = (CONFIG_KEY, CONFIG_SECRET, ENV_KEY, ENV_SECRET, ENV_TOKEN)


def _needles() -> list[bytes]:
    out = []
    for secret in SECRETS:
        raw = secret.encode()
        out += [raw, base64.b64encode(raw), secret.replace("/", "\\/").encode()]
    return out


def _leaks(name: str, data: bytes) -> list[str]:
    return [f"{name}: {needle[:12]!r}…" for needle in _needles() if needle in data]


def _scan_dir(directory: Path) -> tuple[list[str], int]:
    leaks, count = [], 0
    for path in directory.rglob("*"):
        if path.is_file():
            count += 1
            leaks += _leaks(str(path), path.read_bytes())
    return leaks, count


def test_no_credential_is_written_anywhere(
    flow_pipeline: Path,
    prefect_server: PrefectServer,
    s3_bucket: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import s3fs
    from prefect.settings import get_current_settings

    from tpgrpo.config import load_config_data
    from tpgrpo.flows.train import train

    caplog.set_level(logging.DEBUG, logger="tpgrpo")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", ENV_TOKEN)
    data = small_config(flow_pipeline, Path("."), iterations=1)
    data["storage"] = {
        "root": s3_bucket.root,
        "s3": {"endpoint_url": s3_bucket.endpoint_url, "key": CONFIG_KEY, "secret": CONFIG_SECRET},
    }
    cfg = load_config_data(data)
    assert CONFIG_SECRET not in repr(cfg) and CONFIG_SECRET not in str(cfg.storage_options())
    with use_server(prefect_server):
        train(cfg, run_id="secret-run")
    # the commands that read the run back take their credentials from the environment
    outputs = [
        run_cli("runs", "show", "secret-run", "--root", s3_bucket.root),
        run_cli("audit", "verify", "--run", "secret-run", "--root", s3_bucket.root, "-v"),
        run_cli("report", "--run", "secret-run", "--root", s3_bucket.root, "--out", str(tmp_path / "report")),
        run_cli("config", "show", "-"),  # (a missing file: its error message)
    ]
    for result in outputs[:3]:
        assert result.exit_code == 0, result.output
    leaks: list[str] = []
    fs = s3fs.S3FileSystem(**s3_bucket.storage_options)
    objects = fs.find(f"{s3_bucket.bucket}/runs/secret-run")
    assert any(o.endswith("run.json") for o in objects) and any(o.endswith("_MANIFEST.json") for o in objects)
    for key in objects:
        leaks += _leaks(f"s3://{key}", fs.cat_file(key))
    scanned = len(objects)
    report_leaks, n = _scan_dir(tmp_path / "report")
    leaks += report_leaks
    scanned += n
    assert n >= 2  # the HTML page and its plots
    for home in {*prefect_server.homes, Path(get_current_settings().home)}:
        if home.is_dir():
            home_leaks, n = _scan_dir(home)
            leaks += home_leaks
            scanned += n
    captured = capfd.readouterr()
    leaks += _leaks("stdout", captured.out.encode()) + _leaks("stderr", captured.err.encode())
    leaks += _leaks("logs", caplog.text.encode())
    for result in outputs:
        leaks += _leaks("cli output", result.output.encode())
    assert not leaks, "\n".join(leaks)
    assert scanned > 20
    run_json = fs.cat_file(f"{s3_bucket.bucket}/runs/secret-run/run.json").decode()
    assert '"key": "<redacted>"' in run_json and '"secret": "<redacted>"' in run_json
