"""Text-latent operations: posteriors, lerp/slerp interpolation with shared noise, smoothness, arithmetic."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from crossflow.config import ModelConfig
from crossflow.editing.latent_ops import (
    TextPosterior,
    adjacent_distances,
    arithmetic,
    equal_arc_alphas,
    interpolate,
    interpolate_posteriors,
    interpolate_with_alphas,
    latent_arithmetic,
    naive_latents,
    parse_expression,
    save_gif,
    save_strip,
    shared_noise_latents,
    sigma_stats,
    smoothness_ratio,
    text_posterior,
)
from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline
from crossflow.models.crossflow import CrossFlowModel
from crossflow.models.flow_model import build_model
from crossflow.models.text_encoder import FrozenTextEncoder

PROMPT_A, PROMPT_B = "a small red circle in the top left", "a large blue square"
STEPS = 3


def _seed(value: int) -> torch.Generator:
    return torch.Generator().manual_seed(value)


def _pipeline(config: ModelConfig) -> CrossFlowPipeline:
    torch.manual_seed(0)
    text_encoder = FrozenTextEncoder(config.text_encoder)
    model = build_model(config, text_dim=text_encoder.hidden_size)
    with torch.no_grad():  # off the zero init, so the flow actually shapes the output (as tests/test_inference.py)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return CrossFlowPipeline(config, model.eval(), text_encoder)


@pytest.fixture(scope="module")
def pipe(tiny_model_config_session: ModelConfig) -> CrossFlowPipeline:
    return _pipeline(copy.deepcopy(tiny_model_config_session))


def _posterior(seed: int, shape: tuple[int, ...] = (1, 3, 8, 8), sigma: float | None = None) -> TextPosterior:
    g = _seed(seed)
    mu = torch.randn(shape, generator=g)
    s = torch.full(shape, sigma) if sigma is not None else 0.05 + torch.rand(shape, generator=g)
    return TextPosterior(mu, s)


# ------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("mode", ["lerp", "slerp"])
def test_interpolation_endpoints_are_the_posteriors(mode: str) -> None:
    a, b = _posterior(0, (2, 3, 8, 8)), _posterior(1, (2, 3, 8, 8))
    out = interpolate_posteriors(a, b, [0.0, 0.3, 1.0], mode=mode)  # type: ignore[arg-type]
    assert out.mu.shape == (6, 3, 8, 8)  # frame-major: rows f·B + i
    torch.testing.assert_close(out.mu[:2], a.mu)
    torch.testing.assert_close(out.mu[4:], b.mu)
    torch.testing.assert_close(out.sigma[:2], a.sigma)
    torch.testing.assert_close(out.sigma[4:], b.sigma)
    torch.testing.assert_close(out.sigma[2:4], 0.7 * a.sigma + 0.3 * b.sigma)  # σ is lerped in both modes


def test_slerp_interpolates_the_norm_linearly_and_differs_from_lerp() -> None:
    a, b = _posterior(0), _posterior(1)
    alphas = torch.linspace(0, 1, 7)
    slerp = interpolate_posteriors(a, b, alphas, mode="slerp").mu.flatten(1).norm(dim=1)
    expected = (1 - alphas) * a.mu.norm() + alphas * b.mu.norm()
    torch.testing.assert_close(slerp, expected)
    lerp = interpolate_posteriors(a, b, alphas, mode="lerp").mu.flatten(1).norm(dim=1)
    assert lerp[3] < 0.8 * slerp[3]  # two near-orthogonal μ's: lerp's midpoint cuts through the interior


def test_slerp_falls_back_to_lerp_for_parallel_means() -> None:
    a = _posterior(0)
    b = TextPosterior(2.0 * a.mu, a.sigma)
    out = interpolate_posteriors(a, b, [0.0, 0.5, 1.0], mode="slerp")
    assert torch.isfinite(out.mu).all()
    torch.testing.assert_close(out.mu[1:2], 1.5 * a.mu)
    with pytest.raises(CrossFlowError, match="mode"):
        interpolate_posteriors(a, b, [0.5], mode="cubic")  # type: ignore[arg-type]
    with pytest.raises(CrossFlowError, match="shapes"):
        interpolate_posteriors(a, _posterior(1, (2, 3, 8, 8)), [0.5])


@pytest.mark.parametrize("mode", ["lerp", "slerp"])
def test_shared_noise_latents_at_the_ends_are_exact_draws(mode: str) -> None:
    a, b = _posterior(0), _posterior(1)
    eps = torch.randn(a.mu.shape, generator=_seed(2))
    z = shared_noise_latents(a, b, torch.linspace(0, 1, 5), eps, mode=mode)  # type: ignore[arg-type]
    assert z.shape == (5, 3, 8, 8)
    torch.testing.assert_close(z[:1], a.mu + a.sigma * eps)
    torch.testing.assert_close(z[-1:], b.mu + b.sigma * eps)
    torch.testing.assert_close(shared_noise_latents(a, b, [0.0], eps, temperature=0.0), a.mu)


def test_shared_noise_keeps_its_scale_while_the_naive_lerp_shrinks_it() -> None:
    shape, sigma = (1, 4, 64, 64), 0.5  # 16k elements: the std estimate is good to ~1%
    a, b = _posterior(0, shape, sigma), _posterior(1, shape, sigma)
    alphas = torch.linspace(0, 1, 5)
    mu = interpolate_posteriors(a, b, alphas).mu
    eps = torch.randn(shape, generator=_seed(3))
    shared = (shared_noise_latents(a, b, alphas, eps) - mu).flatten(1).std(dim=1) / sigma
    torch.testing.assert_close(shared, torch.full((5,), eps.std().item()))  # the same ε, the same scale, every frame
    naive = (naive_latents(a, b, alphas, _seed(3)) - mu).flatten(1).std(dim=1) / sigma
    expected = torch.sqrt((1 - alphas) ** 2 + alphas**2)  # [1, .79, .71, .79, 1]
    torch.testing.assert_close(naive, expected, atol=0.02, rtol=0)
    assert abs(naive[2].item() - math.sqrt(0.5)) < 0.02


def test_adjacent_distances_and_smoothness_ratio() -> None:
    start, step = torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.1)
    linear = torch.stack([start + k * step for k in range(6)])
    d = adjacent_distances(linear)
    assert d.shape == (5,)
    torch.testing.assert_close(d, torch.full((5,), 0.1 * math.sqrt(48)))
    assert smoothness_ratio(linear) == pytest.approx(1.0, rel=1e-5)
    jump = linear.clone()
    jump[3:] += 5 * step  # one step carries 6× the change of the others
    assert smoothness_ratio(jump) == pytest.approx(6.0, rel=1e-4)
    assert smoothness_ratio(torch.zeros(4, 3, 2, 2)) == 1.0
    with pytest.raises(CrossFlowError):
        adjacent_distances(linear[:1])


def test_sigma_stats() -> None:
    mu = torch.tensor([-1.0, 1.0, -1.0, 1.0]).view(1, 1, 2, 2)
    sigma = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 1, 2, 2)
    stats = sigma_stats(TextPosterior(mu, sigma))
    assert stats["sigma_mean"] == pytest.approx(0.25)
    assert stats["sigma_min"] == pytest.approx(0.1) and stats["sigma_max"] == pytest.approx(0.4)
    assert stats["mu_abs_mean"] == pytest.approx(1.0)
    assert stats["sigma_over_mu_std"] == pytest.approx(0.25 / mu.std().item())


def test_latent_arithmetic_weights_and_restandardises() -> None:
    a, b, c = _posterior(0), _posterior(1), _posterior(2)
    raw = latent_arithmetic([(1.0, a), (0.5, b), (-1.0, c)], restandardise=False)
    torch.testing.assert_close(raw.mu, a.mu + 0.5 * b.mu - c.mu)
    torch.testing.assert_close(raw.sigma, a.sigma)  # σ is the first term's
    out = latent_arithmetic([(1.0, a), (0.5, b), (-1.0, c)])
    torch.testing.assert_close(out.mu.mean(), a.mu.mean())
    torch.testing.assert_close(out.mu.std(), a.mu.std())
    corr = torch.corrcoef(torch.stack([out.mu.flatten(), raw.mu.flatten()]))[0, 1]
    assert corr > 0.9999  # an affine rescale of the raw sum, not a different direction
    assert torch.equal(latent_arithmetic([(1.0, a)], base_sigma=0.3).sigma, torch.full_like(a.sigma, 0.3))
    torch.testing.assert_close(latent_arithmetic([(1.0, a)]).mu, a.mu)  # a lone term is itself
    with pytest.raises(CrossFlowError):
        latent_arithmetic([])


def test_restandardise_is_per_sample() -> None:
    batch = _posterior(0, (2, 3, 8, 8))
    batch.mu[1] *= 3.0
    out = latent_arithmetic([(1.0, batch), (1.0, _posterior(1, (2, 3, 8, 8)))])
    for i in range(2):
        torch.testing.assert_close(out.mu[i].mean(), batch.mu[i].mean())
        torch.testing.assert_close(out.mu[i].std(), batch.mu[i].std())


@pytest.mark.parametrize(
    ("expression", "terms"),
    [
        ("red circle + 1.0*square - circle", [(1.0, "red circle"), (1.0, "square"), (-1.0, "circle")]),
        ("a red circle", [(1.0, "a red circle")]),
        ("  big  red circle+0.5 * blue -2*red ", [(1.0, "big red circle"), (0.5, "blue"), (-2.0, "red")]),
        ("- circle + square", [(-1.0, "circle"), (1.0, "square")]),
        ("circle in the top-left - .25*circle", [(1.0, "circle in the top-left"), (-0.25, "circle")]),
    ],
)
def test_parse_expression(expression: str, terms: list[tuple[float, str]]) -> None:
    assert parse_expression(expression) == terms


@pytest.mark.parametrize("expression", ["", "   ", "red + ", "red + - blue", "+", "2* + blue", "red * blue"])
def test_parse_expression_errors(expression: str) -> None:
    with pytest.raises(CrossFlowError):
        parse_expression(expression)


# ---------------------------------------------------------------------------------------------- pipeline


def test_text_posterior_matches_the_pipelines_draw(pipe: CrossFlowPipeline) -> None:
    post = text_posterior(pipe, [PROMPT_A, PROMPT_B])
    assert post.mu.shape == (2, 3, 8, 8) and (post.sigma > 0).all()
    z = pipe.encode_prompts([PROMPT_A, PROMPT_B], generator=_seed(5))
    eps = torch.randn(post.mu.shape, generator=_seed(5))
    torch.testing.assert_close(z, post.mu + post.sigma * eps)
    assert set(sigma_stats(post)) >= {"sigma_mean", "sigma_median", "mu_abs_mean", "sigma_over_mu_std"}


def test_interpolate_frames_shape_range_and_reproducibility(pipe: CrossFlowPipeline, tmp_path: Path) -> None:
    frames = interpolate(pipe, PROMPT_A, PROMPT_B, num_frames=5, num_steps=STEPS, generator=_seed(0))
    assert frames.shape == (5, 3, 8, 8) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1
    again = interpolate(pipe, PROMPT_A, PROMPT_B, num_frames=5, num_steps=STEPS, generator=_seed(0))
    torch.testing.assert_close(frames, again, rtol=0, atol=0)
    # The shared ε is the one pipe() draws for prompt_a with that seed: frame 0 is prompt_a's own image.
    own = pipe([PROMPT_A], num_steps=STEPS, generator=_seed(0), output_type="pt")
    torch.testing.assert_close(frames[:1], own, rtol=0, atol=1e-5)
    assert adjacent_distances(frames).shape == (4,)

    strip = save_strip(frames, tmp_path / "strip.png")
    with Image.open(strip) as img:
        assert img.size == (5 * (8 + 2) + 2, 8 + 4)
    gif = save_gif(frames, tmp_path / "morph.gif", upscale=4)
    with Image.open(gif) as img:
        assert img.n_frames == 5 and img.size == (32, 32) and img.info.get("loop") == 0


def test_interpolate_modes_and_naive_baseline(pipe: CrossFlowPipeline) -> None:
    slerp = interpolate(pipe, PROMPT_A, PROMPT_B, 3, mode="slerp", num_steps=STEPS, generator=_seed(1))
    naive = interpolate(pipe, PROMPT_A, PROMPT_B, 3, naive=True, num_steps=STEPS, generator=_seed(1))
    assert slerp.shape == naive.shape == (3, 3, 8, 8)
    torch.testing.assert_close(slerp[0], naive[0], rtol=0, atol=1e-5)  # both start from ε_a of seed 1
    with pytest.raises(CrossFlowError, match="num_frames"):
        interpolate(pipe, PROMPT_A, PROMPT_B, num_frames=1)


def test_equal_arc_alphas_equalise_the_steps() -> None:
    # A path x(α) = α³ along one axis: even α put most of the length in the last steps; the arc-length α's
    # put equal length in every step, so the steps' L2 lengths come out equal.
    dense = torch.linspace(0, 1, 401, dtype=torch.float64)
    frames = (dense**3).view(-1, 1, 1, 1)
    alphas = equal_arc_alphas(dense, frames, 5)
    torch.testing.assert_close(alphas, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64) ** (1 / 3),
                               rtol=0, atol=2e-3)
    stepped = (alphas**3).view(-1, 1, 1, 1)
    assert smoothness_ratio(stepped) == pytest.approx(1.0, abs=1e-2)
    # Any order and repeated α's are fine; a path that does not move gives evenly spaced α.
    shuffled = torch.randperm(len(dense), generator=_seed(0))
    torch.testing.assert_close(equal_arc_alphas(dense[shuffled], frames[shuffled], 5), alphas)
    still = equal_arc_alphas(torch.tensor([0.0, 1.0, 0.5]), torch.zeros(3, 1, 2, 2), 3)
    torch.testing.assert_close(still, torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(CrossFlowError, match="one α per frame"):
        equal_arc_alphas(dense[:3], frames[:2], 5)


def test_arc_spacing_renders_the_same_path_at_new_alphas(pipe: CrossFlowPipeline) -> None:
    uniform, even = interpolate_with_alphas(pipe, PROMPT_A, PROMPT_B, 5, num_steps=STEPS, generator=_seed(3))
    torch.testing.assert_close(even, torch.linspace(0, 1, 5))
    frames, alphas = interpolate_with_alphas(pipe, PROMPT_A, PROMPT_B, 5, num_steps=STEPS, generator=_seed(3),
                                             spacing="arc", arc_rounds=2)
    assert frames.shape == uniform.shape and alphas[0] == 0 and alphas[-1] == 1
    assert bool((alphas[1:] >= alphas[:-1]).all())
    # The ends are the same images: one noise draw for every round, so arc frames lie on the uniform path.
    torch.testing.assert_close(frames[[0, -1]], uniform[[0, -1]], rtol=0, atol=1e-5)
    torch.testing.assert_close(interpolate(pipe, PROMPT_A, PROMPT_B, 5, num_steps=STEPS, generator=_seed(3),
                                           spacing="arc", arc_rounds=2), frames, rtol=0, atol=0)
    # The naive baseline keeps its two draws across rounds too.
    naive, _ = interpolate_with_alphas(pipe, PROMPT_A, PROMPT_B, 5, naive=True, num_steps=STEPS,
                                       generator=_seed(3), spacing="arc")
    torch.testing.assert_close(naive[[0, -1]], interpolate(pipe, PROMPT_A, PROMPT_B, 5, naive=True,
                               num_steps=STEPS, generator=_seed(3))[[0, -1]], rtol=0, atol=1e-5)
    with pytest.raises(CrossFlowError, match="spacing"):
        interpolate(pipe, PROMPT_A, PROMPT_B, 3, spacing="log")  # type: ignore[arg-type]


def test_interpolate_on_a_coarse_ve_grid(tiny_model_config_session: ModelConfig) -> None:
    config = copy.deepcopy(tiny_model_config_session)
    config.variational.grid_downsample = 2
    coarse = _pipeline(config)
    assert text_posterior(coarse, PROMPT_A).mu.shape == (1, 3, 4, 4)
    frames = interpolate(coarse, PROMPT_A, PROMPT_B, num_frames=3, num_steps=2, generator=_seed(0))
    assert frames.shape == (3, 3, 8, 8)


def test_arithmetic_lines_up_with_plain_sampling(pipe: CrossFlowPipeline) -> None:
    images = arithmetic(pipe, f"{PROMPT_A} + square - circle", num_seeds=3, num_steps=STEPS, generator=_seed(4))
    assert images.shape == (3, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
    # One term with weight 1 is the prompt itself: the same seeds give pipe()'s own images.
    alone = arithmetic(pipe, [(1.0, PROMPT_A)], num_seeds=3, num_steps=STEPS, generator=_seed(4))
    own = pipe([PROMPT_A] * 3, num_steps=STEPS, generator=_seed(4), output_type="pt")
    torch.testing.assert_close(alone, own, rtol=0, atol=1e-5)
    assert not torch.allclose(images, own)


def test_noise_baseline_is_refused(tiny_model_config_session: ModelConfig) -> None:
    config = copy.deepcopy(tiny_model_config_session)
    config.kind = "noise_baseline"
    text_encoder = FrozenTextEncoder(config.text_encoder)
    baseline = CrossFlowPipeline(config, build_model(config, text_dim=text_encoder.hidden_size).eval(), text_encoder)
    assert not isinstance(baseline.model, CrossFlowModel)
    for call in (lambda: text_posterior(baseline, PROMPT_A),
                 lambda: interpolate(baseline, PROMPT_A, PROMPT_B, num_steps=1),
                 lambda: arithmetic(baseline, "red + blue", num_steps=1)):
        with pytest.raises(CrossFlowError, match="noise_baseline") as err:
            call()
        assert "\n" not in str(err.value)
