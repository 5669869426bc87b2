"""The `ocr` reward: target extraction, the Flow-GRPO score by hand, real Tesseract on rendered text.

Needs the `tesseract` binary with English data (`apt-get install tesseract-ocr`); without it the
Tesseract tests are skipped and the missing-binary error is still checked.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, features

from tpgrpo.errors import RewardError, UserError
from tpgrpo.rewards import make_reward
from tpgrpo.rewards.ocr import levenshtein, ocr_score, quoted_text

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed")


def render_text(text: str, width: int = 256, height: int = 64) -> np.ndarray:
    """Black text on white `[height, width, 3]`, Pillow's default font at 36 px (its bitmap font
    scaled ×3 when Pillow lacks FreeType)."""
    if features.check("freetype2"):
        image = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(image).text((8, 10), text, fill="black", font=ImageFont.load_default(size=36))
    else:
        small = Image.new("RGB", (width // 3, height // 3), "white")
        ImageDraw.Draw(small).text((3, 4), text, fill="black", font=ImageFont.load_default())
        image = small.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image)


@pytest.mark.parametrize(
    ("prompt", "target"),
    [
        ('a neon sign that says "Open 24h"', "Open 24h"),
        ("a poster with the words 'HELLO' in red", "HELLO"),
        ("the cat's mug reads 'best cat'", "best cat"),  # the apostrophe of "cat's" is no quote
        ("a t-shirt printed with “Ship it”", "Ship it"),
        ("a book titled ‘Dune’", "Dune"),
        ('both "first" and "second"', "first"),
        ("'single' before \"double\"", "double"),  # a double-quoted span is preferred
    ],
)
def test_quoted_text(prompt: str, target: str) -> None:
    assert quoted_text(prompt) == target


@pytest.mark.parametrize("prompt", ["a red circle", 'an empty sign ""', "a sign saying '   '"])
def test_prompts_without_text_are_refused(prompt: str) -> None:
    with pytest.raises(UserError, match="quoted text") as info:
        quoted_text(prompt)
    assert repr(prompt) in str(info.value)


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3  # k→s, e→i, +g
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2  # −f, +n
    assert levenshtein("same", "same") == 0


@pytest.mark.parametrize(
    ("recognized", "target", "expected"),
    [
        ("hello", "hello", (1.0, 0, True)),
        ("Hel lo\n", "HELLO", (1.0, 0, True)),  # case and whitespace are ignored
        ("helo", "hello", (0.8, 1, False)),  # d = 1, L = 5: 1 − 1/5
        ("x hello y", "hello", (1.0, 0, False)),  # a substring counts as d = 0 (Flow-GRPO)
        ("", "abc", (0.0, 3, False)),  # d = 3 = L
        ("a completely different line", "abc", (0.0, 3, False)),  # d capped at L
        ("open 24", "Open 24h", (6 / 7, 1, False)),  # "open24h" has L = 7
    ],
)
def test_ocr_score_by_hand(recognized: str, target: str, expected: tuple[float, int, bool]) -> None:
    score, distance, exact = ocr_score(recognized, target)
    assert (distance, exact) == expected[1:]
    assert score == pytest.approx(expected[0])


@needs_tesseract
def test_rendered_text_scores_high_and_wrong_text_low() -> None:
    words = ["hello", "Open 24h", "quick fox"]
    wrong = ['"world"', "'closed'", '"slow cow"']
    blank = np.full((64, 256, 3), 255, dtype=np.uint8)
    images = np.stack([render_text(w) for w in words] * 2 + [blank])  # [7, 64, 256, 3]
    prompts = [f'a sign that says "{w}"' for w in words] + wrong + ['"hello"']
    reward = make_reward({"name": "ocr", "workers": 2})
    assert reward.key == "ocr" and reward.version.startswith("1:tesseract-") and ":psm7:eng" in reward.version
    res = reward.score(images, prompts)
    assert res.strict is not None
    assert res.score[:3].min() >= 0.8 and res.strict[:3].sum() >= 2, res.details[:3]
    assert res.score[3:6].max() <= 0.4 and not res.strict[3:].any(), res.details[3:6]
    assert res.score[6] == 0.0
    assert res.details[0]["target"] == "hello" and isinstance(res.details[0]["recognized"], str)
    assert res.details[4]["target"] == "closed"


@needs_tesseract
def test_parallel_workers_agree_and_prompts_are_checked_first() -> None:
    images = np.stack([render_text(w) for w in ["cat", "sun"]])
    prompts = ['"cat"', '"sun"']
    one = make_reward("ocr").score(images, prompts)
    two = make_reward({"name": "ocr", "workers": 2}).score(images, prompts)
    np.testing.assert_array_equal(one.score, two.score)
    assert one.details == two.details
    with pytest.raises(UserError, match=r"no quoted text.*'a dog'"):
        make_reward("ocr").score(images, ['"cat"', "a dog"])


@needs_tesseract
def test_timeout_is_a_reward_error() -> None:
    reward = make_reward({"name": "ocr", "timeout": 1e-4})  # no Tesseract run is that fast
    with pytest.raises(RewardError, match=r"Tesseract took longer than 0.0001 s on image 0.*raise `timeout`"):
        reward.score(render_text("late")[None], ['"late"'])


def test_missing_tesseract_says_what_to_install(tmp_path: object) -> None:
    import pytesseract

    before = pytesseract.pytesseract.tesseract_cmd
    with pytest.raises(UserError, match=r"Tesseract not found.*apt-get install tesseract-ocr"):
        make_reward({"name": "ocr", "tesseract_cmd": "/nonexistent/tesseract"})
    assert pytesseract.pytesseract.tesseract_cmd == before  # the failed probe leaves the global as it was


@needs_tesseract
def test_missing_language_data() -> None:
    with pytest.raises(UserError, match=r"no language data for \['xyz'\].*tesseract-ocr-xyz"):
        make_reward({"name": "ocr", "lang": "eng+xyz"})


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"psm": 14}, "page segmentation mode"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"lang": "eng; rm -rf"}, "language codes"),
    ],
)
def test_bad_parameters(params: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        make_reward({"name": "ocr", **params})
