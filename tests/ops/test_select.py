"""Argument parsing of the ops commands: iteration ranges, reward specs, modes (no stored run needed)."""

from __future__ import annotations

import pytest

from tpgrpo.errors import UserError
from tpgrpo.pipeline.select import check_modes, parse_reward_spec, select_iterations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("2", [2]),
        ("1:3", [1, 2]),  # A … B−1, like a Python slice
        ("2:", [2, 3]),
        (":2", [0, 1]),
        (" 0 : 4 ", [0, 1, 2, 3]),
    ],
)
def test_select_iterations(text: str | None, expected: list[int]) -> None:
    assert select_iterations(text, [0, 1, 2, 3], run_id="r", what="branches") == expected


def test_open_ranges_skip_gaps_closed_ranges_do_not() -> None:
    assert select_iterations("1:", [0, 1, 3], run_id="r", what="branches") == [1, 3]
    with pytest.raises(
        UserError, match=r"iteration\(s\) 2 outside run 'r': iterations with branches are 0, 1, 3"
    ):
        select_iterations("1:4", [0, 1, 3], run_id="r", what="branches")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", r"iteration\(s\) 5 outside run 'r'.*are 0 … 3"),
        ("2:9", r"iteration\(s\) 4 … 8 outside"),
        ("3:1", "selects no iteration"),
        ("1-3", "invalid --iters '1-3'"),
        ("-1", "invalid --iters"),
        ("a:b", "invalid --iters"),
    ],
)
def test_select_iterations_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        select_iterations(text, [0, 1, 2, 3], run_id="r", what="branches")


def test_select_iterations_of_an_empty_run() -> None:
    with pytest.raises(UserError, match="has no iterations with branches yet; train it first"):
        select_iterations(None, [], run_id="r", what="branches")


def test_parse_reward_spec() -> None:
    assert parse_reward_spec("shapes") == "shapes"
    assert parse_reward_spec(' {"name": "jpeg", "quality": 50} ') == {"name": "jpeg", "quality": 50}
    assert parse_reward_spec({"name": "jpeg"}) == {"name": "jpeg"}  # a deployment parameter
    for bad, message in [
        ('{"name": jpeg}', "is not valid JSON"),
        ('"jpeg"', "must be an object with a string 'name'"),
        ('{"name": 3}', "must be an object with a string 'name'"),
        ("shapes; rm -rf /", "invalid --reward"),
        ("", "invalid --reward"),
    ]:
        with pytest.raises(UserError, match=message):
            parse_reward_spec(bad)


def test_check_modes() -> None:
    assert check_modes(["tp", "tp"]) == ["tp"]
    assert check_modes(["all"]) == ["flow_grpo", "incremental", "tp", "tp_constrained"]
    with pytest.raises(UserError, match="unknown reward mode 'TP'; choose one of"):
        check_modes(["TP"])
