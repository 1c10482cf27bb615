"""The Variational Encoder: text token states -> μ, log σ² in the image-latent shape."""

from __future__ import annotations

import pytest
import torch

from crossflow.config import ModelConfig
from crossflow.models.crossflow import CrossFlowModel
from crossflow.models.variational import VariationalEncoder, VariationalEncoderConfig

LATENT = (3, 8, 8)
TOKENS, TEXT_DIM = 12, 16


def _ve(**overrides: float | str) -> VariationalEncoder:
    torch.manual_seed(0)
    cfg = VariationalEncoderConfig(**{"width": 32, "depth": 1, "num_heads": 2, "token_dim": 8, **overrides})
    return VariationalEncoder(cfg, text_dim=TEXT_DIM, num_tokens=TOKENS, latent_shape=LATENT)


def _inputs(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(b, TOKENS, TEXT_DIM, generator=g)
    lengths = torch.tensor([4, 12, 7])[:b]
    mask = torch.arange(TOKENS)[None] < lengths[:, None]
    return tokens, mask


@pytest.mark.parametrize("pooling", ["flatten", "attention"])
def test_outputs_have_exactly_the_latent_shape(pooling: str) -> None:
    ve = _ve(pooling=pooling)
    tokens, mask = _inputs()
    mu, logvar = ve(tokens, mask)
    assert mu.shape == (3, *LATENT) and logvar.shape == (3, *LATENT)
    assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()
    assert not torch.allclose(mu[0], mu[1])  # different prompts, different latents


@pytest.mark.parametrize("pooling", ["flatten", "attention"])
def test_padded_positions_are_ignored(pooling: str) -> None:
    ve = _ve(depth=2, pooling=pooling)
    tokens, mask = _inputs()
    mu, logvar = ve(tokens, mask)
    changed = tokens.clone()
    changed[~mask] = 100.0 * torch.randn(int((~mask).sum()), TEXT_DIM)
    mu2, logvar2 = ve(changed, mask)
    torch.testing.assert_close(mu2, mu)
    torch.testing.assert_close(logvar2, logvar)
    # A real token does matter (positive control).
    changed_real = tokens.clone()
    changed_real[0, 0] += 1.0
    mu3, _ = ve(changed_real, mask)
    assert (mu3[0] - mu[0]).abs().max() > 1e-4
    torch.testing.assert_close(mu3[1:], mu[1:])


def test_integer_mask_is_accepted() -> None:
    ve = _ve()
    tokens, mask = _inputs()
    torch.testing.assert_close(ve(tokens, mask.long())[0], ve(tokens, mask)[0])


def test_wrong_token_count_raises() -> None:
    ve = _ve()
    with pytest.raises(ValueError, match="expected 12 text tokens, got 10"):
        ve(torch.randn(2, 10, TEXT_DIM), torch.ones(2, 10, dtype=torch.bool))


def test_logvar_is_clamped() -> None:
    ve = _ve(logvar_min=-3.0, logvar_max=2.0)
    tokens, mask = _inputs()
    half = ve.out.bias.shape[0] // 2
    with torch.no_grad():
        ve.out.bias[half:] = 1e3
        assert torch.all(ve(tokens, mask)[1] == 2.0)
        ve.out.bias[half:] = -1e3
        assert torch.all(ve(tokens, mask)[1] == -3.0)


def test_gradients_reach_every_parameter() -> None:
    ve = _ve()
    tokens, mask = _inputs()
    mu, logvar = ve(tokens, mask)
    (mu.square().mean() + logvar.mean()).backward()
    for name, p in ve.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_coarse_grid_is_sampled_then_repeated_up_to_the_latent_shape(tiny_model_config: ModelConfig) -> None:
    ve = _ve(grid_downsample=4)
    tokens, mask = _inputs()
    mu, logvar = ve(tokens, mask)
    assert mu.shape == (3, 3, 2, 2) and logvar.shape == (3, 3, 2, 2)
    z = ve.upsample(mu)
    assert z.shape == (3, *LATENT)
    # Every 4x4 block of the latent holds one grid value.
    torch.testing.assert_close(z[:, :, :4, :4], mu[:, :, :1, :1].expand(-1, -1, 4, 4))
    torch.testing.assert_close(z[:, :, 4:, :4], mu[:, :, 1:, :1].expand(-1, -1, 4, 4))
    assert _ve().upsample(mu) is mu  # f = 1 is the paper's per-element VE
    # Through the model: the reparameterised draw happens on the grid, so each block is constant.
    tiny_model_config.variational.grid_downsample = 4
    model = CrossFlowModel(tiny_model_config, text_dim=32)
    z_text = model.text_latent(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert z_text.shape == (3, *LATENT)
    assert torch.equal(z_text[:, :, :4, :4], z_text[:, :, :1, :1].expand(-1, -1, 4, 4))
    assert torch.equal(model.text_latent(mu, logvar, temperature=0.0), z)


@pytest.mark.parametrize("factor", [0, 3])
def test_grid_downsample_must_divide_the_latent(factor: int) -> None:
    with pytest.raises(ValueError, match="grid_downsample"):
        _ve(grid_downsample=factor)
