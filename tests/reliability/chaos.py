"""Kill -9 a `tpgrpo train` process at chosen points, and tell where a kill landed.

A kill point is (iteration, stage, delay): the CLI runs with Prefect INFO logs, and once the log
line that precedes the stage appears (its input finished, or was skipped as finished), the process
group gets SIGKILL after `delay` seconds. Where the kill really landed is read back from storage:
the first step whose output is not finished.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tpgrpo.storage import RunLayout

STAGES = ("rollout", "branch", "score", "annotate", "update")
REWARD_KEY = "jpeg_incompressibility"
MODE = "tp_constrained"


@dataclass(frozen=True)
class KillPoint:
    """Kill `delay` seconds after the log line that starts `stage` of `iteration`."""

    iteration: int
    stage: str
    delay: float

    def pattern(self) -> re.Pattern[str]:
        i, stage = self.iteration, self.stage
        if stage == "rollout":
            return re.compile(
                r"Task run 'init-run-[^']*' - Finished" if i == 0 else rf" - update it{i - 1}: "
            )
        previous = {"branch": "rollout", "score": "branch", "annotate": "score"}
        if stage in previous:
            return re.compile(rf" - {previous[stage]} it{i}: ")
        return re.compile(rf" - iteration {i}: final reward")

    def order(self) -> tuple[int, int]:
        return self.iteration, STAGES.index(self.stage)


@dataclass
class Outcome:
    """One process of a chain: whether it was killed, its exit code, its output, where it ended."""

    point: KillPoint | None
    killed: bool
    returncode: int | None
    output: str
    landed: str
    seconds: float


def train_command(config: Path, run_id: str) -> list[str]:
    return [sys.executable, "-m", "tpgrpo.cli.app", "train", str(config), "--run-id", run_id]


def run_process(
    config: Path, run_id: str, env: dict[str, str], point: KillPoint | None, timeout: float = 900
) -> tuple[bool, int | None, str]:
    """Runs the CLI; with `point`, SIGKILLs its process group there. Returns (killed, rc, output)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        train_command(config, run_id),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # a group of its own: the kill takes every thread and child
    )
    assert proc.stdout is not None
    lines: list[str] = []
    hit = threading.Event()
    pattern = point.pattern() if point is not None else None

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if pattern is not None and pattern.search(line):
                hit.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed = False
    if point is not None:
        while not hit.wait(0.02) and proc.poll() is None and time.monotonic() - started < timeout:
            pass
        if hit.is_set():
            time.sleep(point.delay)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
    try:
        returncode = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    reader.join(timeout=10)
    return killed, returncode, "".join(lines)


def _finished(uri: str) -> bool:
    return (Path(uri) / "_MANIFEST.json").is_file()


def progress(layout: RunLayout, iterations: int) -> str:
    """The first unfinished step of a local run: `init`, `it0.rollout`, …, `it1.update`, or `done`."""
    if not (_finished(layout.prompts()) and (Path(layout.checkpoint(0)) / "_CHECKPOINT.json").is_file()):
        return "init"
    for i in range(iterations):
        outputs = {
            "rollout": layout.rollouts(i),
            "branch": layout.branches(i),
            "score": layout.rewards(i, REWARD_KEY),
            "annotate": layout.annotations(i, REWARD_KEY, MODE),
        }
        for stage, uri in outputs.items():
            if not _finished(uri):
                return f"it{i}.{stage}"
        if not (
            _finished(layout.updates(i)) and (Path(layout.checkpoint(i + 1)) / "_CHECKPOINT.json").is_file()
        ):
            return f"it{i}.update"
    return "done"


def debris(layout: RunLayout) -> list[str]:
    """Dataset and checkpoint directories holding files but no manifest (what a kill leaves)."""
    run = Path(layout.run_dir)
    found = []
    for directory in sorted(p for p in run.rglob("*") if p.is_dir()):
        files = [f for f in directory.iterdir() if f.is_file()]
        manifests = {"_MANIFEST.json", "_CHECKPOINT.json"}
        if files and not any(f.name in manifests for f in files) and directory != run:
            found.append(str(directory.relative_to(run)))
    return found


def run_chain(
    config: Path,
    run_id: str,
    layout: RunLayout,
    env: dict[str, str],
    points: list[KillPoint],
    iterations: int,
) -> list[Outcome]:
    """Kills at each point in turn (each a fresh process resuming the last), then runs to the end."""
    outcomes = []
    for point in [*points, None]:
        started = time.monotonic()
        killed, returncode, output = run_process(config, run_id, env, point)
        outcomes.append(
            Outcome(
                point, killed, returncode, output, progress(layout, iterations), time.monotonic() - started
            )
        )
    return outcomes
