"""The `ocr` reward: does the image show the prompt's quoted text? (Tesseract, as Flow-GRPO's OCR task.)

Target: the first double-quoted span of the prompt (`"…"` or `“…”`); without one, the first
single-quoted span (`'…'` or `‘…’`, an opening `'` not preceded by a letter or digit, so the
apostrophe of "that's" is not a quote). A prompt with no quoted span, or an empty one, raises
`UserError` naming the prompt.

Recognition: Tesseract through pytesseract, one text line (`--psm 7`), language `eng`, a
per-image `timeout` in seconds.

Score, as Flow-GRPO's `OcrScorer` (which uses PaddleOCR) computes it: both texts are lowercased
and stripped of all whitespace, giving `rec` and `target` (length L ≥ 1);

    d = 0                         if target is a substring of rec
        min(lev(rec, target), L)  otherwise          (lev = Levenshtein edit distance)
    score = 1 − d / L             in [0, 1]

`strict` is the exact match `rec == target`. `details` per image: `target`, `recognized` (the raw
Tesseract output, stripped) and `distance` d.

Errors: Tesseract or pytesseract missing → `UserError` at construction saying what to install;
Tesseract failing or running past the timeout on an image → `RewardError` naming the image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tpgrpo.errors import RewardError, UserError
from tpgrpo.rewards.base import RewardResult, check_batch

__all__ = ["OcrReward", "levenshtein", "normalize_text", "ocr_score", "quoted_text"]

_DOUBLE = re.compile(r"\"([^\"]*)\"|“([^”]*)”")
_SINGLE = re.compile(r"(?<![\w])'([^']*)'|‘([^’]*)’")
_SPACE = re.compile(r"\s+")
INSTALL = (
    "install Tesseract: `apt-get install tesseract-ocr` (Debian/Ubuntu), `brew install tesseract` "
    "(macOS), or pass tesseract_cmd= with the path of the binary"
)


class OcrReward:
    """Text-rendering reward by Tesseract OCR (see the module docstring).

    Args:
        timeout (`float`): seconds Tesseract may take per image (> 0).
        psm (`int`): Tesseract page segmentation mode (7: a single text line).
        lang (`str`): Tesseract language(s), e.g. `eng`.
        workers (`int`): images recognised in parallel (each is one Tesseract process).
        tesseract_cmd (`str`, *optional*): path of the `tesseract` binary (default: from `PATH`);
            it is set process-wide in pytesseract (one binary per process).
        key (`str`): storage key.

    Raises:
        `UserError`: bad parameters, pytesseract or the Tesseract binary missing.
    """

    def __init__(
        self,
        timeout: float = 10.0,
        psm: int = 7,
        lang: str = "eng",
        workers: int = 1,
        tesseract_cmd: str | None = None,
        key: str = "ocr",
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise UserError(f"ocr reward: timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(psm, bool) or not isinstance(psm, int) or not 0 <= psm <= 13:
            raise UserError(f"ocr reward: psm must be a Tesseract page segmentation mode 0 … 13, got {psm!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UserError(f"ocr reward: workers must be a positive integer, got {workers!r}")
        if not isinstance(lang, str) or not re.fullmatch(r"[A-Za-z_]+(\+[A-Za-z_]+)*", lang):
            raise UserError(f"ocr reward: lang must be Tesseract language codes like 'eng', got {lang!r}")
        try:
            import pytesseract
        except ImportError as e:
            raise UserError("ocr reward needs pytesseract: `pip install 'tpgrpo[ocr]'`") from e
        previous_cmd = pytesseract.pytesseract.tesseract_cmd
        if tesseract_cmd is not None:  # pytesseract keeps the binary's path in a process-wide global
            pytesseract.pytesseract.tesseract_cmd = tesseract_cmd
        try:
            tesseract_version = str(pytesseract.get_tesseract_version())
            languages = set(pytesseract.get_languages(config=""))
        except pytesseract.TesseractNotFoundError as e:
            pytesseract.pytesseract.tesseract_cmd = previous_cmd
            where = tesseract_cmd or "tesseract on PATH"
            raise UserError(f"ocr reward: Tesseract not found ({where}); {INSTALL}") from e
        missing = [code for code in lang.split("+") if code not in languages]
        if missing:
            pytesseract.pytesseract.tesseract_cmd = previous_cmd
            raise UserError(
                f"ocr reward: Tesseract has no language data for {missing} (has {sorted(languages)}); "
                f"install e.g. `apt-get install tesseract-ocr-{missing[0]}`"
            )
        self._tesseract = pytesseract
        self.timeout = float(timeout)
        self.config = f"--psm {psm}"
        self.lang = lang
        self.workers = workers
        self.key = key
        self.version = f"1:tesseract-{tesseract_version}:psm{psm}:{lang}"

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score how well each image shows its prompt's quoted text.

        Args:
            images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images.
            prompts (`Sequence[str]`): `N` prompts, each with a quoted span.

        Returns:
            `RewardResult`: score `[N]` in [0, 1], strict `[N]` (exact match), details.

        Raises:
            `UserError`: bad images or a prompt without quoted text (checked before any OCR).
            `RewardError`: Tesseract failed or timed out on an image.
        """
        check_batch(images, prompts)
        targets = [quoted_text(p) for p in prompts]
        if self.workers == 1 or len(images) == 1:
            recognized = [self._recognize(i, image) for i, image in enumerate(images)]
        else:
            with ThreadPoolExecutor(min(self.workers, len(images))) as pool:
                recognized = list(pool.map(self._recognize, range(len(images)), images))
        score = np.zeros(len(targets))
        strict = np.zeros(len(targets), dtype=bool)
        details: list[dict[str, Any]] = []
        for i, (target, rec) in enumerate(zip(targets, recognized, strict=True)):
            score[i], distance, strict[i] = ocr_score(rec, target)
            details.append({"target": target, "recognized": rec, "distance": distance})
        return RewardResult(score=score, strict=strict, details=details)

    def _recognize(self, index: int, image: np.ndarray) -> str:
        """Tesseract's text for one image `[H, W, 3]` (stripped)."""
        from PIL import Image

        try:
            text = self._tesseract.image_to_string(
                Image.fromarray(image), lang=self.lang, config=self.config, timeout=self.timeout
            )
        except self._tesseract.TesseractError as e:  # a RuntimeError subclass: test it first
            raise RewardError(f"ocr reward: Tesseract failed on image {index}: {e}") from e
        except RuntimeError as e:  # pytesseract's timeout is a bare RuntimeError
            raise RewardError(
                f"ocr reward: Tesseract took longer than {self.timeout:g} s on image {index} "
                f"({image.shape[1]}×{image.shape[0]}); raise `timeout` or reduce the image size"
            ) from e
        return str(text).strip()


def quoted_text(prompt: str) -> str:
    """The text an OCR prompt asks for: its first quoted span (module docstring).

    Args:
        prompt (`str`): e.g. `a sign that says "Open 24h"`.

    Returns:
        `str`: the span between the quotes, e.g. `Open 24h`.

    Raises:
        `UserError`: no quoted span or an empty one.
    """
    match = _DOUBLE.search(prompt) or _SINGLE.search(prompt)
    if match is None:
        raise UserError(f"ocr reward: the prompt has no quoted text to render (\"…\" or '…'): {prompt!r}")
    text = match.group(1) if match.group(1) is not None else match.group(2)
    if not normalize_text(text):
        raise UserError(f"ocr reward: the prompt's quoted text is empty: {prompt!r}")
    return text


def normalize_text(text: str) -> str:
    """Lowercase and remove all whitespace (Flow-GRPO's normalisation, plus tabs and newlines)."""
    return _SPACE.sub("", text).lower()


def ocr_score(recognized: str, target: str) -> tuple[float, int, bool]:
    """Flow-GRPO's OCR score of recognised text against a target (module docstring).

    Args:
        recognized (`str`): OCR output.
        target (`str`): the wanted text (non-empty after normalisation).

    Returns:
        `(score, d, exact)`: `1 − d / L` in [0, 1], the capped distance `d`, exact match.
    """
    rec, want = normalize_text(recognized), normalize_text(target)
    distance = 0 if want in rec else min(levenshtein(rec, want), len(want))
    return 1.0 - distance / len(want), distance, rec == want


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
