"""`plan_invalidation` names exactly what was built from a changed output; `invalidate` removes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpgrpo.errors import UserError
from tpgrpo.storage import RunLayout
from tpgrpo.storage.invalidate import invalidate, plan_invalidation


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    layout = RunLayout(str(tmp_path / "runs"), "r")
    dirs = [layout.prompts(), layout.eval("iter=0001", "jpeg"), layout.eval("iter=0002.steps=4", "jpeg")]
    for i in range(3):
        dirs += [
            layout.rollouts(i),
            layout.branches(i),
            layout.rewards(i, "jpeg"),
            layout.rewards(i, "other"),
        ]
        dirs += [layout.annotations(i, "jpeg", "tp"), layout.annotations(i, "other", "tp"), layout.updates(i)]
    dirs += [layout.checkpoint(k) for k in range(4)]
    for d in dirs:
        Path(d).mkdir(parents=True)
        (Path(d) / "_MANIFEST.json").write_text("{}")
        (Path(d) / "part-00000-00000.parquet").write_bytes(b"x")
    return layout


def _rel(layout: RunLayout, uris: list[str]) -> list[str]:
    return [u.removeprefix(layout.run_dir + "/") for u in uris]


def test_from_an_iteration(layout: RunLayout) -> None:
    assert _rel(layout, plan_invalidation(layout, 1, None, "jpeg")) == [
        "iter=0001",
        "iter=0002",
        "checkpoints/iter=0002",
        "checkpoints/iter=0003",
        "eval/iter=0002.steps=4/jpeg",
    ]


@pytest.mark.parametrize(
    ("after", "here"),
    [
        (
            "rollout",
            ["iter=0002/branches", "iter=0002/rewards", "iter=0002/annotations", "iter=0002/updates"],
        ),
        ("branch", ["iter=0002/rewards", "iter=0002/annotations", "iter=0002/updates"]),
        ("score", ["iter=0002/annotations/jpeg", "iter=0002/updates"]),  # rescored keys stay valid
        ("annotate", ["iter=0002/updates"]),
    ],
)
def test_after_a_stage(layout: RunLayout, after: str, here: list[str]) -> None:
    assert _rel(layout, plan_invalidation(layout, 2, after, "jpeg")) == [*here, "checkpoints/iter=0003"]


def test_unknown_stage(layout: RunLayout) -> None:
    with pytest.raises(UserError, match="use --from 2"):
        plan_invalidation(layout, 1, "update", "jpeg")


def test_invalidate_removes_only_the_plan(layout: RunLayout) -> None:
    invalidate(layout, plan_invalidation(layout, 1, "score", "jpeg"))
    run = Path(layout.run_dir)
    assert not (run / "iter=0001/annotations/jpeg").exists() and not (run / "iter=0002").exists()
    assert (run / "iter=0001/annotations/other/tp/_MANIFEST.json").is_file()
    assert (run / "iter=0001/rewards/jpeg/_MANIFEST.json").is_file()
    assert (run / "checkpoints/iter=0001/_MANIFEST.json").is_file()
    assert not (run / "checkpoints/iter=0002").exists()
    assert (run / "eval/iter=0001/jpeg").is_dir() and not (run / "eval/iter=0002.steps=4/jpeg").exists()
