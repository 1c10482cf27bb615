"""Blend training (crossflow.data.shapes.Blend): the source between two prompts' VE posteriors."""

from __future__ import annotations

import pytest
import torch

from crossflow.config import ModelConfig
from crossflow.editing.latent_ops import TextPosterior, interpolate_posteriors
from crossflow.errors import CrossFlowError
from crossflow.lit_module import CrossFlowLitModule
from crossflow.models.crossflow import CrossFlowModel
from crossflow.models.flow_model import TextBlend
from crossflow.models.variational import blend_posteriors

PROMPTS = ["a small red circle in the top left", "a large blue square in the center", "a green triangle"]
OTHERS = ["a small blue circle in the top left", "a large blue square in the top right", "a red triangle"]


def _posteriors(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(4, 3, 2, 2, generator=g) for _ in range(4))


def test_blend_posteriors_ends_and_path() -> None:
    mu_a, logvar_a, mu_b, logvar_b = _posteriors(0)
    mu, logvar = blend_posteriors(mu_a, logvar_a, mu_b, logvar_b, torch.zeros(4))
    assert torch.equal(mu, mu_a) and torch.equal(logvar, logvar_a), "α = 0 is A, bit for bit"
    mu, logvar = blend_posteriors(mu_a, logvar_a, mu_b, logvar_b, torch.ones(4))
    torch.testing.assert_close(mu, mu_b)
    torch.testing.assert_close(logvar, logvar_b)
    # In between: the posterior interpolation walks (μ and σ lerped), one α per row.
    alpha = torch.tensor([0.1, 0.4, 0.5, 0.9])
    mu, logvar = blend_posteriors(mu_a, logvar_a, mu_b, logvar_b, alpha)
    for i, a in enumerate(alpha.tolist()):
        walked = interpolate_posteriors(TextPosterior(mu_a[i:i + 1], (0.5 * logvar_a[i:i + 1]).exp()),
                                        TextPosterior(mu_b[i:i + 1], (0.5 * logvar_b[i:i + 1]).exp()), [a])
        torch.testing.assert_close(mu[i:i + 1], walked.mu)
        torch.testing.assert_close((0.5 * logvar[i:i + 1]).exp(), walked.sigma)


def test_blend_rows_start_between_the_prompts(tiny_model_config: ModelConfig) -> None:
    lit = CrossFlowLitModule(model=tiny_model_config)
    model: CrossFlowModel = lit.model  # type: ignore[assignment]
    tokens, mask = lit.text_encoder(PROMPTS)
    tokens_b, mask_b = lit.text_encoder(OTHERS[1:2])
    blend = TextBlend(tokens_b, mask_b, rows=torch.tensor([1]), alpha=torch.tensor([0.3]))
    got = model.source(tokens, mask, generator=torch.Generator().manual_seed(5), blend=blend)
    plain = model.source(tokens, mask, generator=torch.Generator().manual_seed(5))
    for i in (0, 2):  # rows that are not blends: untouched
        assert torch.equal(got.x0[i], plain.x0[i]) and torch.equal(got.mu[i], plain.mu[i])
    mu_a, logvar_a = model.encode_text(tokens[1:2], mask[1:2])
    mu_b, logvar_b = model.encode_text(tokens_b, mask_b)
    mu, logvar = blend_posteriors(mu_a, logvar_a, mu_b, logvar_b, torch.tensor([0.3]))
    torch.testing.assert_close(got.mu[1:2], mu)
    torch.testing.assert_close(got.logvar[1:2], logvar)
    # The same noise draw as the plain source: x0 moves only by the change of posterior.
    assert model.variational.config.grid_downsample == 1, "the tiny VE's grid is the latent (no upsampling)"
    eps = (plain.x0[1:2] - plain.mu[1:2]) / (0.5 * plain.logvar[1:2]).exp()
    torch.testing.assert_close(got.x0[1:2], mu + (0.5 * logvar).exp() * eps, rtol=1e-4, atol=1e-5)


def test_encode_blend_reads_the_batch(tiny_model_config: ModelConfig) -> None:
    lit = CrossFlowLitModule(model=tiny_model_config)
    batch = {"caption": PROMPTS, "blend_caption": ["", OTHERS[1], OTHERS[2]],
             "blend_alpha": torch.tensor([0.0, 0.25, 1.0])}
    blend = lit.encode_blend(batch)
    assert blend is not None and blend.rows.tolist() == [1, 2] and blend.alpha.tolist() == [0.25, 1.0]
    expected, _ = lit.text_encoder(OTHERS[1:])
    torch.testing.assert_close(blend.tokens, expected)
    assert lit.encode_blend({**batch, "blend_alpha": torch.zeros(3)}) is None
    assert lit.encode_blend({"caption": PROMPTS}) is None
    with pytest.raises(CrossFlowError, match="precomputed"):
        lit.encode_blend({**batch, "text_states": torch.zeros(3, 12, 32)})
    # The whole objective runs on a blend batch and trains the VE through the second prompt too.
    batch["image"] = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    losses = lit.compute_losses(batch, generator=torch.Generator().manual_seed(2))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and lit.model.variational.in_proj.weight.grad.abs().sum() > 0


def test_the_noise_baseline_refuses_blends(tiny_model_config: ModelConfig) -> None:
    from crossflow.models.baseline import NoiseBaselineConfig

    tiny_model_config.kind = "noise_baseline"
    tiny_model_config.baseline = NoiseBaselineConfig(text_depth=1)
    lit = CrossFlowLitModule(model=tiny_model_config)
    tokens, mask = lit.text_encoder(PROMPTS)
    blend = TextBlend(tokens[:1], mask[:1], rows=torch.tensor([0]), alpha=torch.tensor([0.5]))
    with pytest.raises(CrossFlowError, match="no text latent"):
        lit.model.source(tokens, mask, blend=blend)
