"""`Policy`: what the stages need from a text-to-image model, whatever its family.

A policy is a loaded diffusers pipeline seen as a velocity field over latents. Implementations:
`SD3Policy` (`models/sd3.py`, `StableDiffusion3Pipeline`) and `FluxPolicy` (`models/flux.py`,
`FluxPipeline`); `models/factory.load_policy` picks one from the config.

Latents are always the 4-D VAE layout `[B, C, h, w]` (`h = H / vae_scale_factor`): the samplers of
`tpgrpo.algorithm` work element-wise on them, stored states keep that shape, and a family that
feeds its transformer another layout (FLUX packs 2×2 patches into a sequence) converts inside
`forward`. Every velocity comes back in float32, whatever the weights' dtype (SPEC §2).

The sampling grid is the policy's too (`sigmas`): SD3's pipeline shifts it statically, FLUX's
dynamically by image size, so stages never read `scheduler.config.shift` themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tpgrpo.models.conditioning import Conditioning


@runtime_checkable
class Policy(Protocol):
    """A text-to-image flow-matching model as the stages use it.

    Attributes:
        pipeline: the loaded diffusers pipeline (modules in eval mode, weights frozen).
        family (`str`): `"sd3"` or `"flux"`.
        lora_targets (`tuple[str, ...]`): module-name suffixes LoRA adapts by default.
    """

    pipeline: Any
    family: str
    lora_targets: tuple[str, ...]

    @property
    def transformer(self) -> Any:
        """The denoising transformer (where LoRA goes)."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's weights dtype."""
        ...

    @property
    def guidance_doubles_batch(self) -> bool:
        """Whether guidance (scale > 1) doubles the transformer batch of a velocity evaluation.

        SD3 with classifier-free guidance: True (`[uncond; cond]`, 2B samples per B velocities).
        FLUX, guidance-distilled: False (the scale goes into the guidance embedding). Stages count
        `forward_samples` with it and skip encoding the unconditional prompt when it is False.
        """
        ...

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The grid the family's diffusers pipeline samples a `height × width` image with.

        Args:
            num_steps (`int`): `T` (≥ 1).
            height (`int`), width (`int`): image size in pixels (FLUX's shift depends on it).

        Returns:
            `torch.Tensor`: float32 `[T + 1]` on the CPU, `σ_0 = 1 > … > σ_T = 0`, equal to the
            pipeline scheduler's `sigmas` after `__call__` sets its timesteps.

        Raises:
            ValueError: a bad `num_steps` or size, or a scheduler whose grid breaks the samplers'
                assumptions (`models.schedule.check_grid`).
        """
        ...

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """`(C, h, w)` of the latents of a `height × width` image; raises if the size does not fit."""
        ...

    def encode(self, prompts: list[str]) -> Conditioning:
        """Encode prompts with the pipeline's own text encoders, without gradient."""
        ...

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One transformer forward.

        Args:
            latents (`torch.Tensor`): `[B, C, h, w]` states.
            sigma (`torch.Tensor`): `[B]` noise levels, one per sample.
            cond (`Conditioning`): `[B, ...]` conditioning.

        Returns:
            `torch.Tensor`: `[B, C, h, w]` float32 velocity.
        """
        ...

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The guided velocity the sampler steps with, float32 `[B, C, h, w]`.

        SD3 runs classifier-free guidance over `[uncond; cond]` in one batched forward; FLUX
        (guidance-distilled) feeds `guidance_scale` to its guidance embedding and ignores `uncond`.
        """
        ...

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Decode `[B, C, h, w]` latents to uint8 images `[B, H, W, 3]`."""
        ...

    def encode_images(self, images: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode uint8 images `[B, H, W, 3]` to scaled float32 latents `[B, C, h, w]`."""
        ...
