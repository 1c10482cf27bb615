"""The standard noise→image flow-matching baseline, in the same framework (ModelConfig.kind ``noise_baseline``).

The comparison the paper rests on (Liu et al. 2412.15213, Sec. 4.1, "standard flow matching" baseline):
the source is x0 ~ N(0, I) instead of a text latent, and the text enters the *same* flow transformer (same
blocks, presets, adaLN-zero, indicator token) as a condition from the same frozen text encoder:

- ``adaln``: masked mean of the (refined) token states -> MLP -> added to the time embedding that drives
  every adaLN modulation (as DiT's class embedding, Peebles & Xie 2023, Sec. 3.2);
- ``cross_attention``: in addition, every block cross-attends to the token states (PixArt-α, Chen et al.
  2023, Sec. 2.3; the pooled vector stays, as Imagen / SD3 add pooled text to the time embedding).

Path, target and loss are ``crossflow.flow``'s with x0 in place of z_text: x_t = t·z_image +
(1 − (1 − σ_min)·t)·x0, v* = z_image − (1 − σ_min)·x0 (Lipman et al. 2023, Eq. 20-23). No VE, no KL, no
alignment loss.

Classifier-free guidance by condition dropout (Ho & Salimans 2022): a sample drawn unconditional keeps its
own image as target, and its prompt is replaced by a *learned null condition*, one null token standing in
for the whole prompt (the pooled vector and the cross-attention context then come from it alone); the
transformer's indicator token is set too, so the CFG signal reaches the shared body exactly as in CrossFlow.
At sampling time v = v_u + w·(v_c − v_u), both at the same x_t (``crossflow.sampling``).

Parameters, flow transformer + the rest (tests/models/test_baseline.py re-counts the demo's):

- demo (32 px pixels, tiny, patch 4): CrossFlow 1.28 M + VE 5.18 M + alignment 1.22 M = 7.7 M;
  baseline 1.55 M + text conditioner 0.48 M = 2.0 M (``adaln``: 1.28 M + 0.48 M = 1.8 M).
- t2i_256px_xl (4×32×32 latent, xl, patch 2): CrossFlow 950 M + VE 117 M + alignment 1.5 M = 1068 M;
  baseline 1160 M + 44 M = 1203 M (``adaln``: 950 M + 44 M = 993 M).

The flow bodies are the same (the baseline's cross-attention adds 0.27 M / 210 M). At demo size CrossFlow's
extra weights are mostly the VE's flat projection to the latent, one matmul per sample: per-step compute is
dominated by the shared body in both, so equal steps × batch is equal training compute to within the text
paths' cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from crossflow.errors import CrossFlowError
from crossflow.models.flow_model import FlowModel, FlowSource, TextBlend, TextCondition
from crossflow.models.layers import EncoderBlock
from crossflow.models.transformer import FlowTransformer

if TYPE_CHECKING:
    from crossflow.config import ModelConfig

Conditioning = Literal["adaln", "cross_attention"]


@dataclass
class NoiseBaselineConfig:
    """Text conditioning of the noise→image baseline (used only with ``ModelConfig.kind: noise_baseline``)."""

    conditioning: Conditioning = "cross_attention"
    """``adaln``: pooled text added to the time embedding only. ``cross_attention``: also a cross-attention
    to the text tokens in every flow block (the usual text-to-image baseline, and the paper's)."""
    text_depth: int = 2
    """Trainable pre-norm transformer layers (at the flow width) over the frozen encoder's token states before
    pooling / cross-attention; the counterpart of the VE's layers. 0: a linear projection only."""


class TextConditioner(nn.Module):
    """Token states (B, L, D_txt) + mask -> pooled (B, D) for adaLN, context (B, L, D) and its mask for
    cross-attention. Dropped (unconditional) rows see one learned null token instead of their prompt."""

    def __init__(self, text_dim: int, width: int, num_heads: int, depth: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(text_dim, width)
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.pooled_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        for layer in (self.pooled_mlp[0], self.pooled_mlp[2]):  # as the time embedding's MLP (DiT)
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, unconditional: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.in_proj(tokens)
        mask = mask.bool()
        if unconditional is not None:
            # Condition dropout: the whole prompt becomes the null token, the only key left unmasked.
            drop = unconditional.bool()
            h = torch.where(drop[:, None, None], self.null_token.to(h.dtype).expand_as(h), h)
            first_only = torch.zeros_like(mask)
            first_only[:, 0] = True
            mask = torch.where(drop[:, None], first_only, mask)
        for block in self.blocks:
            h = block(h, mask)
        h = self.norm(h)
        weight = mask[..., None].to(h.dtype)
        pooled = (h * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)  # masked mean over real tokens
        return self.pooled_mlp(pooled), h, mask


class NoiseBaselineModel(FlowModel):
    """Gaussian noise -> z_image, conditioned on the frozen encoder's text (module docstring)."""

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        cfg = config.baseline
        if cfg.conditioning not in ("adaln", "cross_attention"):
            raise ValueError(f"unknown baseline conditioning {cfg.conditioning!r}; expected 'adaln' or 'cross_attention'")
        flow_config = replace(config.transformer_config(), cross_attention=cfg.conditioning == "cross_attention")
        self.text_conditioner = TextConditioner(text_dim, flow_config.width, flow_config.num_heads, cfg.text_depth)
        self.flow = FlowTransformer(flow_config)

    def source(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        blend: TextBlend | None = None,
    ) -> FlowSource:
        """x0 ~ N(0, I) in the image-latent shape, drawn with ``generator``; the text is the condition."""
        if blend is not None:
            raise CrossFlowError(
                "blend samples (shapes blend_fraction > 0) start the flow between two text latents; the noise "
                "baseline has no text latent: train it on shards without blends"
            )
        if temperature != 1.0:
            raise CrossFlowError(
                f"temperature scales the VE's σ of a CrossFlow text latent; the noise baseline has no VE "
                f"(its source is N(0, I)): leave it at 1, got {temperature}"
            )
        x0 = torch.randn((tokens.shape[0], *self.config.latent_shape), device=tokens.device, generator=generator)
        return FlowSource(x0, cond=TextCondition(tokens, mask))

    def cfg_targets(self, z_image: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
        """Condition dropout keeps every sample's own image: the unconditional model learns p(image)."""
        return z_image

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        unconditional: torch.Tensor | None = None,
        cond: TextCondition | None = None,
    ) -> torch.Tensor:
        """v_θ(x_t, t, text); where ``unconditional`` is True the text is replaced by the null condition."""
        if cond is None:
            raise ValueError("the noise baseline's velocity needs the text condition (FlowSource.cond)")
        pooled, context, context_mask = self.text_conditioner(cond.tokens, cond.mask, unconditional)
        if not self.flow.config.cross_attention:
            context = context_mask = None
        out = self.flow(x_t, t, unconditional, pooled=pooled, context=context, context_mask=context_mask)
        return self._as_velocity(out, x_t, t)
