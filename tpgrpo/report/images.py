"""Image strips and grids for reports and docs (PIL only, default bitmap font)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def labelled_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    cell_labels: Sequence[Sequence[str]] | None = None,
    scale: int = 2,
    label_width: int = 110,
    caption_height: int = 12,
) -> Image.Image:
    """A grid of uint8 images `[H, W, 3]` with a label per row and an optional caption per cell."""
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
                draw.text((x + 1, y + h * scale), cell_labels[i][j][: cell_w // 6], fill=TEXT)
    return canvas


def task_grid(
    policy: Any,
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
