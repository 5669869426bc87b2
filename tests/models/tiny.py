"""Tiny random-weight SD3 and FLUX pipelines built from config, offline (test fixtures' builders).

Both are genuine diffusers pipelines: they save with `save_pretrained` and load back through
`load_pipeline` / `load_policy`, the path a user's checkpoint takes. Sizes are minimal (32×32
images, 8×8 latents, one or two transformer blocks) so a forward costs milliseconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from tpgrpo.world.grammar import VOCABULARY
from tpgrpo.world.tiny import (
    CLIP_BOS,
    CLIP_EOS,
    TinyConfig,
    build_tiny_pipeline,
    clip_vocabulary,
    t5_vocabulary,
)

IMAGE_SIZE = 32
MAX_SEQUENCE_LENGTH = 14  # T5 tokens; the grammar's prompts need ≤ 12

SD3_CONFIG = TinyConfig(
    image_size=IMAGE_SIZE,
    vae_channels=(8, 16, 16),  # 4× downsampling: 32×32 images ↔ 8×8 latents
    clip_hidden=16,
    clip_layers=1,
    t5_hidden=32,
    t5_max_length=MAX_SEQUENCE_LENGTH,
    dim=32,
    head_dim=16,
    layers=2,
)


def build_tiny_sd3(seed: int = 0) -> Any:
    """A tiny `StableDiffusion3Pipeline` with a non-trivial VAE scaling and shift."""
    with torch.random.fork_rng(devices=[]):
        pipeline = build_tiny_pipeline(VOCABULARY, SD3_CONFIG, seed=seed)
    pipeline.vae.register_to_config(scaling_factor=1.5, shift_factor=0.1)
    return pipeline


def build_tiny_flux(seed: int = 0, guidance_embeds: bool = True) -> Any:
    """A tiny `FluxPipeline`: 16 latent channels (as FLUX.1), 4× VAE, one double + one single block.

    Args:
        seed (`int`): seed of the random initialisation.
        guidance_embeds (`bool`): FLUX.1-dev style guidance embedding (False: FLUX.1-schnell style).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocab, merges = clip_vocabulary(VOCABULARY)
        clip_merges: Any = merges  # the BPE model takes (a, b) pairs
        tokenizer = CLIPTokenizer(vocab=vocab, merges=clip_merges, model_max_length=MAX_SEQUENCE_LENGTH)
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=MAX_SEQUENCE_LENGTH,
                projection_dim=16,
                bos_token_id=vocab[CLIP_BOS],
                eos_token_id=vocab[CLIP_EOS],
                pad_token_id=vocab[CLIP_EOS],
            )
        )
        t5_tokenizer = T5Tokenizer(
            vocab=t5_vocabulary(VOCABULARY), extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH
        )
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=64,
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
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=8,
            sample_size=IMAGE_SIZE,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=False,
            scaling_factor=0.3611,  # FLUX.1's VAE values
            shift_factor=0.1159,
        )
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels × 2×2 patch
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # T5 width
            pooled_projection_dim=16,  # CLIP width
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,  # as FLUX.1-dev: the pipeline computes mu from the image size
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    for module in (vae, clip, t5, transformer):
        module.eval()
    return pipeline


PROMPTS = ("a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle")


def make_inputs(policy: Any, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Any, Any]:
    """`(latents [B, C, h, w], sigma [B], cond, uncond)` for `policy`, deterministic under `seed`."""
    c, h, w = policy.latent_shape(IMAGE_SIZE, IMAGE_SIZE)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, c, h, w, generator=gen)  # [B, C, h, w]
    sigma = torch.rand(batch, generator=gen) * 0.8 + 0.1  # [B] in (0.1, 0.9)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    return latents, sigma, policy.encode(prompts), policy.encode([""] * batch)
