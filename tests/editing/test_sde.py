"""crossflow.editing.sde: the SDE with the VE's own noise, ODE inversion, cycle-consistent encoding, SDEdit."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch

from crossflow import flow
from crossflow.config import ModelConfig
from crossflow.editing.sde import (
    CycleCode,
    cycle_decode,
    cycle_edit,
    cycle_encode,
    edit_sdedit,
    encode_images,
    invert_image,
    invert_ode,
    latent_posterior,
    restore_clipped,
    sample_sde,
    sde_generate,
    sde_step,
    sde_step_noise,
    sdedit,
    step_grid,
)
from crossflow.errors import CrossFlowError
from crossflow.flow import SIGMA_MIN
from crossflow.inference import CrossFlowPipeline, to_pil
from crossflow.models.crossflow import CrossFlowModel
from crossflow.models.flow_model import build_model
from crossflow.models.text_encoder import FrozenTextEncoder
from crossflow.sampling import VelocityFn, classifier_free_guidance, integrate

PROMPTS = ["a small red circle in the top left", "a large blue square"]
OTHER = ["a large green triangle in the center", "a small yellow circle at the bottom"]
K = 1 - SIGMA_MIN


def _seed(value: int) -> torch.Generator:
    return torch.Generator().manual_seed(value)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().item()


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def pipe(tiny_model_config_session: ModelConfig, random_pipeline) -> CrossFlowPipeline:
    """The tiny config with random weights, moved off the zero init (as tests/test_inference.py does) so the
    flow's output — and its CFG indicator — is not trivially zero."""
    config = copy.deepcopy(tiny_model_config_session)
    return random_pipeline(config)


@pytest.fixture(scope="module")
def posterior(pipe: CrossFlowPipeline) -> tuple[torch.Tensor, torch.Tensor]:
    return latent_posterior(pipe, PROMPTS)


@pytest.fixture(scope="module")
def x1(pipe: CrossFlowPipeline) -> torch.Tensor:
    """A source image latent in the pixel codec's [-1, 1]."""
    return torch.tanh(torch.randn(2, *pipe.config.latent_shape, generator=_seed(7)))


def _draw(mu: torch.Tensor, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    return mu + sigma * torch.randn(mu.shape, generator=_seed(seed), dtype=mu.dtype)


def test_posterior_is_in_the_latent_shape_and_positive(
    pipe: CrossFlowPipeline, posterior: tuple[torch.Tensor, torch.Tensor]
) -> None:
    mu, sigma = posterior
    assert mu.shape == sigma.shape == (2, *pipe.config.latent_shape)
    assert bool((sigma > 0).all()) and sigma.mean() > 0.05  # noise big enough to carry an encoding


def test_step_grid_restricts_the_full_grid() -> None:
    torch.testing.assert_close(step_grid(50), torch.linspace(0, 1, 51), rtol=0, atol=0)
    assert len(step_grid(50, 0.3)) - 1 == 35  # (1 − t0)·num_steps steps
    assert step_grid(50, 0.3)[0].item() == pytest.approx(0.3) and step_grid(50, 0.31)[1].item() == pytest.approx(0.32)
    assert len(step_grid(50, 1.0)) == 1


def test_sde_step_is_the_formula_and_euler_at_rho_zero() -> None:
    g = _seed(0)
    x, v, mu, xi = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(4))
    sigma = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) + 0.1
    t, t_next = 0.3, 0.35
    for rho in (0.0, 0.4, 1.0):
        # The form: land on the path of (ẑ_image, z_text') with z_text' = μ + σ·(√(1−ρ)·ε̂ + √ρ·ξ).
        z_image_hat, z_text_hat = flow.split_velocity(x, v, t)
        eps_hat = (z_text_hat - mu) / sigma
        z_text_new = mu + sigma * (math.sqrt(1 - rho) * eps_hat + math.sqrt(rho) * xi)
        expected = t_next * z_image_hat + (1 - K * t_next) * z_text_new
        torch.testing.assert_close(sde_step(x, v, t, t_next, mu, sigma, rho, xi), expected, rtol=0, atol=1e-12)
    assert torch.equal(sde_step(x, v, t, t_next, mu, sigma, 0.0, xi), x + (t_next - t) * v)
    # Per-sample times broadcast, and sde_step_noise inverts the step in ξ.
    tb = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_next = sde_step(x, v, tb, tb + 0.05, mu, sigma, 0.3, xi)
    torch.testing.assert_close(sde_step_noise(x, v, tb, tb + 0.05, x_next, mu, sigma, 0.3), xi, rtol=0, atol=1e-9)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_rho_zero_is_euler(pipe: CrossFlowPipeline, posterior: tuple[torch.Tensor, torch.Tensor],
                           guidance_scale: float) -> None:
    mu, sigma = posterior
    x0 = _draw(mu, sigma, 1)
    vf = pipe.velocity_fn(guidance_scale)
    sde = sample_sde(vf, x0, mu, sigma, 0.0, num_steps=20, generator=_seed(2), return_noises=True)
    torch.testing.assert_close(sde.x, integrate(vf, x0, 20).x, rtol=0, atol=1e-5)
    assert sde.noises is not None and len(sde.noises) == 20 and all(not n.any() for n in sde.noises)
    # fp64: the same to round-off (here the step is x + h·v exactly).
    model64 = copy.deepcopy(pipe.model).double()
    vf64 = classifier_free_guidance(model64.velocity, guidance_scale)
    x0_64, mu64, sigma64 = x0.double(), mu.double(), sigma.double()
    out64 = sample_sde(vf64, x0_64, mu64, sigma64, 0.0, num_steps=20).x
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, integrate(vf64, x0_64, 20).x, rtol=0, atol=1e-12)


def test_sde_is_seeded_and_replays_its_noises(pipe: CrossFlowPipeline,
                                              posterior: tuple[torch.Tensor, torch.Tensor]) -> None:
    mu, sigma = posterior
    x0, vf = _draw(mu, sigma, 1), pipe.velocity_fn(2.5)
    run = sample_sde(vf, x0, mu, sigma, 0.5, 10, generator=_seed(3), return_noises=True, return_trajectory=True)
    assert torch.equal(run.x, sample_sde(vf, x0, mu, sigma, 0.5, 10, generator=_seed(3)).x)
    assert not torch.allclose(run.x, sample_sde(vf, x0, mu, sigma, 0.5, 10, generator=_seed(4)).x)
    assert not torch.allclose(run.x, integrate(vf, x0, 10).x)
    assert run.noises is not None and run.trajectory is not None and len(run.trajectory) == 11
    assert torch.equal(sample_sde(vf, x0, mu, sigma, 0.5, 10, noises=run.noises).x, run.x)
    with pytest.raises(ValueError, match="noises for 10 steps"):
        sample_sde(vf, x0, mu, sigma, 0.5, 10, noises=run.noises[:-1])


@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0])
def test_cycle_encoding_reconstructs_and_edits(pipe: CrossFlowPipeline, posterior: tuple[torch.Tensor, torch.Tensor],
                                               x1: torch.Tensor, rho: float) -> None:
    mu, sigma = posterior
    vf = pipe.velocity_fn(2.5)
    code = cycle_encode(vf, x1, mu, sigma, rho, num_steps=50, generator=_seed(5))
    assert isinstance(code, CycleCode) and len(code.noises) == 50 and not code.noises[-1].any()
    rec = sample_sde(vf, code.x_start, mu, sigma, rho, 50, noises=code.noises, residual=code.residual).x
    assert rec.dtype == torch.float32
    assert _mse(rec, x1) < 1e-5
    assert torch.equal(cycle_decode(vf, code, mu, sigma, rho), rec)
    # Another prompt's posterior (an edit) replays the same noises to a different image.
    mu_other, sigma_other = latent_posterior(pipe, OTHER)
    assert _mse(cycle_decode(vf, code, mu_other, sigma_other, rho), x1) > 1e-3


def test_cycle_encoding_from_an_intermediate_time(pipe: CrossFlowPipeline,
                                                  posterior: tuple[torch.Tensor, torch.Tensor],
                                                  x1: torch.Tensor) -> None:
    mu, sigma = posterior
    vf = pipe.velocity_fn(1.0)
    code = cycle_encode(vf, x1, mu, sigma, 0.5, num_steps=50, generator=_seed(5), t_start=0.4)
    assert len(code.noises) == 30
    assert _mse(cycle_decode(vf, code, mu, sigma, 0.5), x1) < 1e-5


def test_invert_then_generate_returns_close_to_the_start(pipe: CrossFlowPipeline, x1: torch.Tensor) -> None:
    vf = pipe.velocity_fn(1.0)  # (guided inversion is the same code with the CFG callable: see test_pipeline_wrappers)
    errors = {n: _mse(integrate(vf, invert_ode(vf, x1, n), n).x, x1) for n in (10, 50, 200)}
    assert errors[200] < errors[50] < errors[10]
    assert errors[200] < 1e-4
    heun = invert_ode(vf, x1, 50, solver="heun")
    assert _mse(integrate(vf, heun, 50, solver="heun").x, x1) < errors[50]
    # fixed-point: the exact inverse of forward Euler's step, so the round trip closes up to the iteration residual.
    fixed = invert_ode(vf, x1, 10, solver="fixed-point", iters=30)
    assert _mse(integrate(vf, fixed, 10).x, x1) < 1e-12 < errors[200]
    assert _mse(integrate(vf, invert_ode(vf, x1, 10, solver="fixed-point", iters=2), 10).x, x1) < errors[10]
    assert _mse(integrate(vf, invert_ode(vf, x1, 10, solver="fixed-point", iters=20, damping=1.0), 10).x, x1) < 1e-12
    for bad in ({"iters": -1}, {"damping": 0.0}, {"damping": 1.5}):
        with pytest.raises(ValueError, match="iters must be >= 0 and damping"):
            invert_ode(vf, x1, 10, solver="fixed-point", **bad)
    # Partial inversion to t_end, then forward from t_end over the same grid.
    z = invert_ode(vf, x1, 50, t_end=0.5)
    assert _mse(_forward(vf, z, 0.5), x1) < errors[10]


def _forward(vf: VelocityFn, x: torch.Tensor, t0: float, num_steps: int = 50) -> torch.Tensor:
    """Forward Euler from t0 over step_grid (what sdedit's ODE branch does from a given x_t0)."""
    grid = step_grid(num_steps, t0)
    for i in range(len(grid) - 1):
        x = x + (grid[i + 1] - grid[i]) * vf(x, grid[i].expand(x.shape[0]))
    return x


class _Counting:
    def __init__(self, vf: VelocityFn) -> None:
        self.vf, self.calls = vf, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.vf(x, t)


def test_sdedit_ends_and_cost(pipe: CrossFlowPipeline, posterior: tuple[torch.Tensor, torch.Tensor],
                              x1: torch.Tensor) -> None:
    mu, sigma = posterior
    vf = pipe.velocity_fn(2.5)
    z_new = _draw(mu, sigma, 11)
    for method in ("ode", "sde"):
        assert torch.equal(sdedit(vf, x1, z_new, 1.0, method=method, mu=mu, sigma=sigma), x1)
    assert torch.equal(sdedit(vf, x1, z_new, 0.0, 20), integrate(vf, z_new, 20).x)
    torch.testing.assert_close(sdedit(vf, x1, z_new, 0.0, 20, "sde", mu, sigma, 0.5, _seed(1)),
                               sample_sde(vf, z_new, mu, sigma, 0.5, 20, generator=_seed(1)).x, rtol=0, atol=0)
    counted = _Counting(vf)
    edited = sdedit(counted, x1, z_new, 0.3, 50)
    assert counted.calls == 35 and edited.shape == x1.shape
    # A late start stays closer to the source than an early one.
    assert _mse(sdedit(vf, x1, z_new, 0.9), x1) < _mse(sdedit(vf, x1, z_new, 0.2), x1)


@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_noise_mix_keeps_the_posterior_marginal(rho: float) -> None:
    """Oracle velocity for known pairs: ẑ_text is an exact posterior draw (ε̂ ~ N(0, I)), so the re-drawn
    z_text' must again be N(μ, σ²), correlated √(1 − ρ) with the old draw, and x' on the new pair's path."""
    n = 20000
    g = _seed(0)
    mu = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
    sigma = torch.tensor([0.3, 1.0, 0.05, 2.0], dtype=torch.float64).view(1, 1, 2, 2)
    z_image = torch.randn(1, 1, 2, 2, generator=g, dtype=torch.float64).expand(n, -1, -1, -1)
    mu, sigma = mu.expand(n, -1, -1, -1), sigma.expand(n, -1, -1, -1)
    eps = torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
    z_text = mu + sigma * eps
    t, t_next = 0.4, 0.45
    x = flow.path_sample(z_text, z_image, torch.full((n,), t, dtype=torch.float64))
    v = flow.target_velocity(z_text, z_image)
    xi = torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
    x_next = sde_step(x, v, t, t_next, mu, sigma, rho, xi)
    z_text_new = (x_next - t_next * z_image) / (1 - K * t_next)  # ẑ_image is z_image: solve the path for z_text'
    eps_new = (z_text_new - mu) / sigma
    assert eps_new.mean(0).abs().max() < 0.05  # mean μ: 5 standard errors of √(1/n) ≈ 0.007 is 0.035
    assert (eps_new.std(0) - 1).abs().max() < 0.03  # std σ
    corr = (eps * eps_new).mean(0)
    assert (corr - math.sqrt(1 - rho)).abs().max() < 0.05
    # At t' = 1 the injected noise is weighted by σ_min: the step is Euler up to σ_min·Δ.
    x_end = sde_step(x, v, t, 1.0, mu, sigma, rho, xi)
    assert (x_end - (x + (1 - t) * v)).abs().max() < 10 * SIGMA_MIN * (sigma.max() * xi.abs().max() + 10)


def test_bad_arguments(pipe: CrossFlowPipeline, posterior: tuple[torch.Tensor, torch.Tensor],
                       x1: torch.Tensor) -> None:
    mu, sigma = posterior
    vf = pipe.velocity_fn(1.0)
    for rho in (-0.1, 1.5):
        with pytest.raises(ValueError, match="rho"):
            sample_sde(vf, x1, mu, sigma, rho, 2)
        with pytest.raises(ValueError, match="rho"):
            sde_step(x1, x1, 0.0, 0.5, mu, sigma, rho, x1)
        with pytest.raises(CrossFlowError, match="rho"):
            sde_generate(pipe, PROMPTS, rho=rho, num_steps=1)
    with pytest.raises(ValueError, match="sigma > 0"):
        cycle_encode(vf, x1, mu, sigma * (torch.rand_like(sigma) > 0.1), 0.5, 2)
    with pytest.raises(ValueError, match="sigma > 0"):
        cycle_encode(vf, x1, mu, -sigma, 0.5, 2)
    with pytest.raises(ValueError, match="rho > 0"):
        cycle_encode(vf, x1, mu, sigma, 0.0, 2)
    with pytest.raises(ValueError, match="shape"):
        sample_sde(vf, x1, mu[:1], sigma[:1], 0.5, 2)
    for t0 in (-0.1, 1.5):
        with pytest.raises(ValueError, match="t0"):
            sdedit(vf, x1, mu, t0)
        with pytest.raises(CrossFlowError, match="t0"):
            edit_sdedit(pipe, x1, OTHER, t0)
    with pytest.raises(ValueError, match="mu and sigma"):
        sdedit(vf, x1, mu, 0.5, method="sde")
    with pytest.raises(ValueError, match="solver"):
        invert_ode(vf, x1, 2, solver="midpoint")  # type: ignore[arg-type]
    with pytest.raises(CrossFlowError, match="latents"):
        cycle_edit(pipe, x1[:1], PROMPTS, OTHER, num_steps=2)


def test_pipeline_wrappers(pipe: CrossFlowPipeline, x1: torch.Tensor) -> None:
    # ρ = 0 is the pipeline's own sampler, draw for draw.
    z_text = pipe.encode_prompts(PROMPTS, generator=_seed(0))
    plain = pipe.generate_latents(z_text, 10, 2.5)
    assert torch.equal(sde_generate(pipe, PROMPTS, 0.0, 10, 2.5, _seed(0)), plain)
    stochastic = sde_generate(pipe, PROMPTS, 0.5, 10, 2.5, _seed(0))
    assert torch.equal(stochastic, sde_generate(pipe, PROMPTS, 0.5, 10, 2.5, _seed(0)))
    assert not torch.allclose(stochastic, plain)
    # No edit gives the source back; another prompt edits it.
    assert _mse(cycle_edit(pipe, x1, PROMPTS, PROMPTS, 0.5, 50, 2.5, _seed(1)), x1) < 1e-5
    assert _mse(cycle_edit(pipe, x1, PROMPTS, OTHER, 0.5, 20, 2.5, _seed(1)), x1) > 1e-3
    assert torch.equal(edit_sdedit(pipe, x1, OTHER, 1.0), x1)
    assert edit_sdedit(pipe, x1, OTHER, 0.5, "sde", 0.5, generator=_seed(2), num_steps=10).shape == x1.shape
    # Images (PIL) go through the codec; tensors are latents.
    images = to_pil(pipe.codec.decode(x1))
    from_pil = invert_image(pipe, images, num_steps=5)
    from_latents = invert_image(pipe, pipe.codec.encode(pipe.codec.decode(x1)), num_steps=5)
    torch.testing.assert_close(from_pil, from_latents, rtol=0, atol=0.02)


def test_coarse_ve_grid_draws_block_constant_noise(tiny_model_config_session: ModelConfig, x1: torch.Tensor) -> None:
    """With grid_downsample f = 2 the wrappers draw ε and ξ on the VE's 4×4 grid, as prepare_source draws ε."""
    config = copy.deepcopy(tiny_model_config_session)
    config.variational.grid_downsample = 2
    with torch.random.fork_rng():
        torch.manual_seed(0)
        text_encoder = FrozenTextEncoder(config.text_encoder)
        coarse = CrossFlowPipeline(config, CrossFlowModel(config, text_dim=text_encoder.hidden_size).eval(), text_encoder)
    z_text = coarse.encode_prompts(PROMPTS, generator=_seed(0))
    assert torch.equal(sde_generate(coarse, PROMPTS, 0.0, 4, 1.0, _seed(0)), coarse.generate_latents(z_text, 4, 1.0))
    assert _mse(cycle_edit(coarse, x1, PROMPTS, PROMPTS, 0.5, 10, 1.0, _seed(1)), x1) < 1e-5


def test_noise_baseline_is_refused(tiny_model_config_session: ModelConfig, x1: torch.Tensor) -> None:
    config = copy.deepcopy(tiny_model_config_session)
    config.kind = "noise_baseline"
    text_encoder = FrozenTextEncoder(config.text_encoder)
    baseline = CrossFlowPipeline(config, build_model(config, text_dim=text_encoder.hidden_size).eval(), text_encoder)
    for call in (lambda: latent_posterior(baseline, PROMPTS),
                 lambda: sde_generate(baseline, PROMPTS, num_steps=1),
                 lambda: invert_image(baseline, x1, num_steps=1),
                 lambda: edit_sdedit(baseline, x1, OTHER, 0.5, num_steps=1),
                 lambda: cycle_edit(baseline, x1, PROMPTS, OTHER, num_steps=1)):
        with pytest.raises(CrossFlowError, match="noise_baseline") as err:
            call()
        assert "\n" not in str(err.value)


def test_ode_inversion_and_regeneration_keep_a_shapes_images_attributes(
    tiny_model_config_session: ModelConfig, random_pipeline
) -> None:
    """The issue's reconstruction check on the mechanics: shapes images (every shape, size and position, the
    evaluator's 32 px) inverted to z_text with the ODE and integrated forward again read the same four attributes.
    On a trained model the sources are its own generated images (bench/latent_navigation.py, part inversion)."""
    from crossflow.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, ShapeAttributes, render
    from crossflow.eval.shapes import measure

    config = copy.deepcopy(tiny_model_config_session)
    config.codec.image_size = 32
    pipe = random_pipeline(config)
    cells = [(shape, size, position) for shape in SHAPES for size in SIZES for position in list(POSITIONS)[:2]]
    colors = list(COLORS)
    combos = [ShapeAttributes(shape, colors[i % len(colors)], size, position)
              for i, (shape, size, position) in enumerate(cells)]
    images = [render(a) for a in combos]
    latents = encode_images(pipe, images)
    z_text = invert_image(pipe, latents, num_steps=50)
    with pipe.eval_mode():
        regenerated = pipe.generate_latents(z_text, 50, 1.0)
    decoded = pipe.codec.decode(regenerated).float()
    # As images: invert_image first gives the entries on the range's bounds the model's values beyond them
    # (restore_clipped), which decoding clips again.
    assert _mse(decoded, pipe.codec.decode(latents).float()) < 1e-3
    for attrs, image in zip(combos, decoded, strict=True):
        assert measure(image) == attrs.to_dict()


def test_restore_clipped_fills_only_entries_on_a_bound_with_the_models_estimate() -> None:
    """A data-prediction flow whose image estimate is a fixed m: entries at a bound take m's value where m lies beyond
    it, stay on the bound where m does not; entries inside the range are never touched."""
    m = torch.tensor([-1.3, -0.5, 0.2, 1.4, 0.9, -0.2]).view(1, 1, 2, 3)
    latents = torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0, 0.7]).view(1, 1, 2, 3)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flow.velocity_from_data(m.expand_as(x), x, t)

    restored = restore_clipped(velocity, latents, (-1.0, 1.0), t=0.9, iters=1)
    torch.testing.assert_close(restored, torch.tensor([-1.3, -1.0, 0.0, 1.4, 1.0, 0.7]).view(1, 1, 2, 3))
    torch.testing.assert_close(restore_clipped(velocity, restored, (-1.0, 1.0), t=0.9, iters=5), restored)  # fixed point
    assert restore_clipped(velocity, latents, iters=0) is latents
    inside = latents.clamp(-0.99, 0.99)
    assert restore_clipped(velocity, inside) is inside, "nothing on a bound: nothing to do"
    for bad in ({"iters": -1}, {"t": 1.5}):
        with pytest.raises(ValueError, match="iters must be >= 0 and t in"):
            restore_clipped(velocity, latents, **bad)  # type: ignore[arg-type]


def test_invert_image_restores_clipped_entries_unless_asked_not_to(pipe: CrossFlowPipeline, x1: torch.Tensor) -> None:
    clipped = x1.clamp(-0.5, 0.5) * 2  # half the entries on a bound, as a saturated image's
    vf = pipe.velocity_fn(1.0)
    with pipe.eval_mode():
        plain = invert_ode(vf, clipped, 5)
        restored = invert_ode(vf, restore_clipped(vf, clipped, sigma_min=pipe.config.sigma_min), 5)
    torch.testing.assert_close(invert_image(pipe, clipped, num_steps=5, restore=False), plain, rtol=0, atol=0)
    torch.testing.assert_close(invert_image(pipe, clipped, num_steps=5), restored, rtol=0, atol=0)
    assert not torch.allclose(plain, restored)
