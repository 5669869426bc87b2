"""Text conditioning of a batch: what every policy family hands its transformer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """Encoded prompts.

    Args:
        embeds (`torch.Tensor`): `[B, L, D]` token embeddings.
        pooled (`torch.Tensor`): `[B, P]` pooled embeddings.
        text_ids (`torch.Tensor`, *optional*): `[L, 3]` FLUX text position ids (shared by the batch).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def select(self, index: torch.Tensor | Sequence[int]) -> Conditioning:
        """Rows `index` of the batch (repeats allowed: expands prompts to their groups)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.embeds.device)
        return Conditioning(self.embeds[idx], self.pooled[idx], self.text_ids)

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch."""
        return Conditioning(
            torch.cat([p.embeds for p in parts]),
            torch.cat([p.pooled for p in parts]),
            parts[0].text_ids,
        )
