"""The reward interface: a `Reward` scores images against prompts and returns a `RewardResult`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tpgrpo.errors import RewardError, UserError


@dataclass
class RewardResult:
    """Scores of a batch of images.

    Args:
        score (`np.ndarray` of shape `[N]`, float64): one score per image (rule-based rewards
            such as `shapes` give values in [0, 1]; learned ones may use another range).
        strict (`np.ndarray` of shape `[N]`, bool, or None): the all-or-nothing verdict where the
            reward has one (GenEval's "correct"), else None.
        details (`list[dict]`): one JSON-able dict per image explaining the score.

    Raises:
        `RewardError`: scores not 1-D, not finite, or lengths that disagree.
    """

    score: np.ndarray
    strict: np.ndarray | None
    details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.score = np.asarray(self.score, dtype=np.float64)
        n = self.score.shape[0] if self.score.ndim == 1 else -1
        if n < 0 or not np.isfinite(self.score).all():
            raise RewardError(f"reward scores must be a finite 1-D array, got {self.score!r}")
        if self.strict is not None:
            self.strict = np.asarray(self.strict, dtype=bool)
            if self.strict.shape != (n,):
                raise RewardError(f"strict verdicts have shape {self.strict.shape}, scores ({n},)")
        if len(self.details) != n:
            raise RewardError(f"{len(self.details)} details for {n} scores")

    def __len__(self) -> int:
        return int(self.score.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[RewardResult]) -> RewardResult:
        """Join the results of consecutive batches (strict is kept only if every part has it)."""
        if not parts:
            return cls(np.zeros(0), None, [])
        strict = None
        if all(p.strict is not None for p in parts):
            strict = np.concatenate([p.strict for p in parts if p.strict is not None])
        return cls(np.concatenate([p.score for p in parts]), strict, [d for p in parts for d in p.details])


@runtime_checkable
class Reward(Protocol):
    """A reward model.

    Attributes:
        key (`str`): the name under which its scores are stored (`rewards/<key>/`).
        version (`str`): changes whenever the same images and prompts could score differently.
    """

    key: str
    version: str

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score images against their prompts.

        Args:
            images (`np.ndarray` uint8 of shape `[N, H, W, 3]`): RGB images.
            prompts (`Sequence[str]`): the `N` prompts they were generated from.

        Returns:
            `RewardResult` with `N` scores.
        """
        ...


def check_batch(images: np.ndarray, prompts: Sequence[str]) -> None:
    """Raise `UserError` unless `images` is uint8 `[N, H, W, 3]` with `N == len(prompts)`."""
    is_array = isinstance(images, np.ndarray)
    if not is_array or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise UserError(f"images must be a uint8 array [N, H, W, 3], got {got}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise UserError(f"need one prompt per image: {images.shape[0]} images, prompts {prompts!r:.80}")
