"""Image strips and grids for reports and docs (PIL only, default bitmap font)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def labelled_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    cell_labels: Sequence[Sequence[str]] | None = None,
    scale: int = 2,
    label_width: int = 110,
    caption_height: int = 24,
) -> Image.Image:
    """A grid of uint8 images `[H, W, 3]` with a label per row and an optional caption per cell
    (wrapped over as many lines as `caption_height` holds)."""
    import textwrap

    h, w = rows[0][0].shape[:2]
    cell_w, cell_h = w * scale, h * scale + (caption_height if cell_labels else 0)
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_width + cols * (cell_w + 4), len(rows) * (cell_h + 4)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        y = i * (cell_h + 4)
        draw.text((4, y + cell_h // 2 - 6), row_labels[i][:18], fill=TEXT)
        for j, image in enumerate(row):
            x = label_width + j * (cell_w + 4)
            canvas.paste(Image.fromarray(image).resize((cell_w, h * scale), Image.Resampling.NEAREST), (x, y))
            if cell_labels:
                lines = textwrap.wrap(cell_labels[i][j], width=max(1, cell_w // 6))
                lines = lines[: max(1, caption_height // 11)]
                draw.text((x + 1, y + h * scale), "\n".join(lines), fill=TEXT, spacing=1)
    return canvas


def task_grid(
    policy: Policy,
    prompts: Sequence[dict[str, Any]],
    path: str,
    *,
    num_steps: int,
    guidance_scale: float,
    seed: int,
    per_task: int = 8,
) -> None:
    """Save a PNG: one row per task, `per_task` samples of its first prompts, scored by `shapes`."""
    from tpgrpo.rewards import make_reward
    from tpgrpo.stages.common import trajectory_seed
    from tpgrpo.stages.evaluate import sample_ode

    reward = make_reward("shapes")
    tasks = sorted({p["task"] for p in prompts})
    rows, labels, captions = [], [], []
    for task in tasks:
        chosen = [(i, p) for i, p in enumerate(prompts) if p["task"] == task][:per_task]
        chosen = (chosen * per_task)[:per_task]
        texts = [p["prompt"] for _, p in chosen]
        seeds = [trajectory_seed(seed, i, r) for r, (i, _) in enumerate(chosen)]
        images = sample_ode(
            policy, texts, seeds, num_steps=num_steps, guidance_scale=guidance_scale, height=64, width=64
        )
        result = reward.score(images, texts)
        rows.append(list(images))
        labels.append(task)
        marks = result.strict if result.strict is not None else np.zeros(len(texts), bool)
        captions.append(
            [
                ("ok " if ok else "x ") + t.removeprefix("a photo of ")
                for ok, t in zip(marks, texts, strict=True)
            ]
        )
    labelled_grid(rows, labels, captions, scale=2).save(path)


def annotated_strip(
    images: Sequence[np.ndarray],
    captions: Sequence[Sequence[str]],
    title: str = "",
    *,
    scale: int = 3,
    highlight: Sequence[bool] | None = None,
    font_size: int = 12,
) -> Image.Image:
    """One row of uint8 images `[H, W, 3]`, each with lines of caption below, and a title above.

    Args:
        images (`Sequence[np.ndarray]`): the images, left to right.
        captions (`Sequence[Sequence[str]]`): lines of text under each image.
        title (`str`): text above the strip; `\n` separates lines (each cut to the strip's width).
        scale (`int`): nearest-neighbour upscaling of each image.
        highlight (`Sequence[bool]`, *optional*): images to frame in red (e.g. turning points).
        font_size (`int`): caption font size in pixels.
    """
    from PIL import ImageFont

    font = ImageFont.load_default(size=font_size)
    h, w = images[0].shape[:2]
    cell_w, cell_h = w * scale, h * scale
    line_h = font_size + 3
    lines = max((len(c) for c in captions), default=0)
    title_lines = title.split("\n") if title else []
    pad, title_h = 6, len(title_lines) * line_h + (4 if title_lines else 0)
    width = pad + len(images) * (cell_w + pad)
    height = title_h + pad + cell_h + 4 + lines * line_h + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(title_lines):
        draw.text((pad, 3 + k * line_h), text, fill=TEXT, font=font)
    for i, image in enumerate(images):
        x, y = pad + i * (cell_w + pad), title_h + pad
        big = Image.fromarray(image).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        canvas.paste(big, (x, y))
        if highlight is not None and highlight[i]:
            draw.rectangle((x - 3, y - 3, x + cell_w + 2, y + cell_h + 2), outline=(220, 30, 30), width=3)
        for k, text in enumerate(captions[i]):
            draw.text((x, y + cell_h + 4 + k * line_h), text, fill=TEXT, font=font)
    return canvas


def stack_vertically(parts: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Images stacked top to bottom on a white background, left-aligned."""
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts) + gap * (len(parts) - 1)), BACKGROUND)
    y = 0
    for p in parts:
        canvas.paste(p, (0, y))
        y += p.height + gap
    return canvas
