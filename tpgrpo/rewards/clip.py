"""The `pickscore` and `clipscore` rewards: CLIP image-text similarity from a local model directory.

Both load a transformers `CLIPModel` (safetensors weights only, `local_files_only`) and a
processor (`AutoProcessor`: tokenizer + image processor) from local directories. With `f_I` and
`f_T` the projected image and text embeddings (`get_image_features`, `get_text_features`) and

    cos = <f_I / ‖f_I‖, f_T / ‖f_T‖>      one image against its own prompt, in [−1, 1]

the rewards are:

| reward | raw score | `normalize=True` (default) |
|---|---|---|
| `pickscore` | `exp(logit_scale) · cos` (PickScore paper) | raw / 26 (Flow-GRPO's `PickScoreScorer`) |
| `clipscore` | `100 · max(cos, 0)` (CLIPScore, w = 100) | raw / 100 = `max(cos, 0)`, in [0, 1] |

`exp(logit_scale)` is the model's learned temperature: 100 for PickScore_v1 and OpenAI CLIP, so a
PickScore of 21-23 (0.8-0.9 normalised) is typical of good images. CLIP-score's w = 100 is
torchmetrics' convention (Hessel et al. use w = 2.5).

Neither has a strict verdict. `details` per image: `{"cosine": cos}`.

PickScore: weights `yuvalkirstain/PickScore_v1` in `model_path`, the processor of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` in `processor_path` (defaults to `model_path`), as the
PickScore authors and Flow-GRPO load them. Images go through the processor's own resize and crop
(224×224 for both); prompts are truncated to the tokenizer's maximum length (77).

`version` is `<formula>:<digest>` where the digest is SHA-256 over the weight, config and
processor files, so a different model directory changes the version; pass `version` to name it
yourself (hashing a multi-GB model takes a few seconds at construction).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tpgrpo.errors import UserError
from tpgrpo.rewards.base import RewardResult, check_batch

__all__ = ["ClipReward", "clipscore", "pickscore"]

Kind = Literal["pickscore", "clipscore"]
DTYPES = ("float32", "float16", "bfloat16")
PICKSCORE_NORM = 26.0  # Flow-GRPO's PickScoreScorer divides by 26
CLIPSCORE_WEIGHT = 100.0
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
DOWNLOAD = {
    "pickscore": (
        "download it once where there is internet, e.g. `hf download yuvalkirstain/PickScore_v1 "
        "--local-dir DIR` and `hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --local-dir PROC "
        "--exclude '*.bin' '*open_clip*'`, then pass model_path=DIR, processor_path=PROC"
    ),
    "clipscore": (
        "download it once where there is internet, e.g. `hf download openai/clip-vit-large-patch14 "
        "--local-dir DIR --exclude '*.bin' '*.msgpack' '*.h5'`, then pass model_path=DIR"
    ),
}


class ClipReward:
    """CLIP-family image-text reward (see the module docstring for the formulas).

    Args:
        kind (`str`): `"pickscore"` or `"clipscore"`.
        model_path (`str`): local directory with `config.json` and `*.safetensors` of a `CLIPModel`.
        processor_path (`str`, *optional*): local directory of the processor (tokenizer and image
            processor files); default `model_path`.
        device (`str`): torch device, e.g. `cpu`, `cuda`, `cuda:1`.
        dtype (`str`): `float32`, `float16` or `bfloat16` (weights and activations; the cosine is
            computed in float32).
        batch_size (`int`): images per forward pass.
        normalize (`bool`): divide the raw score by 26 (PickScore) or 100 (CLIP-score).
        key (`str`, *optional*): storage key; default the kind.
        version (`str`, *optional*): the version string; default `<formula>:<sha256 of the files>`.

    Raises:
        `UserError`: a missing directory or file, a bad device, dtype or batch size, or a model
            that does not load.
    """

    def __init__(
        self,
        kind: Kind,
        model_path: str,
        processor_path: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
        normalize: bool = True,
        key: str | None = None,
        version: str | None = None,
    ) -> None:
        import torch

        if kind not in DOWNLOAD:
            raise UserError(f"unknown CLIP reward kind {kind!r}; choose from {sorted(DOWNLOAD)}")
        name = kind  # for messages
        if dtype not in DTYPES:
            raise UserError(f"{name} reward: dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"{name} reward: batch_size must be a positive integer, got {batch_size!r}")
        from tpgrpo.models.devices import check_device

        self.device = check_device(device, f"{name} reward: device")
        model_dir = _model_dir(name, "model_path", model_path)
        weights = sorted(model_dir.glob("*.safetensors"))
        if not (model_dir / "config.json").is_file() or not weights:
            raise UserError(
                f"{name} reward: {model_dir} has no config.json and *.safetensors of a CLIPModel "
                f"(only safetensors weights are loaded, never pickles); {DOWNLOAD[name]}"
            )
        processor_dir = _model_dir(name, "processor_path", processor_path or model_path)
        if not any((processor_dir / f).is_file() for f in PROCESSOR_FILES):
            raise UserError(
                f"{name} reward: {processor_dir} has no processor files ({' or '.join(PROCESSOR_FILES)}); "
                f"pass processor_path= a directory that has them; {DOWNLOAD[name]}"
            )
        self.model, self.processor = _load(name, model_dir, processor_dir, self.device, getattr(torch, dtype))
        self.kind = kind
        self.batch_size = batch_size
        self.normalize = normalize
        self.key = key or kind
        self.divisor = (PICKSCORE_NORM if kind == "pickscore" else CLIPSCORE_WEIGHT) if normalize else 1.0
        formula = f"1:{kind}:{'norm' if normalize else 'raw'}:{dtype}"
        self.version = version or f"{formula}:{_digest([*weights, *_small_files(model_dir, processor_dir)])}"

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score each image against its own prompt.

        Args:
            images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images of any size.
            prompts (`Sequence[str]`): `N` prompts.

        Returns:
            `RewardResult`: score `[N]` (module docstring), no strict verdict, `{"cosine"}` details.
        """
        check_batch(images, prompts)
        cos = np.concatenate(
            [
                self._cosine(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
                for i in range(0, len(images), self.batch_size)
            ]
            or [np.zeros(0)]
        )  # [N]
        pick = self.kind == "pickscore"
        raw = self.logit_scale * cos if pick else CLIPSCORE_WEIGHT * np.maximum(cos, 0.0)  # [N]
        return RewardResult(
            score=raw / self.divisor, strict=None, details=[{"cosine": round(float(c), 6)} for c in cos]
        )

    @property
    def logit_scale(self) -> float:
        """`exp(logit_scale)` of the model (100 for OpenAI CLIP and PickScore_v1)."""
        return float(self.model.logit_scale.detach().float().exp().item())

    def _cosine(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each image `[B, H, W, 3]` with its prompt, float64 `[B]`."""
        import torch

        inputs = self.processor(
            text=list(prompts), images=list(images), return_tensors="pt", padding=True, truncation=True
        )
        dtype = self.model.dtype
        with torch.inference_mode():
            image = _features(
                self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device, dtype))
            )  # [B, D]
            text = _features(
                self.model.get_text_features(
                    input_ids=inputs["input_ids"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device),
                )
            )  # [B, D]
            image = image.float()  # the norms and the dot product in float32: fp16 sums overflow
            text = text.float()
            cos = (image / image.norm(dim=-1, keepdim=True) * (text / text.norm(dim=-1, keepdim=True))).sum(
                -1
            )
        return cos.cpu().numpy().astype(np.float64)  # [B]


def pickscore(
    model_path: str,
    processor_path: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 32,
    normalize: bool = True,
    key: str = "pickscore",
    version: str | None = None,
) -> ClipReward:
    """The `pickscore` reward: `exp(logit_scale) · cos`, divided by 26 when `normalize`."""
    return ClipReward(
        "pickscore", model_path, processor_path, device, dtype, batch_size, normalize, key, version
    )


def clipscore(
    model_path: str,
    processor_path: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 32,
    normalize: bool = True,
    key: str = "clipscore",
    version: str | None = None,
) -> ClipReward:
    """The `clipscore` reward: `100 · max(cos, 0)`, divided by 100 when `normalize`."""
    return ClipReward(
        "clipscore", model_path, processor_path, device, dtype, batch_size, normalize, key, version
    )


def _model_dir(name: str, param: str, path: str | None) -> Path:
    if not isinstance(path, str | Path) or not str(path):
        raise UserError(f"{name} reward: {param} must be a local directory, got {path!r}; {DOWNLOAD[name]}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise UserError(f"{name} reward: {param} {str(directory)!r} is not a directory; {DOWNLOAD[name]}")
    return directory


def _load(name: str, model_dir: Path, processor_dir: Path, device: Any, dtype: Any) -> tuple[Any, Any]:
    """`(CLIPModel in eval mode on device, processor)`; loading faults become `UserError`."""
    from safetensors import SafetensorError
    from transformers import AutoProcessor, CLIPModel

    try:
        model = CLIPModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(processor_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # missing files, bad config or weights
        raise UserError(
            f"{name} reward: cannot load the model from {model_dir} / {processor_dir}: {e}"
        ) from e
    if not math.isfinite(float(model.logit_scale.detach().float().exp())):
        raise UserError(f"{name} reward: the model's logit_scale is not finite")
    return model.to(device).eval(), processor


def _features(out: Any) -> Any:
    """The projected embeddings `[B, D]` from `get_*_features` (a tensor in transformers 4, an
    output object with `pooler_output` in 5)."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _small_files(*directories: Path) -> list[Path]:
    """Config, tokenizer and processor files (json / txt) of the directories, sorted, unique."""
    files = {f for d in directories for pattern in ("*.json", "*.txt") for f in d.glob(pattern)}
    return sorted(files)


def _digest(files: Sequence[Path]) -> str:
    """First 12 hex digits of SHA-256 over the names and contents of `files`."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as stream:
            while chunk := stream.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:12]
