"""Build the tiny `StableDiffusion3Pipeline` of the embedded world from config, offline.

Every component is a genuine diffusers / transformers class built from a small config, so the
pipeline saves with `save_pretrained` and loads back with `StableDiffusion3Pipeline.from_pretrained`
— the same call a user makes for SD3.5-Medium. Nothing is downloaded:

- tokenizers: `CLIPTokenizer` (twice) and `T5Tokenizer` with in-memory vocabularies made from the
  world's prompt grammar. The CLIP BPE merges are learned on the vocabulary itself, so every word
  of the grammar is exactly one token.
- text encoders: two tiny `CLIPTextModelWithProjection` and a tiny `T5EncoderModel` (SD3's
  `from_pretrained` requires all three). Their hidden sizes add up to the transformer's
  `joint_attention_dim` exactly as in SD3 (CLIP-L ⊕ CLIP-G, zero-padded to T5's width).
- `AutoencoderKL` with 4× downsampling: 64×64×3 images ↔ 16×16×4 latents.
- `SD3Transformer2DModel`, ~2.3M parameters, patch 2 (64 image tokens).
- `FlowMatchEulerDiscreteScheduler` with SD3's shift of 3.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny pipeline (the shipped checkpoint is built with the defaults)."""

    image_size: int = 64
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 32)  # 3 blocks -> 2 downsamplings -> 4x
    clip_hidden: int = 32  # each of the two CLIP encoders
    clip_layers: int = 2
    clip_max_length: int = 14  # tokens incl. BOS/EOS; the longest grammar prompt needs 13
    t5_hidden: int = 64  # = joint_attention_dim of the transformer
    t5_max_length: int = 14  # T5 tokens given to the transformer (SD3 uses 256); prompts need ≤ 12
    dim: int = 128  # transformer width = heads * head_dim
    head_dim: int = 32
    layers: int = 4
    shift: float = 3.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def clip_vocabulary(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn a CLIP-style BPE (vocab, merges) on `words` until every word is one token.

    Plain BPE training, deterministic: each step merges the most frequent adjacent pair over the
    distinct words, ties broken by the pair's text. (The `tokenizers` trainer breaks ties in hash
    order, which differs between processes: a rebuilt pipeline would map words to other ids.)

    Args:
        words (`Sequence[str]`): the grammar's words, lowercase, no spaces.

    Returns:
        `(vocab, merges)` for `CLIPTokenizer(vocab=..., merges=...)`.
    """
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))}
    vocab: dict[str, int] = {}
    for token in [CLIP_BOS, CLIP_EOS, *sorted({t for seq in pieces.values() for t in seq})]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    while any(len(seq) > 1 for seq in pieces.values()):
        counts: dict[tuple[str, str], int] = {}
        for seq in pieces.values():
            for pair in itertools.pairwise(seq):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        for w, seq in pieces.items():
            merged, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    merged.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[w] = merged
    return vocab, merges


def t5_vocabulary(words: Sequence[str]) -> list[tuple[str, float]]:
    """A unigram vocabulary for `T5Tokenizer`: specials, then one piece per word."""
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in sorted(set(words))]


def build_tiny_pipeline(words: Sequence[str], config: TinyConfig | None = None, seed: int = 0) -> Any:
    """Build a randomly initialised tiny `StableDiffusion3Pipeline` (all modules in eval mode).

    Args:
        words (`Sequence[str]`): every word the prompts may contain.
        config (`TinyConfig`, *optional*): sizes; defaults to the shipped checkpoint's.
        seed (`int`): seed of the random initialisation.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    cfg = config or TinyConfig()
    torch.manual_seed(seed)
    vocab, merges = clip_vocabulary(words)
    clip_merges: Any = merges  # transformers' stub says list[str]; the BPE model takes (a, b) pairs
    tokenizers = [
        CLIPTokenizer(vocab=vocab, merges=clip_merges, model_max_length=cfg.clip_max_length) for _ in range(2)
    ]
    clip_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=cfg.clip_hidden,
        intermediate_size=4 * cfg.clip_hidden,
        num_hidden_layers=cfg.clip_layers,
        num_attention_heads=2,
        max_position_embeddings=cfg.clip_max_length,
        projection_dim=cfg.clip_hidden,
        bos_token_id=vocab[CLIP_BOS],
        eos_token_id=vocab[CLIP_EOS],
        pad_token_id=vocab[CLIP_EOS],
        attention_dropout=0.0,
    )
    text_encoders = [CLIPTextModelWithProjection(clip_config) for _ in range(2)]
    t5_tokenizer = T5Tokenizer(vocab=t5_vocabulary(words), extra_ids=0, model_max_length=cfg.t5_max_length)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=cfg.t5_hidden,
            d_kv=16,
            d_ff=2 * cfg.t5_hidden,
            num_layers=1,
            num_heads=4,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=8,
        sample_size=cfg.image_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        scaling_factor=1.0,  # set from the latent statistics after VAE training
        shift_factor=0.0,
    )
    latent_size = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    transformer = SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=2,
        in_channels=cfg.latent_channels,
        num_layers=cfg.layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.dim // cfg.head_dim,
        joint_attention_dim=cfg.t5_hidden,
        caption_projection_dim=cfg.dim,
        pooled_projection_dim=2 * cfg.clip_hidden,
        out_channels=cfg.latent_channels,
        pos_embed_max_size=latent_size,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=tokenizers[0],
        text_encoder_2=text_encoders[1],
        tokenizer_2=tokenizers[1],
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )
    modules: list[Any] = [vae, transformer, t5, *text_encoders]
    for module in modules:
        module.eval()  # built from config in train mode; eval() so a seed gives one image
    return pipeline
