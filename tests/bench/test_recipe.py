"""bench/recipe.py's summary: paired changes over the base and over the reference, by seed."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from . import load


def _recipe() -> ModuleType:
    return load("recipe")


TASKS = ["counting", "counting", "position", "position"]


def _eval(score: list[float], strict: list[bool]) -> dict[str, Any]:
    return {
        "score": score,
        "strict": strict,
        "task": TASKS,
        "quality": {q: [0.1, 0.1, 0.3, 0.3] for q in ("background_dev", "stray_frac", "specks")},
    }


def _run(variant: str, seed: int, score: list[float], live: list[float] | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "config": variant,
        "seed": seed,
        "iterations": 10 + seed,
        "history": [{"seconds": 2.0}, {"seconds": 4.0}],
        "eval": _eval(score, [s > 0.5 for s in score]),
    }
    if live is not None:
        run["eval_live"] = _eval(live, [s > 0.5 for s in live])
    return run


def test_summary_pairs_images_with_the_base_and_seeds_with_the_reference() -> None:
    recipe = _recipe()
    base = _eval([0.2, 0.4, 0.6, 0.8], [False, False, True, True])
    runs = [
        _run("reference", 0, [0.3, 0.5, 0.6, 0.8], live=[0.4, 0.6, 0.6, 0.8]),  # +0.05 (live +0.10)
        _run("reference", 1, [0.2, 0.4, 0.7, 0.9]),  # +0.05; no live evaluation
        _run("kl", 0, [0.4, 0.6, 0.6, 0.8]),  # +0.10
        _run("kl", 1, [0.4, 0.4, 0.8, 0.8]),  # +0.10
    ]
    s = recipe.summarize(runs, base)
    assert s["base"]["score"] == pytest.approx(0.5) and s["base"]["images_per_task"] == {
        "counting": 2,
        "position": 2,
    }
    ref, kl = s["reference"], s["kl"]
    assert ref["paired_diff_vs_base"]["score"] == (pytest.approx(0.05), pytest.approx(0.0, abs=1e-12))
    assert ref["paired_diff_vs_base"]["score.counting"][0] == pytest.approx(0.05)  # (0.1 + 0.0) / 2
    assert ref["paired_diff_vs_base"]["strict"][0] == pytest.approx(0.0)
    assert ref["seconds_per_iteration"] == pytest.approx(3.0) and ref["iterations"] == pytest.approx(10.5)
    assert "paired_diff_vs_reference" not in ref
    mean, half = kl["paired_diff_vs_reference"]["score"]
    assert mean == pytest.approx(0.05) and half == pytest.approx(0.0, abs=1e-12)
    # kl seed 1 scores counting +0.1 and position +0.1; seed 0: +0.2 and 0.0
    assert kl["paired_diff_vs_base"]["score.counting"][0] == pytest.approx(0.15)
    assert kl["paired_diff_vs_base"]["strict"][0] == pytest.approx(0.125)
    live = s["reference_live_weights"]
    assert live["live_minus_ema"]["score"][0] == pytest.approx(0.05)
    assert np.isnan(live["live_minus_ema"]["score"][1])  # one seed: no interval
    table = recipe.table(s, 600.0, 4)
    assert "| kl | 2 | 10.5 | 3.0 | +0.1000 ± 0.0000 |" in table
    assert "live − EMA +0.0500" in table
