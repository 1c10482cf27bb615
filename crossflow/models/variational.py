"""The Variational Encoder: text token states -> N(μ, σ²) in exactly the image-latent shape (paper Sec. 3.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from crossflow.models.layers import EncoderBlock


@dataclass
class VariationalEncoderConfig:
    """Stacked transformer layers -> pooled slots -> per-slot projection -> flatten -> linear to 2·C·H·W."""

    width: int = 128
    """Hidden size of the encoder layers."""
    depth: int = 2
    """Number of pre-norm transformer layers over the text tokens."""
    num_heads: int = 4
    """Attention heads."""
    token_dim: int = 32
    """Per-slot size before flattening (keeps the final linear at slots·token_dim × 2·C·H·W)."""
    pooling: Literal["flatten", "attention"] = "flatten"
    """``flatten``: one slot per token position, as the paper's VE. ``attention``: ``num_queries`` learned
    queries attend over the tokens (order-free pooling; on the shapes demo it learned *slower* than
    ``flatten``: docs/experiments.md)."""
    num_queries: int = 16
    """Pooled slots for ``pooling: attention``."""
    grid_downsample: int = 1
    """μ and log σ² live on a grid this many times coarser than the latent (1 = the paper: one value per
    latent element); the sampled z_text is repeated over f×f blocks up to the latent shape. A smooth,
    blockwise source leaves no per-element pattern for the flow to cancel (docs/experiments.md)."""
    logvar_min: float = -12.0
    """Clamp on log σ² so exp() stays finite in fp16/bf16."""
    logvar_max: float = 4.0
    """Upper clamp on log σ²."""
    min_sigma: float = 0.0
    """Floor on the VE's σ: σ² ← σ² + min_sigma² (0 = off, the paper). The contrastive loss shrinks σ until
    z_text is nearly deterministic; a floor keeps real noise in the source for the flow to spread into the
    caption's unstated variation (jitter, free attributes) and for SDE editing (docs/experiments.md)."""


class VariationalEncoder(nn.Module):
    """tokens (B, L, D_txt) + mask (B, L) -> μ, log σ² each (B, C, H, W)."""

    def __init__(
        self,
        config: VariationalEncoderConfig,
        text_dim: int,
        num_tokens: int,
        latent_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.config = config
        self.num_tokens = num_tokens
        self.latent_shape = tuple(latent_shape)
        self.in_proj = nn.Linear(text_dim, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, config.width))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(EncoderBlock(config.width, config.num_heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        if config.pooling == "attention":
            self.queries = nn.Parameter(torch.randn(1, config.num_queries, config.width) * 0.02)
            self.pool = nn.MultiheadAttention(config.width, config.num_heads, batch_first=True)
            slots = config.num_queries
        elif config.pooling == "flatten":
            slots = num_tokens
        else:
            raise ValueError(f"unknown VE pooling {config.pooling!r}; expected 'flatten' or 'attention'")
        self.token_proj = nn.Linear(config.width, config.token_dim)
        c, h, w = self.latent_shape
        f = config.grid_downsample
        if f < 1 or h % f or w % f:
            raise ValueError(f"grid_downsample {f} must be a positive divisor of the latent size {h}x{w}")
        self.grid_shape = (c, h // f, w // f)
        self.out = nn.Linear(slots * config.token_dim, 2 * c * (h // f) * (w // f))
        nn.init.normal_(self.out.weight, std=(slots * config.token_dim) ** -0.5)
        nn.init.zeros_(self.out.bias)

    def upsample(self, z: torch.Tensor) -> torch.Tensor:
        """A sample on the VE's grid (B, C, H/f, W/f) -> the latent shape, each value repeated over f×f."""
        f = self.config.grid_downsample
        return z if f == 1 else z.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, L, D_txt) frozen-encoder states; mask: (B, L) bool, True for real tokens.

        Returns μ, log σ² on the VE's grid: the latent shape (C, H, W), or (C, H/f, W/f) with grid_downsample f.
        """
        b, length, _ = tokens.shape
        if length != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} text tokens, got {length} (text encoder max_length mismatch)")
        mask = mask.bool()
        x = self.in_proj(tokens.to(self.in_proj.weight.dtype)) + self.pos_embed
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)
        x = self.norm(x)
        if self.config.pooling == "attention":
            queries = self.queries.expand(b, -1, -1).to(x.dtype)
            x, _ = self.pool(queries, x, x, key_padding_mask=~mask, need_weights=False)
            x = self.token_proj(x)
        else:
            # Padding positions carry no information: zero them so the flat projection ignores them.
            x = self.token_proj(x) * mask[..., None].to(x.dtype)
        mu, logvar = self.out(x.reshape(b, -1)).chunk(2, dim=-1)
        c, h, w = self.grid_shape
        mu = rearrange(mu, "b (c h w) -> b c h w", c=c, h=h, w=w)
        logvar = rearrange(logvar, "b (c h w) -> b c h w", c=c, h=h, w=w)
        logvar = logvar.clamp(self.config.logvar_min, self.config.logvar_max)
        if self.config.min_sigma > 0:
            logvar = torch.logaddexp(logvar, torch.full_like(logvar, 2 * math.log(self.config.min_sigma)))
        return mu, logvar


def blend_posteriors(
    mu_a: torch.Tensor, logvar_a: torch.Tensor, mu_b: torch.Tensor, logvar_b: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of VE posteriors and a (B,) α -> (μ, log σ²) of the posterior α of the way from A to B: μ and σ
    each lerped, the path ``crossflow.editing.latent_ops.interpolate_posteriors`` walks between two prompts (its
    lerp mode), so training on blends teaches exactly the latents interpolation visits. Rows with α = 0 are A's,
    bit for bit."""
    w = alpha.to(mu_a.dtype).view(-1, *([1] * (mu_a.ndim - 1)))
    mu = torch.lerp(mu_a, mu_b, w)
    sigma = torch.lerp((0.5 * logvar_a).exp(), (0.5 * logvar_b).exp(), w)
    # σ lerped, not log σ²: the same σ(α) as interpolation (a lerp of log σ² would be a geometric mean).
    return mu, torch.where(w == 0, logvar_a, 2 * sigma.log())
