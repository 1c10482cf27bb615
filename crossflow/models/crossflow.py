"""The trainable CrossFlow network: Variational Encoder + flow transformer + alignment head (ModelConfig.kind
``crossflow``; the noise baseline is models/baseline.py, the shared interface models/flow_model.py)."""

from __future__ import annotations

import math

import torch

from crossflow import flow
from crossflow.config import ModelConfig
from crossflow.models.alignment import ContrastiveAlignment
from crossflow.models.flow_model import FlowModel, FlowSource, TextBlend, TextCondition
from crossflow.models.transformer import FlowTransformer
from crossflow.models.variational import VariationalEncoder, blend_posteriors


class CrossFlowModel(FlowModel):
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
        if not (math.isfinite(temperature) and temperature >= 0):  # a NaN passes `temperature < 0`
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if temperature == 0:
            z = mu
        else:
            z = flow.reparameterize(mu, logvar + 2 * math.log(temperature), generator=generator)
        return self.variational.upsample(z)

    def source(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        blend: TextBlend | None = None,
    ) -> FlowSource:
        """The flow starts at z_text drawn from the VE (paper Sec. 3.1); no condition besides it. A ``blend`` row
        draws z_text from the lerp of its two prompts' posteriors (:func:`blend_posteriors`)."""
        mu, logvar = self.encode_text(tokens, mask)
        if blend is not None:
            mu_b, logvar_b = self.encode_text(blend.tokens, blend.mask)
            mu_r, logvar_r = blend_posteriors(mu[blend.rows], logvar[blend.rows], mu_b, logvar_b, blend.alpha)
            mu, logvar = mu.index_put((blend.rows,), mu_r), logvar.index_put((blend.rows,), logvar_r)
        return FlowSource(self.text_latent(mu, logvar, generator=generator, temperature=temperature), mu=mu, logvar=logvar)

    def cfg_targets(self, z_image: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
        """Unconditional samples flow to another unconditional sample's image (paper Sec. 3.3)."""
        return flow.roll_unconditional_targets(z_image, unconditional)

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        unconditional: torch.Tensor | None = None,
        cond: TextCondition | None = None,
    ) -> torch.Tensor:
        """v_θ(x_t, t, indicator), whatever the network predicts (config.prediction). No text condition:
        CrossFlow's text is in x_t alone (``cond`` must be None)."""
        if cond is not None:
            raise ValueError("CrossFlow takes no text condition: its text reaches the flow only through x_t")
        return self._as_velocity(self.flow(x_t, t, unconditional), x_t, t)

    def auxiliary_losses(self, source: FlowSource, z_image: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_align between z_text and its true image (also for unconditional samples) and the VE's KL (Eq. 3)."""
        assert source.mu is not None and source.logvar is not None, "a CrossFlow source carries the VE's μ, log σ²"
        return {"align": self.alignment(source.x0, z_image), "kl": flow.kl_divergence(source.mu, source.logvar)}

    def diagnostics(self, source: FlowSource) -> dict[str, torch.Tensor]:
        """The VE's mean σ and the spread of μ (is the text latent collapsing to deterministic?)."""
        assert source.mu is not None and source.logvar is not None
        return {"sigma_mean": (0.5 * source.logvar.detach()).exp().mean(), "mu_std": source.mu.detach().std()}
