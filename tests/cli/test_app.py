"""The CLI's own commands: help, config validation, stage argument errors, serve-reward."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tpgrpo.cli.app import app
from tpgrpo.rewards.wire import encode_image
from tpgrpo.world.scenes import sample_batch

runner = CliRunner()
CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


def _main(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `tpgrpo ARGS` through the real entry point (exit codes and stderr as users see them)."""
    return subprocess.run(
        [sys.executable, "-m", "tpgrpo.cli.app", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_help_lists_every_command() -> None:
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for command in (
        "train",
        "stage",
        "config",
        "pretrain",
        "rescore",
        "annotate",
        "evaluate",
        "export",
        "runs",
        "audit",
        "report",
        "serve-reward",
    ):
        assert command in out.output


def test_config_validate_ok() -> None:
    out = runner.invoke(app, ["config", "validate", CONFIG])
    assert out.exit_code == 0, out.output
    assert "valid" in out.output and "tp_constrained" in out.output


def test_config_validate_lists_every_problem(tmp_path: Path) -> None:
    proc = _main(
        "config",
        "validate",
        CONFIG,
        "--set",
        "update.lr=-1",
        "--set",
        "rollout.group_size=1",
        "--set",
        "nope.key=3",
        "--set",
        "reward.mode=best",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for needle in ("update.lr", "rollout.group_size", "nope", "reward.mode", "4 problem(s)"):
        assert needle in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_config_show_redacts_credentials(tmp_path: Path) -> None:
    out = runner.invoke(app, ["config", "show", CONFIG, "--set", "storage.s3.secret=hunter2-SECRET"])
    assert out.exit_code == 0
    assert "hunter2-SECRET" not in out.output and "<redacted>" in out.output
    assert json.loads(out.output)["storage"]["s3"]["secret"] == "<redacted>"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stage", "rollout", "--run", "nope", "--iter", "0"], "unknown run 'nope'"),
        (["stage", "bake", "--run", "nope", "--iter", "0"], "unknown stage 'bake'"),
        (["train", "missing.yaml"], "config file 'missing.yaml' not found"),
    ],
)
def test_bad_arguments_exit_2_with_one_message(args: list[str], needle: str, tmp_path: Path) -> None:
    proc = _main(*args, "--root", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("reward", ["shapes", "shapes_pref"])
def test_serve_reward_answers_health_and_score(reward: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tpgrpo.cli.app", "serve-reward", reward, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"serving reward '{reward}'" in line and "127.0.0.1" in line
        url = line.rsplit(" at ", 1)[1].strip()
        deadline = time.time() + 30
        while True:
            try:
                health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=5).read())
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert health["key"] == reward
        images, prompts = sample_batch(np.random.default_rng(0), 2)
        body = json.dumps({"prompts": prompts, "images": [encode_image(im) for im in images]}).encode()
        request = urllib.request.Request(f"{url}/score", body, {"Content-Type": "application/json"})
        scores = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert scores["key"] == reward and scores["scores"] == pytest.approx([1.0, 1.0])  # ground truth
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_config_validate_shows_the_window_on_the_model_grid() -> None:
    out = runner.invoke(app, ["config", "validate", CONFIG])
    assert out.exit_code == 0, out.output
    # the embedded checkpoint's shift-3 grid at T = 10, cps a = 0.7 (SPEC §2)
    assert "window [0, 8) (default: SPEC §2 floor 0.05, step 8 has std 0.0080)" in out.output


def test_window_under_the_floor_refused_before_anything_is_written(tmp_path: Path) -> None:
    """`config validate` and `train` both refuse an explicit window holding step 8 (std 0.008), with
    the step, its std and the fix; `train` writes nothing."""
    for command in (["config", "validate", CONFIG], ["train", CONFIG, "--root", str(tmp_path / "runs")]):
        proc = _main(*command, "--set", "sampling.window_size=9", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "step 8 (σ 0.2780 → 0.0089, cps step std 0.0080)" in proc.stderr
        assert "set sampling.window_size to null (the default window, W = 8 here)" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_audit_help_lists_health() -> None:
    out = runner.invoke(app, ["audit", "--help"])
    assert out.exit_code == 0
    for command in ("trajectory", "turning-points", "verify", "health"):
        assert command in out.output
    out = runner.invoke(app, ["audit", "health", "--help"])
    assert out.exit_code == 0 and "--strict" in out.output and "squared gradient" in out.output


def test_pretrain_never_writes_into_the_installed_package_by_default() -> None:
    import tpgrpo
    from tpgrpo.cli.pretrain_cmd import DEFAULT_OUT

    package = Path(tpgrpo.__file__).resolve().parent
    assert package not in Path(DEFAULT_OUT).resolve().parents


def test_prefect_home_is_created_with_its_parents_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prefect creates only the last level of PREFECT_HOME; a missing parent made its temporary
    server fail to start after a 2-minute wait. The CLI creates the parents, or says why it cannot."""
    from tpgrpo.cli.app import prefect_environment

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "a" / "b" / ".prefect"))
    prefect_environment()
    assert (tmp_path / "a" / "b").is_dir()  # Prefect makes .prefect itself, when a flow runs
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "file" / ".prefect"))
    with pytest.raises(SystemExit) as exit_info:
        prefect_environment()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot create PREFECT_HOME") and "writable folder" in error
