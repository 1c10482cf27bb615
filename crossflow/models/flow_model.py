"""The interface every trainable flow network offers, and :func:`build_model`, which picks one by config.

Two networks share the framework (``ModelConfig.kind``):

- ``crossflow`` (models/crossflow.py): the paper's noise-free flow from the text latent z_text to z_image;
  text reaches the transformer only through x_t.
- ``noise_baseline`` (models/baseline.py): standard flow matching from Gaussian noise to z_image, the text
  entering the same transformer body as a condition (pooled into adaLN, optionally by cross-attention).

Both are trained by the same objective code (``CrossFlowLitModule.compute_losses``) and sampled by the same
pipeline, through this small interface: the model decides where the flow starts (:meth:`FlowModel.source`),
what the velocity sees besides x_t (``FlowSource.cond``), how CFG's unconditional samples are trained
(:meth:`FlowModel.cfg_targets`) and which extra losses it trains (:meth:`FlowModel.auxiliary_losses`). The
path, target and loss stay the pure functions of ``crossflow.flow``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from crossflow import flow

if TYPE_CHECKING:
    from crossflow.config import ModelConfig
    from crossflow.models.transformer import FlowTransformer


@dataclass
class TextCondition:
    """The frozen text encoder's token states, for a model whose velocity takes the text as a condition."""

    tokens: torch.Tensor
    """(B, L, D_txt) last hidden states of the frozen encoder."""
    mask: torch.Tensor
    """(B, L) bool, True where the token is real (not padding)."""

    def tile(self, batch_size: int) -> TextCondition:
        """The condition repeated along the batch to ``batch_size`` (a multiple of B): CFG evaluates [x; x]."""
        b = self.tokens.shape[0]
        if batch_size == b:
            return self
        if batch_size % b:
            raise ValueError(f"cannot tile a text condition of batch {b} to {batch_size}")
        k = batch_size // b
        return TextCondition(self.tokens.repeat(k, 1, 1), self.mask.repeat(k, 1))


@dataclass
class FlowSource:
    """Where the flow starts for a batch of prompts (t = 0), and what else its velocity needs."""

    x0: torch.Tensor
    """The t = 0 endpoint (B, C, H, W): z_text (CrossFlow) or Gaussian noise (the baseline)."""
    cond: TextCondition | None = None
    """The text condition the velocity takes besides x_t (None for CrossFlow: text is only in x0)."""
    mu: torch.Tensor | None = None
    """CrossFlow: the VE's mean on its grid (for the KL term and diagnostics); None otherwise."""
    logvar: torch.Tensor | None = None
    """CrossFlow: the VE's log σ² on its grid; None otherwise."""


@dataclass
class TextBlend:
    """Training samples whose source lies between two prompts (crossflow.data.shapes.Blend): row ``rows[i]`` of
    the batch starts at ``alpha[i]`` of the way from its own prompt to the prompt encoded here."""

    tokens: torch.Tensor
    """(R, L, D_txt) token states of the second prompts."""
    mask: torch.Tensor
    """(R, L) bool padding mask of the second prompts."""
    rows: torch.Tensor
    """(R,) long: which batch rows are blends."""
    alpha: torch.Tensor
    """(R,) float in (0, 1]: how far towards the second prompt."""


class FlowModel(nn.Module):
    """Base of the trainable networks: the interface the training objective and the pipeline use."""

    config: ModelConfig
    flow: FlowTransformer

    def source(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        blend: TextBlend | None = None,
    ) -> FlowSource:
        """Frozen-encoder token states (B, L, D_txt) + mask (B, L) -> the flow's source x0 (+ condition);
        ``blend`` moves some rows' source towards a second prompt (models with a text latent only)."""
        raise NotImplementedError

    def cfg_targets(self, z_image: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
        """The images the flow is trained towards, given the (B,) mask of samples trained unconditionally."""
        raise NotImplementedError

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        unconditional: torch.Tensor | None = None,
        cond: TextCondition | None = None,
    ) -> torch.Tensor:
        """v_θ(x_t, t) for conditional rows, and the unconditional velocity where ``unconditional`` is True."""
        raise NotImplementedError

    def auxiliary_losses(self, source: FlowSource, z_image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training terms besides flow matching, unweighted, by name (the LossConfig holds their weights)."""
        return {}

    def diagnostics(self, source: FlowSource) -> dict[str, torch.Tensor]:
        """Detached scalars worth logging during training (none by default)."""
        return {}

    def _as_velocity(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The transformer's output as a velocity, whatever it predicts (``config.prediction``)."""
        if self.config.prediction == "data":
            return flow.velocity_from_data(out, x_t, t, self.config.sigma_min)
        return out


def build_model(config: ModelConfig, text_dim: int) -> FlowModel:
    """The network ``config.kind`` names, for a frozen text encoder of width ``text_dim``."""
    from crossflow.models.baseline import NoiseBaselineModel
    from crossflow.models.crossflow import CrossFlowModel

    kinds: dict[str, type[FlowModel]] = {"crossflow": CrossFlowModel, "noise_baseline": NoiseBaselineModel}
    if config.kind not in kinds:
        raise ValueError(f"unknown model kind {config.kind!r}; expected one of {sorted(kinds)}")
    return kinds[config.kind](config, text_dim=text_dim)
