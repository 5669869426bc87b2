"""The SD3 / SD3.5 policy: prompt encoding, CFG velocity, latent decoding.

Wraps a loaded `StableDiffusion3Pipeline` (see `models/pipeline.py`). The sampler arithmetic lives
in `tpgrpo.algorithm`; this module only runs the networks:

- `encode` uses the pipeline's own `encode_prompt` (CLIP-L ⊕ CLIP-G ⊕ T5), so a policy sees
  exactly the conditioning `StableDiffusion3Pipeline.__call__` would give it.
- `velocity` evaluates `v = v_u + g·(v_c − v_u)` with one batched forward over the unconditional
  and conditional halves; the transformer's timestep is `1000·σ`, per sample.
- `sigmas` is the grid `StableDiffusion3Pipeline.__call__` samples with (static `shift`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tpgrpo.models.conditioning import Conditioning
from tpgrpo.models.schedule import family_grid
from tpgrpo.models.vae import decode_latents, encode_pixels

# the attention projections Flow-GRPO / TP-GRPO adapt in SD3 joint blocks (image and context streams)
SD3_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


@dataclass
class SD3Policy:
    """A `StableDiffusion3Pipeline` seen as a velocity field over latents.

    Args:
        pipeline: the loaded pipeline (modules in eval mode).
        max_sequence_length (`int`): T5 tokens (SD3.5 uses 256; the tiny model 16).
    """

    pipeline: Any
    max_sequence_length: int = 256
    family: str = "sd3"
    lora_targets: tuple[str, ...] = SD3_LORA_TARGETS

    def __post_init__(self) -> None:
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
        """True: classifier-free guidance runs `[uncond; cond]`, 2B transformer samples per velocity."""
        return True

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """`(C, h, w)` of the latents of a `height × width` image."""
        factor = self.pipeline.vae_scale_factor
        if height % (factor * 2) or width % (factor * 2):
            raise ValueError(f"height and width must be multiples of {factor * 2}, got {height}×{width}")
        return (self.transformer.config.in_channels, height // factor, width // factor)

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The grid `StableDiffusion3Pipeline.__call__` samples a `height × width` image with.

        `retrieve_timesteps(scheduler, num_steps)` with the scheduler's static `shift`; a scheduler
        configured with `use_dynamic_shifting` gets the pipeline's `mu` from the latent patch count.

        Returns:
            `torch.Tensor`: float32 `[T + 1]`, `σ_0 = 1 > … > σ_T = 0` (see `models.schedule`).
        """
        _, h, w = self.latent_shape(height, width)
        patch = self.transformer.config.patch_size
        return family_grid("sd3", self.pipeline.scheduler, num_steps, (h, w), patch)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """Encode prompts (no gradient): embeds `[B, L, D]`, pooled `[B, P]`."""
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return Conditioning(embeds=embeds.to(self.dtype), pooled=pooled.to(self.dtype))

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One transformer forward: the raw velocity prediction, float32 `[B, C, h, w]`.

        Args:
            latents (`torch.Tensor`): `[B, C, h, w]` states.
            sigma (`torch.Tensor`): `[B]` noise levels (per sample); the timestep is `1000·σ`.
            cond (`Conditioning`): `[B, ...]` conditioning.
        """
        out = self.transformer(
            hidden_states=latents.to(self.dtype),
            timestep=(sigma * 1000.0).to(self.dtype),
            encoder_hidden_states=cond.embeds,
            pooled_projections=cond.pooled,
            return_dict=False,
        )[0]
        return out.float()  # [B, C, h, w]; step arithmetic is float32 (SPEC §2)

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Classifier-free-guided velocity, float32 `[B, C, h, w]`.

        With `uncond` None or `guidance_scale` ≤ 1 a single conditional forward; otherwise one forward
        over `[uncond; cond]` (2B samples) and `v_u + g·(v_c − v_u)`.
        """
        if uncond is None or guidance_scale <= 1.0:
            return self.forward(latents, sigma, cond)
        both = self.forward(
            torch.cat([latents, latents]),  # [2B, C, h, w]
            torch.cat([sigma, sigma]),  # [2B]
            Conditioning.cat([uncond, cond]),
        )
        v_u, v_c = both.chunk(2)  # [B, C, h, w] each
        return v_u + guidance_scale * (v_c - v_u)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Decode latents `[B, C, h, w]` to uint8 images `[B, H, W, 3]`."""
        return decode_latents(self.pipeline.vae, latents)

    def encode_images(self, images: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode uint8 images `[B, H, W, 3]` to scaled latents `[B, C, h, w]` (sampled posterior)."""
        return encode_pixels(self.pipeline.vae, images, self.device, generator)
