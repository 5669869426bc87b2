"""The wheel works on its own: built from this tree and installed into a fresh venv, `tpgrpo train`
with no config argument trains the shipped tiny config from an empty folder (the configs live in
the package), and `config show` finds a shipped config by name."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "runs", "build", "dist", ".prefect", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_a_wheel_in_a_fresh_venv_trains_the_shipped_config(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(ROOT, source, symlinks=True, ignore=lambda d, names: [n for n in names if n in SKIP])
    wheels = tmp_path / "wheels"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        wheels,
        ".",
        cwd=source,
    )
    (wheel,) = wheels.glob("tpgrpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"tpgrpo/configs/tiny.yaml", "tpgrpo/configs/sd35m_pickscore.yaml"} <= set(names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    # the dependencies come from this environment's site-packages (plain paths: its editable
    # tpgrpo finder is not loaded), tpgrpo itself from the wheel
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "-q", wheel, cwd=tmp_path)

    work = tmp_path / "empty"
    work.mkdir()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PYTHONPATH", None)
    where = run(venv / "bin" / "python", "-c", "import tpgrpo; print(tpgrpo.__file__)", cwd=work, env=env)
    assert where.startswith(str(venv))
    tpgrpo = venv / "bin" / "tpgrpo"
    shown = run(tpgrpo, "config", "show", "sd35m_pickscore", cwd=work, env=env)  # a shipped config by name
    assert '"name": "sd35m-pickscore"' in shown
    small = ["--set", "rollout.prompts_per_batch=1", "--set", "rollout.batches_per_iteration=1"]
    run(tpgrpo, "train", "--iterations", "1", *small, "--set", "rollout.group_size=2", cwd=work, env=env)
    assert (work / "runs" / "tiny" / "checkpoints" / "iter=0001").is_dir()  # the config's name, ./runs
