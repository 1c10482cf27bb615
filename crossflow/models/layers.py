"""Building blocks shared by the flow transformer and the Variational Encoder."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C·p·p) with N = (H/p)·(W/p), row-major over patches."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=patch_size, q=patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    return rearrange(
        tokens, "b (h w) (c p q) -> b c (h p) (w q)", h=height // patch_size, w=width // patch_size,
        c=channels, p=patch_size, q=patch_size,
    )


def sincos_pos_embed_2d(width: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (N, D), half the channels for y and half for x (MAE / DiT)."""
    if width % 4:
        raise ValueError(f"width must be divisible by 4 for 2-D sin-cos positions, got {width}")
    quarter = width // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    out = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * freqs[None]
        out += [angles.sin(), angles.cos()]
    return torch.cat(out, dim=1).float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t ∈ [0, 1] (scaled by 1000, as DiT's integer timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    """t -> sinusoidal features -> MLP -> (B, D) conditioning vector."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def _needs_math_kernel(q: torch.Tensor) -> bool:
    """True when training on CPU in bf16/fp16: there the fused CPU flash kernel's *backward* is several times
    slower than the plain math path at our sequence lengths (bench/attention_cpu.py, docs/results.md) and
    dominated the demo's step. Its forward is the faster one, so sampling keeps it; other devices are untouched.
    """
    low_precision = q.dtype in (torch.bfloat16, torch.float16)
    return q.device.type == "cpu" and low_precision and torch.is_grad_enabled() and q.requires_grad


class QKNorm(nn.RMSNorm):
    """RMSNorm over the head dimension whose weight follows the input's dtype. Under bf16 autocast q and k arrive
    in bf16 while the weight stays fp32, and ``F.rms_norm`` then drops from its fused kernel to a slower composite
    one (warning on every call); casting the weight keeps the fused kernel, which accumulates in fp32 anyway."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels)."""

    def __init__(self, width: int, num_heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        # QK-norm keeps attention logits bounded at high learning rates (Dehghani et al. 2023, ViT-22B).
        head_dim = width // num_heads
        self.q_norm = QKNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D); key_padding_mask: (B, N) bool, True where the token is real."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        if _needs_math_kernel(q):
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:  # SDPA's own choice (and any sdpa_kernel context the caller set)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Multi-head attention from the image tokens (queries) to text tokens (keys / values), through SDPA.

    Only the noise baseline's flow blocks have one (``FlowTransformerConfig.cross_attention``); CrossFlow's
    stay self-attention only (paper Sec. 3.2). The output projection starts at zero (set by the transformer's
    init), so a block with it starts as the same identity map as without it.
    """

    def __init__(self, width: int, num_heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        head_dim = width // num_heads
        self.q_norm = QKNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, N, D) queries; context: (B, L, D); context_mask: (B, L) bool, True where the token is real."""
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        if _needs_math_kernel(q):
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, width: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block without conditioning (used by the Variational Encoder)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_padding_mask)
        return x + self.mlp(self.norm2(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample affine modulation of normalised tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNBlock(nn.Module):
    """DiT block with adaLN-Zero time conditioning (Peebles & Xie 2023, Sec. 3.2): starts as identity.

    With ``cross_attention`` a pre-norm cross-attention to text tokens sits between self-attention and the
    MLP (PixArt-α, Chen et al. 2023, Sec. 2.3): the noise baseline's text path. Without it (CrossFlow) the
    block, its parameters and its forward are exactly the plain DiT block.
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads)
        if cross_attention:
            self.norm_cross = nn.LayerNorm(width, eps=1e-6)
            self.cross_attn = CrossAttention(width, num_heads)
        else:
            self.cross_attn = None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(width, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        attn_out_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``attn_out_hook``: called with the self-attention output (B, N, D) before the adaLN gate scales it; what
        it returns takes its place (attention-output editing, crossflow/editing/attention.py). None: no call."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        attn = self.attn(modulate(self.norm1(x), shift1, scale1))
        if attn_out_hook is not None:
            attn = attn_out_hook(attn)
        x = x + gate1[:, None] * attn
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block cross-attends to text tokens: pass context")
            x = x + self.cross_attn(self.norm_cross(x), context, context_mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN + zero-initialised linear to patch values: the untrained model predicts v = 0."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)
        for layer in (self.ada[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class PixelHead(nn.Module):
    """Feature map (B, N, H, W) -> output (B, C, H, W) by conv3×3 -> GELU -> conv3×3; the last conv starts at
    zero, so the untrained model predicts v = 0 as with the plain final layer."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(x)))
