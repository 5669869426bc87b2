"""`pickscore` / `clipscore` on a tiny random `CLIPModel` saved to disk and loaded back by the reward.

The model (1 layer, width 32, 32×32 images) and its processor (a `CLIPTokenizer` with a BPE
vocabulary learned in memory, a `CLIPImageProcessorPil`) are built offline from config, so the
test checks the loading path, the formulas and batching, not the quality of a real PickScore.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tpgrpo.errors import UserError
from tpgrpo.rewards import make_reward
from tpgrpo.rewards.clip import ClipReward

PROMPTS = ["a photo of a cat", "a red dog on the grass", "a sign that says hello", "blue", "a dog", "cat cat"]
WORDS = sorted({w for p in PROMPTS for w in p.split()})


def build_tiny_clip(directory: Path, seed: int = 0) -> None:
    """Save a random tiny `CLIPModel` (safetensors) and its processor to `directory`."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    from tpgrpo.world.tiny import CLIP_BOS, CLIP_EOS, clip_vocabulary

    vocab, merges = clip_vocabulary(WORDS)
    merge_pairs: object = merges  # transformers' stub says list[str]; the BPE model takes pairs
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merge_pairs, model_max_length=16)  # type: ignore[arg-type]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(seed)
    text = {
        "vocab_size": len(vocab),
        "max_position_embeddings": 16,
        "bos_token_id": vocab[CLIP_BOS],
        "eos_token_id": vocab[CLIP_EOS],
        "pad_token_id": vocab[CLIP_EOS],
    }
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**text, **sizes},
        vision_config={**sizes, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("tiny_clip")
    build_tiny_clip(directory)
    yield directory


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """[6, 40, 48, 3] random images (not square: the processor resizes and crops)."""
    return np.random.default_rng(0).integers(0, 256, (len(PROMPTS), 40, 48, 3), dtype=np.uint8)


def _direct_logits(model_dir: Path, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """`logits_per_image` diagonal of `CLIPModel.forward` = exp(logit_scale) · cos, per pair `[N]`."""
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # [N, N]
    return logits.diagonal().double().numpy()  # [N]


def test_pickscore_matches_the_model_forward(model_dir: Path, images: np.ndarray) -> None:
    raw = make_reward({"name": "pickscore", "model_path": str(model_dir), "normalize": False})
    res = raw.score(images, PROMPTS)
    assert res.score.shape == (len(PROMPTS),) and res.score.dtype == np.float64 and res.strict is None
    np.testing.assert_allclose(res.score, _direct_logits(model_dir, images, PROMPTS), rtol=1e-5, atol=1e-5)
    cos = np.array([d["cosine"] for d in res.details])
    assert isinstance(raw, ClipReward)
    np.testing.assert_allclose(res.score, raw.logit_scale * cos, atol=1e-4)  # details round to 1e-6
    norm = make_reward({"name": "pickscore", "model_path": str(model_dir)})
    np.testing.assert_allclose(norm.score(images, PROMPTS).score, res.score / 26, rtol=1e-6)  # Flow-GRPO
    assert norm.key == "pickscore" and norm.version.startswith("1:pickscore:norm:float32:")


def test_clipscore_is_clipped_cosine(model_dir: Path, images: np.ndarray) -> None:
    direct = _direct_logits(model_dir, images, PROMPTS)
    reward = make_reward({"name": "clipscore", "model_path": str(model_dir), "normalize": False})
    scale = reward.logit_scale  # type: ignore[attr-defined]
    res = reward.score(images, PROMPTS)
    np.testing.assert_allclose(res.score, 100 * np.maximum(direct / scale, 0), rtol=1e-5, atol=1e-4)
    norm = make_reward({"name": "clipscore", "model_path": str(model_dir), "key": "clip_l"})
    out = norm.score(images, PROMPTS).score
    np.testing.assert_allclose(out, np.maximum(direct / scale, 0), rtol=1e-5, atol=1e-6)
    assert norm.key == "clip_l" and (out >= 0).all() and (out <= 1).all()


def test_deterministic_and_independent_of_batching_and_order(model_dir: Path, images: np.ndarray) -> None:
    reward = make_reward({"name": "pickscore", "model_path": str(model_dir), "batch_size": 4})
    first = reward.score(images, PROMPTS).score
    np.testing.assert_array_equal(reward.score(images, PROMPTS).score, first)
    one_by_one = make_reward({"name": "pickscore", "model_path": str(model_dir), "batch_size": 1})
    np.testing.assert_allclose(one_by_one.score(images, PROMPTS).score, first, atol=1e-5)
    order = np.array([5, 2, 0, 4, 1, 3])
    shuffled = reward.score(images[order], [PROMPTS[i] for i in order]).score
    np.testing.assert_allclose(shuffled, first[order], atol=1e-5)
    assert len(reward.score(images[:0], [])) == 0


def test_bfloat16_is_close(model_dir: Path, images: np.ndarray) -> None:
    fp32 = make_reward({"name": "clipscore", "model_path": str(model_dir)})
    bf16 = make_reward({"name": "clipscore", "model_path": str(model_dir), "dtype": "bfloat16"})
    assert fp32.version != bf16.version
    np.testing.assert_allclose(
        bf16.score(images, PROMPTS).score, fp32.score(images, PROMPTS).score, atol=0.05
    )


def test_version_follows_the_weights(model_dir: Path, tmp_path: Path) -> None:
    build_tiny_clip(tmp_path / "other", seed=1)
    a = make_reward({"name": "pickscore", "model_path": str(model_dir)})
    b = make_reward({"name": "pickscore", "model_path": str(tmp_path / "other")})
    assert a.version != b.version
    assert a.version == make_reward({"name": "pickscore", "model_path": str(model_dir)}).version
    named = make_reward({"name": "pickscore", "model_path": str(model_dir), "version": "pickscore-v1"})
    assert named.version == "pickscore-v1"


def test_processor_from_another_directory(model_dir: Path, tmp_path: Path, images: np.ndarray) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(UserError, match=r"no processor files.*processor_path="):
        make_reward({"name": "pickscore", "model_path": str(weights)})
    split = make_reward({"name": "pickscore", "model_path": str(weights), "processor_path": str(model_dir)})
    whole = make_reward({"name": "pickscore", "model_path": str(model_dir)})
    np.testing.assert_array_equal(split.score(images, PROMPTS).score, whole.score(images, PROMPTS).score)


def test_missing_model_says_how_to_get_it(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(
        UserError, match=r"model_path .*nowhere' is not a directory.*hf download yuvalkirstain"
    ):
        make_reward({"name": "pickscore", "model_path": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match=r"not a directory.*openai/clip-vit-large-patch14"):
        make_reward({"name": "clipscore", "model_path": str(tmp_path / "nowhere")})
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match=r"no config\.json and \*\.safetensors.*never pickles"):
        make_reward({"name": "pickscore", "model_path": str(pickled)})
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        if (model_dir / name).exists():
            (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="cannot load the model"):
        make_reward({"name": "pickscore", "model_path": str(broken)})


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"device": "tpu:x"}, "is not a torch device"),
        pytest.param(
            {"device": "cuda"},
            "has no usable CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
    ],
)
def test_bad_parameters(model_dir: Path, params: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        make_reward({"name": "pickscore", "model_path": str(model_dir), **params})
