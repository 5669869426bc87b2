"""bench/step_rewards.py's metrics against hand-derived values: tie-averaged Spearman, sign agreement
of increments, turning-point precision and recall."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from tpgrpo.config import Config

from . import load


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load("step_rewards")


def test_spearman(bench: ModuleType) -> None:
    assert bench.spearman(np.array([1.0, 2, 3]), np.array([10.0, 20, 30])) == pytest.approx(1.0)
    assert bench.spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    # ties averaged: ranks (1.5, 1.5, 3) against (1, 2, 3): Pearson = 0.8660
    assert bench.spearman(np.array([0.0, 0, 1]), np.array([1.0, 2, 3])) == pytest.approx(np.sqrt(3) / 2)
    assert bench.spearman(np.zeros(3), np.array([1.0, 2, 3])) is None


def test_compare_against_itself_and_a_prefix(bench: ModuleType) -> None:
    """ρ = (.5, .2, .6, .3, .9): exact d = (−, +, −, +), constrained turning point at j = 1.
    prefix:2 gives (.5, .2, .9, .9, .9): d = (−, +, 0, 0): signs agree at j = 0, 1 only, and the
    turning point is lost (j = K − 1): precision undefined (none detected), recall 0."""
    exact = np.array([[0.5, 0.2, 0.6, 0.3, 0.9]])
    scope, ids = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    same = bench.compare(exact, exact, scope, ids, Config())
    assert same["sign_agreement"] == 1.0 and same["tp_constrained"]["tp_recall"] == 1.0
    pre = bench.compare(np.array([[0.5, 0.2, 0.9, 0.9, 0.9]]), exact, scope, ids, Config())
    assert pre["sign_agreement_by_step"] == [1.0, 1.0, 0.0, 0.0] and pre["sign_agreement"] == 0.5
    assert pre["tp_constrained"]["tp_precision"] is None and pre["tp_constrained"]["tp_recall"] == 0.0
