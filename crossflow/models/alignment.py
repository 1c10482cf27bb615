"""Text-image alignment of the text latent: symmetric CLIP-style InfoNCE (paper Sec. 3.1, L_Enc).

The contrastive term makes z_text keep what distinguishes its caption; without it the VE is free to
collapse towards the mean image. Negatives are gathered across ranks (the official code uses per-GPU
negatives only, which weakens the loss at small per-GPU batches).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` from all ranks (keeping gradients to the local part); returns (all, offset of ours)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather  # autograd-aware collective

    parts = all_gather(x)
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def symmetric_info_nce(text_emb: torch.Tensor, image_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss (Radford et al. 2021): mean of text->image and image->text cross-entropies.

    ``text_emb`` and ``image_emb`` are (B, E) local embeddings; negatives come from every rank.
    """
    text_emb = F.normalize(text_emb.float(), dim=-1)
    image_emb = F.normalize(image_emb.float(), dim=-1)
    all_text, offset = gather_with_grad(text_emb)
    all_image, _ = gather_with_grad(image_emb)
    labels = torch.arange(text_emb.shape[0], device=text_emb.device) + offset
    scale = logit_scale.float().exp()
    logits_t2i = scale * text_emb @ all_image.T
    logits_i2t = scale * image_emb @ all_text.T
    return 0.5 * (F.cross_entropy(logits_t2i, labels) + F.cross_entropy(logits_i2t, labels))


class ImageFeatureEncoder(nn.Module):
    """Small conv net: image latent (B, C, H, W) -> (B, E) features for the alignment loss."""

    def __init__(self, in_channels: int, dim: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.proj = nn.Linear(4 * width, dim)

    def forward(self, z_image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(z_image).mean(dim=(2, 3)))


def upgrade_legacy_state(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Bring alignment tensors saved in an older layout to the current one, in place; returns ``state``.

    ``logit_scale`` was a 0-d parameter before it became (1,) for FSDP2. With ``prefix`` only that module's key
    is looked at (the load hook); without, every ``*logit_scale`` of a whole model's state dict (checkpoint
    readers, before they compare shapes)."""
    for key in [k for k in state if (k == prefix + "logit_scale" if prefix else k.endswith("logit_scale"))]:
        if state[key].ndim == 0:
            state[key] = state[key].reshape(1)
    return state


class ContrastiveAlignment(nn.Module):
    """L_align(z_text, z_image): project flattened z_text and image features to a shared space, InfoNCE."""

    def __init__(self, latent_shape: tuple[int, int, int], dim: int = 256, init_temperature: float = 0.07) -> None:
        super().__init__()
        c, h, w = latent_shape
        self.text_proj = nn.Linear(c * h * w, dim)
        self.image_encoder = ImageFeatureEncoder(c, dim)
        # Shape (1,), not a scalar: FSDP2 shards along dim 0 and refuses 0-d parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / init_temperature)))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        upgrade_legacy_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z_text: torch.Tensor, z_image: torch.Tensor) -> torch.Tensor:
        text_emb = self.text_proj(rearrange(z_text, "b c h w -> b (c h w)"))
        image_emb = self.image_encoder(z_image)
        # Clamp the learnable temperature at 1/100 as CLIP does, so logits cannot blow up.
        return symmetric_info_nce(text_emb, image_emb, self.logit_scale.clamp(max=math.log(100.0)).squeeze(0))
