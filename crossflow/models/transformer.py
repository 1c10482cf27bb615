"""The plain flow transformer: self-attention only, no cross-attention, no text input.

Text reaches it only through x_t (paper Sec. 3.2); classifier-free guidance is signalled by a learned
*indicator token* prepended to the patch tokens (paper Sec. 3.3). The noise→image baseline
(models/baseline.py) reuses the same body and adds its text through the optional ``pooled`` / ``context``
inputs of :meth:`FlowTransformer.forward` (and cross-attention blocks, ``FlowTransformerConfig.cross_attention``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from crossflow.models.layers import (
    AdaLNBlock,
    FinalLayer,
    PixelHead,
    TimestepEmbedder,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)


@dataclass
class FlowTransformerConfig:
    """Shape of the flow transformer. Build one with :meth:`from_preset` rather than by hand."""

    in_channels: int = 3
    """Latent channels C (derived from the codec)."""
    input_size: int = 32
    """Latent height = width (derived from the codec)."""
    patch_size: int = 4
    """Side of a square latent patch; tokens = (input_size / patch_size)²."""
    width: int = 128
    """Hidden size D."""
    depth: int = 4
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads (head dim = width / num_heads)."""
    mlp_ratio: float = 4.0
    """MLP hidden size as a multiple of width."""
    pixel_head: int = 0
    """0: the final linear writes each patch's latent values (DiT). N > 0: it writes N feature channels per
    latent position instead, and two 3×3 convolutions turn them into the output, so detail finer than a
    patch (a small shape's corners) is drawn by layers that see across patch borders."""
    cross_attention: bool = False
    """Give every block a cross-attention to text tokens (``context`` in :meth:`FlowTransformer.forward`). Only
    the noise baseline sets it (models/baseline.py); CrossFlow's blocks stay self-attention only."""

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @classmethod
    def from_preset(cls, name: str, **overrides: int | float) -> FlowTransformerConfig:
        """A named size (see :data:`PRESETS`) with derived fields (channels, input size, patch) filled in."""
        if name not in PRESETS:
            raise ValueError(f"unknown flow transformer preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


# Parameter counts for a 4x32x32 latent at patch 2 (bench/model_sizes.py regenerates them; docs/results.md):
# micro 0.2 M, tiny 1.3 M (the CPU demo), small 32.5 M, base 129.5 M, large 456.8 M, xl 949.6 M (the paper's 0.95 B).
PRESETS: dict[str, FlowTransformerConfig] = {
    "micro": FlowTransformerConfig(width=64, depth=2, num_heads=2),  # the smaller size of the baseline study
    "tiny": FlowTransformerConfig(width=128, depth=4, num_heads=4),
    "small": FlowTransformerConfig(width=384, depth=12, num_heads=6),
    "base": FlowTransformerConfig(width=768, depth=12, num_heads=12),
    "large": FlowTransformerConfig(width=1024, depth=24, num_heads=16),
    "xl": FlowTransformerConfig(width=1280, depth=32, num_heads=20),
}


AttnOutHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``hook(block, t, out) -> out'``: block index, the forward's per-sample time t (B,), and that block's self-attention
output (B, N, D) — N = 1 + patches, the indicator token first — before the adaLN gate scales it. Return ``out``
itself to leave the block as it is (see :meth:`FlowTransformer.attention_output_hook`)."""


class FlowTransformer(nn.Module):
    """v_θ(x_t, t, indicator) -> velocity with the shape of x_t."""

    def __init__(self, config: FlowTransformerConfig) -> None:
        super().__init__()
        if config.input_size % config.patch_size:
            raise ValueError(f"input_size {config.input_size} is not divisible by patch_size {config.patch_size}")
        self.config = config
        c, p, d = config.in_channels, config.patch_size, config.width
        grid = config.input_size // p
        self.patch_embed = nn.Linear(c * p * p, d)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, grid, grid), persistent=False)
        # Row 0: conditional, row 1: unconditional (the CFG indicator of paper Sec. 3.3).
        self.indicator_embed = nn.Embedding(2, d)
        self.time_embed = TimestepEmbedder(d)
        self.blocks = nn.ModuleList(
            AdaLNBlock(d, config.num_heads, config.mlp_ratio, cross_attention=config.cross_attention)
            for _ in range(config.depth)
        )
        self.final = FinalLayer(d, (config.pixel_head or c) * p * p)
        self.pixel_head = PixelHead(config.pixel_head, c) if config.pixel_head else None
        # Recompute each block's activations in backward instead of storing them (crossflow.parallel sets it).
        self.activation_checkpointing = False
        # Set only inside attention_output_hook(); None keeps forward on its plain path.
        self._attn_out_hook: AttnOutHook | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        # adaLN-zero layers stay at zero. Named structurally, not by their values, so the model can be
        # built on the meta device (FSDP2 / parameter counting) where values cannot be read.
        keep_zero = {block.ada[1] for block in self.blocks} | {self.final.ada[1]}
        # Cross-attention outputs start at zero too: each block starts as the identity, text or not.
        keep_zero |= {block.cross_attn.proj for block in self.blocks if block.cross_attn is not None}
        if self.pixel_head is None:  # else the head's last conv is the zero-initialised output layer
            keep_zero.add(self.final.linear)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in keep_zero:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.indicator_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)

    @contextmanager
    def attention_output_hook(self, hook: AttnOutHook) -> Iterator[FlowTransformer]:
        """Within the block, every forward calls ``hook(block, t, out)`` on each block's self-attention output and
        uses what it returns (:data:`AttnOutHook`); on leaving (also by an exception) the plain forward is back.

        Without a hook the forward runs exactly as before (one ``is None`` check), so this costs nothing unless
        used. Hooks do not nest: one callable sees every block and decides per block index what to change.
        """
        if self._attn_out_hook is not None:
            raise RuntimeError("an attention-output hook is already set on this flow transformer (hooks do not nest)")
        # object.__setattr__: a hook that is an nn.Module must not become a submodule (and enter the state dict).
        object.__setattr__(self, "_attn_out_hook", hook)
        try:
            yield self
        finally:
            object.__setattr__(self, "_attn_out_hook", None)

    def _hooked_block(
        self, block: nn.Module, args: tuple, block_hook: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, attn_out_hook=block_hook)
        return block(*args, attn_out_hook=block_hook)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        unconditional: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t: (B, C, H, W); t: (B,) in [0, 1]; unconditional: (B,) bool (None = all conditional).

        The noise baseline's text enters through the optional rest (CrossFlow passes none of them):
        ``pooled`` (B, D) is added to the time embedding that drives every adaLN; ``context`` (B, L, D) with
        ``context_mask`` (B, L) is what the blocks cross-attend to (``config.cross_attention`` only).
        """
        if (context is not None) != self.config.cross_attention:
            raise ValueError("context must be given exactly when the transformer has cross-attention blocks")
        cfg = self.config
        b = x_t.shape[0]
        if unconditional is None:
            unconditional = torch.zeros(b, dtype=torch.bool, device=x_t.device)
        tokens = self.patch_embed(patchify(x_t, cfg.patch_size)) + self.pos_embed.to(x_t.dtype)
        indicator = self.indicator_embed(unconditional.long())[:, None]
        h = torch.cat([indicator, tokens], dim=1)
        c = self.time_embed(t)
        if pooled is not None:
            c = c + pooled
        hook = self._attn_out_hook
        for index, block in enumerate(self.blocks):
            args = (h, c) if context is None else (h, c, context, context_mask)
            if hook is not None:
                h = self._hooked_block(block, args, partial(hook, index, t))
            elif self.activation_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
        out = self.final(h[:, 1:], c)
        if self.pixel_head is None:
            return unpatchify(out, cfg.patch_size, cfg.in_channels, cfg.input_size, cfg.input_size)
        return self.pixel_head(unpatchify(out, cfg.patch_size, cfg.pixel_head, cfg.input_size, cfg.input_size))
