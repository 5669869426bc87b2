"""RewardResult checks and the batch validation shared by rewards."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrpo.errors import RewardError, UserError
from tpgrpo.rewards.base import RewardResult, check_batch


def test_result_coerces_and_validates() -> None:
    r = RewardResult(score=[0.5, 1], strict=[False, True], details=[{}, {}])  # type: ignore[arg-type]
    assert r.score.dtype == np.float64 and r.strict is not None and r.strict.dtype == bool and len(r) == 2
    with pytest.raises(RewardError, match="finite"):
        RewardResult(np.array([np.nan]), None, [{}])
    with pytest.raises(RewardError, match="finite 1-D"):
        RewardResult(np.zeros((2, 2)), None, [{}, {}])
    with pytest.raises(RewardError, match="strict"):
        RewardResult(np.zeros(2), np.zeros(3, dtype=bool), [{}, {}])
    with pytest.raises(RewardError, match="details"):
        RewardResult(np.zeros(2), None, [{}])


def test_concat() -> None:
    a = RewardResult(np.array([0.1]), np.array([False]), [{"i": 0}])
    b = RewardResult(np.array([0.2, 0.3]), np.array([True, False]), [{"i": 1}, {"i": 2}])
    c = RewardResult.concat([a, b])
    assert (
        c.score.tolist() == [0.1, 0.2, 0.3]
        and c.strict is not None
        and c.strict.tolist() == [False, True, False]
    )
    assert [d["i"] for d in c.details] == [0, 1, 2]
    assert RewardResult.concat([a, RewardResult(np.array([0.5]), None, [{}])]).strict is None
    assert len(RewardResult.concat([])) == 0


def test_check_batch() -> None:
    ok = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    check_batch(ok, ["a", "b"])
    for bad in (ok.astype(np.float32), ok[..., :1], ok[0], [[0]]):
        with pytest.raises(UserError, match="uint8 array"):
            check_batch(bad, ["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(UserError, match="one prompt per image"):
        check_batch(ok, ["a"])
    with pytest.raises(UserError, match="one prompt per image"):
        check_batch(ok, "ab")
