"""The embedded default world ("mini-GenEval"): synthetic 64×64 images of coloured shapes.

- `palette`: colours, background, shapes, relations, numbers, task tags.
- `spec`: `PromptSpec`, the machine-readable meaning of a prompt.
- `grammar`: `render_prompt` / `parse` (exact inverses), `VOCABULARY`, `sample_spec`.
- `prompts`: the public prompt API and the fixed train / test prompt files in `data/`.
- `relations`: when `A left of / right of / above / below B` holds.
- `scenes`: layouts that make a prompt true, rendering, `sample_batch` for pretraining.
- `tiny`, `pretrain`, `checkpoint/`: the tiny SD3 pipeline trained on this world.

The world's reward is `tpgrpo.rewards.shapes`.
"""
