"""The trainable CrossFlow network: Variational Encoder + flow transformer + alignment head."""

from __future__ import annotations

import math

import torch
from torch import nn

from crossflow import flow
from crossflow.config import ModelConfig
from crossflow.models.alignment import ContrastiveAlignment
from crossflow.models.transformer import FlowTransformer
from crossflow.models.variational import VariationalEncoder


class CrossFlowModel(nn.Module):
    """Everything that trains. The frozen text encoder and the codec live outside (they are not saved)."""

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        latent_shape = config.latent_shape
        self.variational = VariationalEncoder(
            config.variational, text_dim=text_dim, num_tokens=config.text_encoder.max_length, latent_shape=latent_shape
        )
        self.flow = FlowTransformer(config.transformer_config())
        self.alignment = ContrastiveAlignment(latent_shape, dim=config.alignment_dim)

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states -> (μ, log σ²) of the text latent."""
        return self.variational(tokens, mask)

    def text_latent(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """z_text in the image-latent shape: μ + τ·σ·ε on the VE's grid, brought up to the latent shape.

        τ = 1 draws from the VE's N(μ, σ²) as in training; τ = 0 is μ itself (one image per prompt);
        in between trades diversity for fidelity, like the truncation trick of GANs.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            z = mu
        else:
            z = flow.reparameterize(mu, logvar + 2 * math.log(temperature), generator=generator)
        return self.variational.upsample(z)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, unconditional: torch.Tensor | None = None) -> torch.Tensor:
        """v_θ(x_t, t, indicator), whatever the network predicts (config.prediction)."""
        out = self.flow(x_t, t, unconditional)
        if self.config.prediction == "data":
            return flow.velocity_from_data(out, x_t, t, self.config.sigma_min)
        return out
