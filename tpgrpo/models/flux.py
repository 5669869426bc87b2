"""The FLUX policy: prompt encoding, guidance-embedded velocity, latent decoding.

Wraps a loaded `FluxPipeline` (see `models/pipeline.py`) behind the same `Policy` interface as
`SD3Policy`. Every transformer input is built the way `FluxPipeline.__call__` builds it, so a
FLUX checkpoint sees what the pipeline would give it:

- Latents: the policy speaks the VAE layout `[B, C, h, w]` (C = 16, h = H/8 in real checkpoints);
  `forward` packs them into FLUX's sequence of 2×2 patches `[B, (h/2)·(w/2), 4C]` with the
  pipeline's `_pack_latents`, builds the patch position ids with `_prepare_latent_image_ids`, and
  unpacks the prediction with `_unpack_latents`.
- Timestep: the pipeline passes `t.to(latents.dtype) / 1000` where `t = 1000·σ` is the float32
  scheduler timestep (the transformer multiplies by 1000 again); `forward` computes the same
  expression from `σ`, per sample.
- Guidance: FLUX.1-dev is guidance-distilled. There is no classifier-free-guidance batch: the scale
  goes into the transformer's guidance embedding (float32, one value per sample) when
  `transformer.config.guidance_embeds` is true, and `velocity` never doubles the batch. A model
  without guidance embeddings (FLUX.1-schnell) gets `guidance=None`, as in the pipeline.
  "True CFG" (`FluxPipeline`'s `true_cfg_scale` with a negative prompt) is not supported.
- Text: the pipeline's own `encode_prompt` (CLIP pooled output + T5 sequence, `text_ids`).
- Images: decode `latent / scaling_factor + shift_factor` through the VAE, as the pipeline does.
- Grid: `sigmas` is the pipeline's dynamically shifted grid, `sigmas = linspace(1, 1/T, T)` with
  `mu` from the packed image sequence length (`calculate_shift`), so it depends on the image size.
  Its `σ_0` is exactly 1 (the exponential time shift maps `t = 1` to 1 for any `mu`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tpgrpo.models.conditioning import Conditioning
from tpgrpo.models.schedule import check_num_steps, family_grid
from tpgrpo.models.vae import decode_latents, encode_pixels

# Module-name suffixes (peft `target_modules`) adapted by LoRA in a `FluxTransformer2DModel`:
# - double-stream blocks (`transformer_blocks.*.attn`): image q/k/v/out and the context stream's
#   add_q/add_k/add_v projections and `to_add_out` — the SD3 set (SPEC §6);
# - single-stream blocks (`single_transformer_blocks.*.attn`): the suffixes `attn.to_q/k/v` match
#   their attention projections too. They have no `to_out`: their attention output goes through
#   `proj_out`, a linear over `cat([attention, MLP])`, which we leave frozen so the adapter stays
#   on attention only, as in the SD3 setting.
# Flow-GRPO's FLUX script also adapts the double blocks' feed-forward (`ff.*`, `ff_context.*`);
# pass `targets=` to `add_lora` for that variant.
FLUX_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)

FLUX_DEFAULT_GUIDANCE = 3.5
"""`FluxPipeline.__call__`'s default `guidance_scale` (FLUX.1-dev's embedded guidance)."""


@dataclass
class FluxPolicy:
    """A `FluxPipeline` seen as a velocity field over `[B, C, h, w]` latents.

    Args:
        pipeline: the loaded pipeline (modules in eval mode).
        max_sequence_length (`int`): T5 tokens (FLUX.1-dev uses up to 512; the tiny model 14).
        guidance_scale (`float`): embedded guidance used by `forward` when none is passed
            (`velocity` always passes its own).
    """

    pipeline: Any
    max_sequence_length: int = 512
    guidance_scale: float = FLUX_DEFAULT_GUIDANCE
    family: str = "flux"
    lora_targets: tuple[str, ...] = FLUX_LORA_TARGETS

    def __post_init__(self) -> None:
        config = self.transformer.config
        channels = self.pipeline.vae.config.latent_channels
        if config.patch_size != 1 or config.in_channels != 4 * channels:
            raise ValueError(
                f"FLUX transformer takes {config.in_channels} input channels (patch size "
                f"{config.patch_size}); expected 4 × {channels} VAE latent channels with patch size 1 "
                "(2×2 packed latents)"
            )
        # oneDNN convolutions run ~4x faster channels-last on CPU; the VAE is conv-only
        self.pipeline.vae.to(memory_format=torch.channels_last)

    @property
    def transformer(self) -> Any:
        return self.pipeline.transformer

    @property
    def device(self) -> torch.device:
        return torch.device(self.pipeline.transformer.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.transformer.dtype

    @property
    def guidance_doubles_batch(self) -> bool:
        """False: guidance is embedded (guidance-distilled), one transformer sample per velocity."""
        return False

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """`(C, h, w)` of the latents of a `height × width` image (h, w even: 2×2 patches)."""
        factor = self.pipeline.vae_scale_factor
        if height % (factor * 2) or width % (factor * 2):
            raise ValueError(f"height and width must be multiples of {factor * 2}, got {height}×{width}")
        return (self.pipeline.vae.config.latent_channels, height // factor, width // factor)

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The grid `FluxPipeline.__call__` samples a `height × width` image with.

        As the pipeline: `sigmas = np.linspace(1.0, 1/T, T)` (None when the scheduler sets
        `use_flow_sigmas`), `mu = calculate_shift(image_seq_len, base_image_seq_len,
        max_image_seq_len, base_shift, max_shift)` with `image_seq_len = (h/2)·(w/2)` packed
        patches, then `retrieve_timesteps(scheduler, T, sigmas=sigmas, mu=mu)`.

        Returns:
            `torch.Tensor`: float32 `[T + 1]`, `σ_0 = 1 > … > σ_T = 0` (see `models.schedule`).
        """
        check_num_steps(num_steps)
        _, h, w = self.latent_shape(height, width)
        return family_grid("flux", self.pipeline.scheduler, num_steps, (h, w), 1)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """Encode prompts (no gradient): T5 embeds `[B, L, D]`, CLIP pooled `[B, P]`, text ids `[L, 3]`."""
        embeds, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return Conditioning(
            embeds=embeds.to(self.dtype), pooled=pooled.to(self.dtype), text_ids=text_ids.to(self.dtype)
        )

    def forward(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """One transformer forward: the velocity prediction, float32 `[B, C, h, w]`.

        Args:
            latents (`torch.Tensor`): `[B, C, h, w]` states (h, w even).
            sigma (`torch.Tensor`): `[B]` noise levels (per sample).
            cond (`Conditioning`): `[B, ...]` conditioning from `encode` (with `text_ids`).
            guidance_scale (`float`, *optional*): embedded guidance; default `self.guidance_scale`.
                Ignored by a transformer without guidance embeddings.

        Raises:
            ValueError: odd latent size, conditioning of another batch size or without `text_ids`.
        """
        b, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX latents need an even height and width (2×2 patches), got {h}×{w}")
        if cond.text_ids is None:
            raise ValueError("FLUX conditioning needs text_ids: encode prompts with FluxPolicy.encode")
        if len(cond) != b:
            raise ValueError(f"conditioning has {len(cond)} rows for {b} latents")
        dtype, device = self.dtype, self.device
        factor = self.pipeline.vae_scale_factor
        packed = self.pipeline._pack_latents(latents.to(device, dtype), b, c, h, w)  # [B, h/2·w/2, 4C]
        img_ids = self.pipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)  # [h/2·w/2, 3]
        t = sigma.to(device, torch.float32) * 1000.0  # [B] the scheduler's float32 timesteps
        timestep = t.to(dtype) / 1000  # [B] exactly FluxPipeline.__call__'s `timestep / 1000`
        guidance = None
        if self.transformer.config.guidance_embeds:
            scale = self.guidance_scale if guidance_scale is None else guidance_scale
            guidance = torch.full((b,), scale, device=device, dtype=torch.float32)  # [B]
        out = self.transformer(
            hidden_states=packed,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.embeds,
            txt_ids=cond.text_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]  # [B, h/2·w/2, 4C]
        # `_unpack_latents` takes the image size in pixels: h·factor gives back h (h even)
        velocity = self.pipeline._unpack_latents(out, h * factor, w * factor, factor)  # [B, C, h, w]
        return velocity.float()  # step arithmetic is float32 (SPEC §2)

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Guidance-embedded velocity, float32 `[B, C, h, w]`: one forward over the B samples.

        FLUX.1-dev is guidance-distilled: `guidance_scale` goes to the transformer's guidance
        embedding (as `FluxPipeline.__call__` passes it) and there is no unconditional batch, so
        **`uncond` is ignored** and the batch is never doubled. A transformer without guidance
        embeddings (FLUX.1-schnell) ignores `guidance_scale` too.
        """
        return self.forward(latents, sigma, cond, guidance_scale=guidance_scale)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Decode latents `[B, C, h, w]` to uint8 images `[B, H, W, 3]`."""
        return decode_latents(self.pipeline.vae, latents)

    def encode_images(self, images: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode uint8 images `[B, H, W, 3]` to scaled latents `[B, C, h, w]` (sampled posterior)."""
        return encode_pixels(self.pipeline.vae, images, self.device, generator)
