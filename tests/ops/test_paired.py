"""Paired gains between two evaluations (`tpgrpo.report.paired`) and `evaluate --baseline`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from tpgrpo.errors import DataError
from tpgrpo.report.paired import gains, paired_gain

from .conftest import EVAL_STEPS, StoredRun, run_cli


def _cols(pairs: list[tuple[str, int]], score: list[float], strict: list[bool | None]) -> dict[str, Any]:
    return {
        "prompt_id": [p for p, _ in pairs],
        "seed": [s for _, s in pairs],
        "task": ["counting"] * len(pairs),
        "score": score,
        "strict": strict,
    }


PAIRS = [("a", 1), ("a", 2), ("b", 3), ("b", 4), ("c", 5), ("c", 6)]


def test_gain_is_the_mean_paired_difference_with_a_ci_over_prompts() -> None:
    base = _cols(PAIRS, [0.5, 0.4, 0.6, 0.6, 0.2, 0.3], [False] * 6)
    # rows in another order: pairing is by (prompt, seed), not by position
    other = _cols(
        PAIRS[::-1], [0.5, 0.3, 0.7, 0.6, 0.5, 0.5][::-1], [False, True, False, False, True, True][::-1]
    )
    g = paired_gain(base, other, "score")
    diffs = np.array([0.0, -0.1, 0.1, 0.0, 0.3, 0.2])
    per_prompt = np.array([-0.05, 0.05, 0.25])
    assert g.gain == pytest.approx(diffs.mean())
    assert (g.base, g.value) == (pytest.approx(0.4333333), pytest.approx(0.5166667))
    want = stats.t.ppf(0.975, 2) * per_prompt.std(ddof=1) / np.sqrt(3)
    assert g.half_width == pytest.approx(want)
    assert (g.images, g.prompts) == (6, 3)
    assert not g.excludes_zero  # 0.083 ± 0.39
    assert "(95 % CI includes 0)" in g.describe()
    both = gains(base, other)
    assert [x.metric for x in both] == ["score", "strict"]
    assert both[1].gain == pytest.approx(0.5)


def test_a_consistent_gain_excludes_zero() -> None:
    pairs = [(f"p{i}", i) for i in range(20)]
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.5, 20)
    g = paired_gain(
        _cols(pairs, list(base), [None] * 20), _cols(pairs, list(base + 0.1), [None] * 20), "score"
    )
    assert g.gain == pytest.approx(0.1) and g.half_width == pytest.approx(0.0, abs=1e-12)
    assert g.excludes_zero and "excludes 0" in g.describe()
    # a reward without strict accuracy: the score only
    assert [
        x.metric for x in gains(_cols(pairs, list(base), [None] * 20), _cols(pairs, list(base), [None] * 20))
    ] == ["score"]


def test_one_prompt_has_no_interval() -> None:
    g = paired_gain(
        _cols(PAIRS[:2], [0.1, 0.2], [None] * 2), _cols(PAIRS[:2], [0.2, 0.3], [None] * 2), "score"
    )
    assert g.prompts == 1 and np.isnan(g.half_width) and not g.excludes_zero


def test_different_images_are_refused() -> None:
    base = _cols(PAIRS, [0.5] * 6, [None] * 6)
    with pytest.raises(
        DataError, match=r"not of the same images \(1 only in the baseline, 1 only in the other\)"
    ):
        paired_gain(base, _cols([*PAIRS[:5], ("d", 9)], [0.5] * 6, [None] * 6), "score")
    with pytest.raises(DataError, match="same --prompts, --replicates and --steps"):
        paired_gain(base, _cols(PAIRS[:4], [0.5] * 4, [None] * 4), "score")
    with pytest.raises(DataError, match=r"the same \(prompt, seed\) image twice"):
        paired_gain(_cols([*PAIRS[:5], PAIRS[0]], [0.5] * 6, [None] * 6), base, "score")
    with pytest.raises(DataError, match="no 'strict' for every image"):
        paired_gain(base, base, "strict")


@pytest.mark.integration
def test_evaluate_baseline_prints_the_paired_gain(run_copy: StoredRun) -> None:
    """`--baseline 0` reuses the stored evaluations of checkpoints 0 and 2 and prints the gain."""
    from tpgrpo.report.paired import read_eval

    result = run_cli(
        "evaluate",
        *run_copy.args(
            "--checkpoint", "2", "--baseline", "0", "--steps", str(EVAL_STEPS), "--prompts-per-task", "1"
        ),
    )
    assert result.exit_code == 0, result.output
    key = run_copy.reward_key
    base = read_eval(run_copy.layout.eval(f"iter=0000.steps={EVAL_STEPS}", key))
    last = read_eval(run_copy.layout.eval(f"iter=0002.steps={EVAL_STEPS}", key))
    want = gains(base, last)
    lines = result.stdout.splitlines()
    at = lines.index(
        "paired gain of checkpoint 2 over checkpoint 0 (6 images, 6 prompts; 95 % CI over prompts):"
    )
    assert lines[at + 1 : at + 1 + len(want)] == [f"  {g.describe()}" for g in want]
    assert (
        result.stdout.count("checkpoint 0 (iter=0000") == 1
        and result.stdout.count("checkpoint 2 (iter=0002") == 1
    )


def test_evaluate_baseline_outside_the_run(stored_run: StoredRun) -> None:
    result = run_cli("evaluate", *stored_run.args("--baseline", "7"))
    assert result.exit_code == 2 and "checkpoint 7 outside run" in result.output
