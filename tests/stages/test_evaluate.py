"""Evaluation summary: per-task accuracy, requirement credit (colour accuracy) and image quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tpgrpo.rewards import make_reward
from tpgrpo.stages.evaluate import summarize
from tpgrpo.world.palette import COLORS
from tpgrpo.world.scenes import sample_batch


def _cols(images: np.ndarray, prompts: list[str], tasks: list[str]) -> dict[str, list]:
    result = make_reward("shapes").score(images, prompts)
    return {
        "task": tasks,
        "score": result.score.tolist(),
        "strict": result.strict.tolist(),
        "details": [json.dumps(d) for d in result.details],
    }


def test_ground_truth_renders_have_full_colour_accuracy_and_clean_backgrounds() -> None:
    images, prompts = sample_batch(np.random.default_rng(0), 64, tasks=["color_attr", "position"])
    summary = summarize(_cols(images, prompts, ["t"] * 64))
    assert summary["requirements"]["color"] == pytest.approx(1.0)
    assert summary["requirements"]["relation"] >= 0.98
    assert summary["quality"]["background_dev"] < 0.01 and summary["quality"]["specks"] == 0.0


def test_colour_accuracy_counts_each_named_colour() -> None:
    # a render of "a red circle" scored against "a blue circle" and against itself: the colour
    # requirement fails in one of the two images, the shape is present in both
    images, prompts = sample_batch(np.random.default_rng(1), 1, tasks=["colors"])
    wrong = prompts[0]
    for c in COLORS:
        if c in prompts[0]:
            other = "blue" if c != "blue" else "red"
            wrong = prompts[0].replace(c, other)
            break
    assert wrong != prompts[0]
    summary = summarize(_cols(np.concatenate([images, images]), [prompts[0], wrong], ["colors"] * 2))
    assert summary["requirements"]["color"] == pytest.approx(0.5)
    assert summary["requirements"]["present"] == pytest.approx(1.0)


def test_rewards_without_details_leave_them_out() -> None:
    summary = summarize({"task": ["a"], "score": [0.5], "strict": [None]})
    assert "requirements" not in summary and "quality" not in summary
    assert summary["tasks"]["a"] == {"n": 1, "score": 0.5, "strict": None}
