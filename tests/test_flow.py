"""The probability path, its target, time sampling and the losses of crossflow.flow."""

from __future__ import annotations

import math

import pytest
import torch

from crossflow import flow
from crossflow.flow import SIGMA_MIN


def _latents(
    b: int = 4, shape: tuple[int, ...] = (3, 8, 8), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_text = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    z_image = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    return z_text, z_image


def test_path_starts_exactly_at_text_latent() -> None:
    z_text, z_image = _latents()
    x0 = flow.path_sample(z_text, z_image, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(x0, z_text)


def test_path_ends_at_image_latent_plus_sigma_min_text() -> None:
    z_text, z_image = _latents()
    x1 = flow.path_sample(z_text, z_image, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(x1, z_image + SIGMA_MIN * z_text, rtol=0, atol=1e-12)
    # σ_min keeps a trace of z_text at t = 1: without it the end point would be z_image exactly.
    x1_no_sigma = flow.path_sample(z_text, z_image, torch.ones(4, dtype=torch.float64), sigma_min=0.0)
    assert torch.equal(x1_no_sigma, z_image)


def test_path_matches_formula_at_interior_times() -> None:
    z_text, z_image = _latents()
    t = torch.tensor([0.1, 0.25, 0.5, 0.9], dtype=torch.float64)
    x_t = flow.path_sample(z_text, z_image, t)
    for i, ti in enumerate(t.tolist()):
        expected = ti * z_image[i] + (1 - (1 - SIGMA_MIN) * ti) * z_text[i]
        torch.testing.assert_close(x_t[i], expected, rtol=0, atol=1e-12)


def test_target_is_time_derivative_of_path() -> None:
    z_text, z_image = _latents()
    v_target = flow.target_velocity(z_text, z_image)
    h = 1e-4
    for t0 in (0.2, 0.5, 0.8):
        t_plus = torch.full((4,), t0 + h, dtype=torch.float64)
        t_minus = torch.full((4,), t0 - h, dtype=torch.float64)
        dx_dt = (flow.path_sample(z_text, z_image, t_plus) - flow.path_sample(z_text, z_image, t_minus)) / (
            2 * h
        )
        torch.testing.assert_close(dx_dt, v_target, rtol=0, atol=1e-9)
    torch.testing.assert_close(v_target, z_image - (1 - SIGMA_MIN) * z_text, rtol=0, atol=0)


def test_following_target_from_text_latent_reaches_path_end() -> None:
    z_text, z_image = _latents()
    v_target = flow.target_velocity(z_text, z_image)
    torch.testing.assert_close(
        z_text + v_target,
        flow.path_sample(z_text, z_image, torch.ones(4, dtype=torch.float64)),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("sigma_min", [SIGMA_MIN, 0.0, 0.1])
def test_split_velocity_inverts_path_and_target(sigma_min: float) -> None:
    z_text, z_image = _latents()
    t = torch.rand(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t[0], t[-1] = 0.0, 1.0  # both ends too: the split has no division, so no end is singular
    x_t = flow.path_sample(z_text, z_image, t, sigma_min)
    v = flow.target_velocity(z_text, z_image, sigma_min)
    z_image_hat, z_text_hat = flow.split_velocity(x_t, v, t, sigma_min)
    torch.testing.assert_close(z_text_hat, z_text, rtol=0, atol=1e-12)
    torch.testing.assert_close(z_image_hat, z_image, rtol=0, atol=1e-12)
    # And back: the recovered pair gives the same point and velocity (any v, not only the true one).
    v_any = torch.randn_like(v)
    z_image_hat, z_text_hat = flow.split_velocity(x_t, v_any, 0.3, sigma_min)  # a scalar t broadcasts
    torch.testing.assert_close(flow.path_sample(z_text_hat, z_image_hat, torch.full((4,), 0.3, dtype=torch.float64),
                                                sigma_min), x_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow.target_velocity(z_text_hat, z_image_hat, sigma_min), v_any, rtol=0, atol=1e-12)


def test_velocity_from_a_perfect_data_prediction_is_the_target() -> None:
    z_text, z_image = _latents()
    t = torch.tensor([0.0, 0.3, 0.7, 0.95], dtype=torch.float64)
    x_t = flow.path_sample(z_text, z_image, t)
    v = flow.velocity_from_data(z_image, x_t, t)
    torch.testing.assert_close(v, flow.target_velocity(z_text, z_image), rtol=0, atol=1e-9)
    # One Euler step of the implied velocity over the remaining time lands on the prediction.
    torch.testing.assert_close(x_t + (1 - t).reshape(-1, 1, 1, 1) * v, z_image, rtol=0, atol=1e-4)


def test_velocity_from_data_clamps_the_gap_near_the_image_end() -> None:
    z_text, z_image = _latents()
    t = torch.full((4,), 0.999, dtype=torch.float64)
    x_t = flow.path_sample(z_text, z_image, t)
    x_hat = z_image + 0.1  # an imperfect prediction: its error is divided by the clamped gap, not by 1e-3
    v = flow.velocity_from_data(x_hat, x_t, t, min_gap=0.05)
    expected = (x_hat - (1 - SIGMA_MIN) * x_t) / 0.05
    torch.testing.assert_close(v, expected, rtol=0, atol=1e-9)
    assert flow.velocity_from_data(x_hat.bfloat16(), x_t.float(), t.float()).dtype == torch.float32


@pytest.mark.parametrize("shape", [(3, 8, 8), (16, 5), (7,)])
def test_path_broadcasts_per_sample_time(shape: tuple[int, ...]) -> None:
    z_text, z_image = _latents(b=3, shape=shape)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    x_t = flow.path_sample(z_text, z_image, t)
    assert x_t.shape == z_text.shape
    for i in range(3):
        single = flow.path_sample(z_text[i : i + 1], z_image[i : i + 1], t[i : i + 1])
        torch.testing.assert_close(x_t[i : i + 1], single, rtol=0, atol=0)


def test_path_casts_time_to_latent_dtype() -> None:
    z_text, z_image = (z.float() for z in _latents())
    x_t = flow.path_sample(z_text, z_image, torch.full((4,), 0.5, dtype=torch.float64))
    assert x_t.dtype == torch.float32
    bf = flow.path_sample(z_text.bfloat16(), z_image.bfloat16(), torch.full((4,), 0.5))
    assert bf.dtype == torch.bfloat16


def test_uniform_time_range_and_coverage_near_zero() -> None:
    t = flow.sample_time(20000, "uniform", generator=torch.Generator().manual_seed(0))
    assert t.shape == (20000,)
    assert t.min() >= 0 and t.max() < 1
    assert t.min() < 1e-3  # the sampler starts at t = 0: uniform time trains there
    assert abs((t < 0.05).float().mean().item() - 0.05) < 0.01
    assert abs(t.median().item() - 0.5) < 0.02


def test_logit_normal_time_range_median_and_sparse_start() -> None:
    t = flow.sample_time(20000, "logit_normal", generator=torch.Generator().manual_seed(0))
    assert t.shape == (20000,)
    assert t.min() > 0 and t.max() < 1
    assert abs(t.median().item() - 0.5) < 0.02
    # P(t < 0.05) = Φ(logit(0.05)) ≈ 0.0016 for logit-normal(0, 1), versus 0.05 for uniform.
    frac_low = (t < 0.05).float().mean().item()
    assert frac_low < 0.005


def test_logit_normal_mean_shifts_median() -> None:
    t = flow.sample_time(20000, "logit_normal", mean=1.0, std=0.5, generator=torch.Generator().manual_seed(1))
    assert abs(t.median().item() - 1 / (1 + math.exp(-1.0))) < 0.02


@pytest.mark.parametrize("shift", [0.5, 2.0, 3.0])
def test_time_shift_moves_the_median_as_its_formula_says(shift: float) -> None:
    t = flow.sample_time(20000, "uniform", shift=shift, generator=torch.Generator().manual_seed(2))
    assert t.min() >= 0 and t.max() <= 1
    # The shift is monotone, so the median of shifted uniform t is the shifted median 0.5.
    assert abs(t.median().item() - shift / (1 + shift)) < 0.02
    unshifted = flow.sample_time(50, "uniform", generator=torch.Generator().manual_seed(2))
    assert torch.equal(flow.sample_time(50, "uniform", shift=1.0, generator=torch.Generator().manual_seed(2)), unshifted)
    with pytest.raises(ValueError, match="positive"):
        flow.sample_time(8, "uniform", shift=0.0)


def test_sample_time_is_reproducible_and_rejects_unknown_kind() -> None:
    a = flow.sample_time(8, "logit_normal", generator=torch.Generator().manual_seed(3))
    b = flow.sample_time(8, "logit_normal", generator=torch.Generator().manual_seed(3))
    c = flow.sample_time(8, "logit_normal", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="unknown time sampling"):
        flow.sample_time(8, "beta")  # type: ignore[arg-type]


def test_kl_is_zero_at_standard_normal_and_positive_otherwise() -> None:
    zeros = torch.zeros(2, 3, 4, 4)
    assert flow.kl_divergence(zeros, zeros).item() == 0.0
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 3, 4, 4, generator=g)
    logvar = torch.randn(2, 3, 4, 4, generator=g)
    assert flow.kl_divergence(mu, zeros).item() > 0
    assert flow.kl_divergence(zeros, logvar).item() > 0
    assert flow.kl_divergence(mu, logvar).item() > 0


def test_kl_matches_closed_form_per_element_mean() -> None:
    # KL(N(1, 1) ‖ N(0, 1)) = 1/2 per element; KL(N(0, 2) ‖ N(0, 1)) = (2 − 1 − ln 2) / 2.
    ones = torch.ones(2, 3, 4, 4)
    assert flow.kl_divergence(ones, torch.zeros_like(ones)).item() == pytest.approx(0.5)
    kl = flow.kl_divergence(torch.zeros_like(ones), torch.full_like(ones, math.log(2.0))).item()
    assert kl == pytest.approx(0.5 * (1 - math.log(2.0)), rel=1e-6)
    # Averaged over elements: the value does not grow with the latent size.
    big = torch.ones(2, 3, 16, 16)
    assert flow.kl_divergence(big, torch.zeros_like(big)).item() == pytest.approx(0.5)


def test_reparameterize_is_deterministic_given_generator() -> None:
    mu = torch.randn(4, 3, 8, 8)
    logvar = torch.full_like(mu, -1.0)
    a = flow.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(7))
    b = flow.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(7))
    c = flow.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == mu.shape and a.dtype == mu.dtype


def test_reparameterize_statistics_and_gradients() -> None:
    mu = torch.full((20000,), 2.0, requires_grad=True)
    logvar = torch.full((20000,), math.log(0.25), requires_grad=True)
    z = flow.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(2.0, abs=0.02)
    assert z.std().item() == pytest.approx(0.5, abs=0.02)
    z.sum().backward()
    assert mu.grad is not None and torch.all(mu.grad == 1)
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0
    # A vanishing variance collapses the sample onto μ.
    tight = flow.reparameterize(
        mu.detach(), torch.full((20000,), -60.0), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(tight, mu.detach(), rtol=0, atol=1e-10)


def test_cfg_unconditional_mask_rate() -> None:
    mask = flow.cfg_unconditional_mask(50000, 0.1, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (50000,)
    assert abs(mask.float().mean().item() - 0.1) < 0.01
    assert not flow.cfg_unconditional_mask(1000, 0.0).any()
    assert flow.cfg_unconditional_mask(1000, 1.0).all()


def _labelled_images(b: int) -> torch.Tensor:
    """Each sample's image is filled with its own index, so rows can be identified after a swap."""
    return torch.arange(b, dtype=torch.float32).reshape(b, 1, 1, 1).expand(b, 3, 4, 4).clone()


def test_roll_unconditional_targets_permutes_only_unconditional_rows() -> None:
    z_image = _labelled_images(8)
    uncond = torch.tensor([False, True, False, True, True, False, True, False])
    before = z_image.clone()
    out = flow.roll_unconditional_targets(z_image, uncond)
    assert torch.equal(z_image, before), "input must not be modified in place"
    assert out.shape == z_image.shape
    assert torch.equal(out[~uncond], z_image[~uncond])
    idx = uncond.nonzero(as_tuple=True)[0]
    sources = out[idx, 0, 0, 0].long()
    # Every unconditional row now holds another unconditional sample's image: a derangement of the subset.
    assert sorted(sources.tolist()) == idx.tolist()
    assert torch.all(sources != idx)
    for i, src in zip(idx.tolist(), sources.tolist(), strict=True):
        assert torch.equal(out[i], z_image[src])


def test_roll_unconditional_targets_two_samples_swap() -> None:
    z_image = _labelled_images(4)
    uncond = torch.tensor([True, False, False, True])
    out = flow.roll_unconditional_targets(z_image, uncond)
    assert torch.equal(out[0], z_image[3]) and torch.equal(out[3], z_image[0])
    assert torch.equal(out[1:3], z_image[1:3])


@pytest.mark.parametrize("uncond", [[False, False, False, False], [False, True, False, False]])
def test_roll_unconditional_targets_unchanged_with_fewer_than_two(uncond: list[bool]) -> None:
    z_image = _labelled_images(4)
    out = flow.roll_unconditional_targets(z_image, torch.tensor(uncond))
    assert torch.equal(out, z_image)


def test_flow_matching_loss() -> None:
    v = torch.randn(4, 3, 8, 8)
    assert flow.flow_matching_loss(v, v.clone()).item() == 0.0
    other = v + 0.5
    assert flow.flow_matching_loss(v, other).item() == pytest.approx(0.25)
    loss_bf16 = flow.flow_matching_loss(v.bfloat16(), other.bfloat16())
    assert loss_bf16.dtype == torch.float32 and loss_bf16.dim() == 0


def _square_image() -> torch.Tensor:
    """One 16-px image in [-1, 1]: black background, a red 6×6 square at rows/cols 5..10."""
    x = -torch.ones(1, 3, 16, 16)
    x[0, 0, 5:11, 5:11] = 1.0
    return x


def test_edge_weights_mark_the_outline_and_leave_flat_areas_at_one() -> None:
    w = flow.edge_weights(_square_image(), strength=4.0)
    assert w.shape == (1, 1, 16, 16)
    # The outline (one pixel either side of the square's border) gets 1 + strength; flat areas get 1.
    assert w[0, 0, 5, 5].item() == 5.0 and w[0, 0, 4, 7].item() == 5.0 and w[0, 0, 11, 7].item() == 5.0
    assert w[0, 0, 0, 0].item() == 1.0 and w[0, 0, 7, 7].item() == 1.0 and w[0, 0, 15, 15].item() == 1.0
    assert flow.edge_weights(-torch.ones(2, 3, 8, 8), strength=4.0).eq(1.0).all()  # a blank image has no edges
    with pytest.raises(ValueError, match="strength"):
        flow.edge_weights(_square_image(), strength=-1.0)


def test_weighted_flow_matching_loss_is_a_weighted_mean() -> None:
    v = torch.zeros(1, 3, 16, 16)
    other = torch.zeros_like(v)
    other[0, :, 0, 0] = 1.0  # an error only on a flat background pixel
    plain = flow.flow_matching_loss(v, other)
    # A uniform weight is the plain MSE; weighting the outline shrinks a background error's share.
    assert flow.flow_matching_loss(v, other, torch.full((1, 1, 16, 16), 3.0)).item() == pytest.approx(plain.item())
    weighted = flow.flow_matching_loss(v, other, flow.edge_weights(_square_image(), strength=4.0))
    assert weighted.item() < plain.item()
    edge_err = torch.zeros_like(v)
    edge_err[0, :, 5, 5] = 1.0  # the same error on a corner of the square counts more than plain MSE
    assert flow.flow_matching_loss(v, edge_err, flow.edge_weights(_square_image(), 4.0)).item() > plain.item()
