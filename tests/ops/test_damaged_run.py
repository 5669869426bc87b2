"""A damaged `run.json`: one clear line from every command that reads the run, never a traceback;
`runs list` still lists every healthy run and flags the damaged one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import StoredRun, run_cli

DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "not UTF-8": lambda text: "\udcff",
    "a list": lambda text: "[1, 2]",
    "no config": lambda text: json.dumps({"run_id": "x"}),
    "a config this version refuses": lambda text: json.dumps({**json.loads(text), "config": {"seed": "x"}}),
}
EXPECTED = {
    "truncated": "not valid JSON",
    "not UTF-8": "not UTF-8 text",
    "a list": "a JSON list, not an object",
    "no config": "holds no 'config' object",
    "a config this version refuses": "holds a config this tpgrpo refuses",
}


def _damage(run: Path, how: str) -> None:
    path = run / "run.json"
    text = DAMAGE[how](path.read_text())
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def _assert_one_line(result: object, *fragments: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output)  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("how", list(DAMAGE))
def test_every_command_says_so_in_one_line(run_copy: StoredRun, tmp_path: Path, how: str) -> None:
    _damage(run_copy.dir, how)
    key = run_copy.reward_key
    commands = [
        ["audit", "verify", *run_copy.args()],
        ["runs", "show", run_copy.run_id, "--root", str(run_copy.root)],
        ["report", *run_copy.args("--out", str(tmp_path / "report"))],
        ["rescore", *run_copy.args("--reward", '{"name": "jpeg", "key": "jpeg_q5", "quality": 5}')],
        ["annotate", *run_copy.args("--reward", key, "--mode", "tp")],
        ["audit", "trajectory", *run_copy.args("--iter", "0", "--traj", "0")],
        ["audit", "turning-points", *run_copy.args()],
        ["evaluate", *run_copy.args()],
        ["stage", "score", *run_copy.args("--iter", "0")],
        ["runs", "invalidate", run_copy.run_id, "--from", "1", "--root", str(run_copy.root)],
    ]
    before = {p: p.read_bytes() for p in run_copy.dir.rglob("*") if p.is_file()}
    for command in commands:
        _assert_one_line(run_cli(*command), f"run '{run_copy.run_id}'", EXPECTED[how], "run.json")
    assert {p: p.read_bytes() for p in run_copy.dir.rglob("*") if p.is_file()} == before


def test_runs_list_shows_the_healthy_runs_and_flags_the_damaged_one(run_copy: StoredRun) -> None:
    root = Path(run_copy.root)
    shutil.copytree(run_copy.dir, root / "healthy")
    _damage(run_copy.dir, "truncated")
    result = run_cli("runs", "list", "--root", str(root))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"healthy", run_copy.run_id}
    assert rows["healthy"].split()[1] == "complete"
    assert rows[run_copy.run_id].split()[1] == "damaged"
    assert "not valid JSON" in rows[run_copy.run_id] and "restore run.json" in rows[run_copy.run_id]
