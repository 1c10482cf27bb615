"""Stochastic sampling with the VE's own noise, ODE inversion, cycle-consistent encoding and SDEdit.

CrossFlow's flow has no Gaussian to re-inject: its source is the text latent z_text = μ + σ·ε drawn from
the Variational Encoder's posterior N(μ, σ²) (paper Sec. 3.1). The SDE sampler here re-draws part of *that*
ε at every step, so the only randomness is the one the model was trained on. Split of a velocity into its
two endpoints (``crossflow.flow.split_velocity``): with k = 1 − σ_min,

    ẑ_text = x_t − t·v̂,   ẑ_image = v̂ + k·ẑ_text      (exact inverse of x_t = t·z_image + (1 − k·t)·z_text).

Everything takes a bare ``velocity_fn(x, t) -> v`` (x (B, C, H, W), t (B,)); with classifier-free guidance
pass the *guided* callable (``pipe.velocity_fn(w)``): CrossFlow's velocity has no text input, so inverting,
encoding or editing needs only the indicator token (conditional, guided or not) — the prompt enters only
through μ, σ and the starting point. μ, σ are in the image-latent shape (B, C, H, W), σ = exp(log σ²/2) of
the prompt's VE posterior (:func:`latent_posterior`). The ``pipe``-level wrappers at the bottom are thin.

Time grids: every sampler walks the times of ``time_grid(num_steps)`` (uniform on [0, 1]) that lie in
[t_start, 1], t_start first (:func:`step_grid`), so a run that starts at t0 takes ≈ (1 − t0)·num_steps steps
and visits the same times as the full 50-step run from there on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from crossflow import flow
from crossflow.editing.latent_ops import draw_noise, text_posterior, to_latent_shape
from crossflow.errors import CrossFlowError
from crossflow.flow import SIGMA_MIN
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, CrossFlowPipeline
from crossflow.sampling import VelocityFn, time_grid

DEFAULT_RHO = 0.5
"""Default fraction ρ of the text-latent noise re-drawn per step (0 = the ODE / Euler, 1 = all of it)."""
NoiseFn = Callable[[torch.Generator | None], torch.Tensor]
"""Draws one standard-normal tensor shaped like the state (default: i.i.d. per element)."""
EditMethod = Literal["ode", "sde"]
InversionSolver = Literal["euler", "heun", "fixed-point"]
INVERSION_SOLVERS: tuple[str, ...] = ("euler", "heun", "fixed-point")
DEFAULT_FIXED_POINT_ITERS = 10
DEFAULT_FIXED_POINT_DAMPING = 0.5
DEFAULT_RESTORE_T = 0.98
"""Where :func:`restore_clipped` asks the model for its image estimate: near t = 1, where x_t is the image itself."""
DEFAULT_RESTORE_ITERS = 10
"""Iterations of :func:`restore_clipped`: with an x-prediction head at t = 0.98 each moves a clipped entry 40% of the
way to the model's x̂; 10 reach what 3 full x̂ fills do, which already regenerate every demo source (experiments.md)."""


@dataclass
class SdeResult:
    """The outcome of :func:`sample_sde`."""

    x: torch.Tensor
    """The state at t = 1."""
    noises: list[torch.Tensor] | None = None
    """With ``return_noises``: the ξ of every step, in order (pass them back as ``noises`` to replay the run)."""
    trajectory: list[torch.Tensor] | None = None
    """With ``return_trajectory``: the states at every time of :func:`step_grid`, x0 first."""


@dataclass
class CycleCode:
    """What :func:`cycle_encode` records: replaying it with :func:`cycle_decode` (or :func:`sample_sde` with
    ``x0=x_start, noises=noises, residual=residual``) under the same μ, σ, ρ gives back the encoded latent."""

    x_start: torch.Tensor
    """The state at ``t_start`` (for t_start = 0: a draw μ + σ·ε of the source prompt's posterior)."""
    noises: list[torch.Tensor]
    """ξ_i, one per step of :func:`step_grid` (num_steps, t_start); the last one (the step onto t = 1) is zero."""
    residual: torch.Tensor
    """What the last step misses, in latent units, added at t = 1 (see :func:`cycle_encode`)."""
    t_start: float = 0.0
    """Where the code starts."""
    num_steps: int = DEFAULT_NUM_STEPS
    """The grid's step count over the whole of [0, 1]."""


# ---------------------------------------------------------------------------------------------- helpers


def _check_rho(rho: float, error: type[Exception] = ValueError) -> None:
    if not 0.0 <= rho <= 1.0:
        raise error(f"rho (the fraction of text-latent noise re-drawn per step) must be in [0, 1], got {rho}")


def _check_unit_time(name: str, value: float, error: type[Exception] = ValueError) -> None:
    if not 0.0 <= value <= 1.0:
        raise error(f"{name} must be in [0, 1] (0 = the text latent, 1 = the image latent), got {value}")


def _time(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A time as a 0-d tensor (at least float32, float64 for float64 states, as ``sampling.integrate`` keeps
    its grid) or a per-sample (B,) time as (B, 1, ..., 1) in the state's dtype."""
    dtype = torch.promote_types(torch.float32, like.dtype)
    t = t.to(like.device) if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=dtype, device=like.device)
    if t.dim() == 0:
        return t.to(dtype)
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _batch_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A grid time (0-d) -> the (B,) time a velocity_fn takes."""
    return t.expand(x.shape[0]).to(x.device)


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _draw(noise_fn: NoiseFn | None, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    xi = _standard_normal(like, generator) if noise_fn is None else noise_fn(generator)
    if xi.shape != like.shape:
        raise ValueError(f"noise_fn drew a tensor of shape {tuple(xi.shape)}, the state is {tuple(like.shape)}")
    return xi


def step_grid(
    num_steps: int, t_start: float = 0.0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The times of ``time_grid(num_steps)`` in [t_start, 1], with t_start first: t_start = 0 gives the full grid
    (num_steps steps); otherwise ⌈(1 − t_start)·num_steps⌉ steps, the first one partial when t_start is off-grid."""
    _check_unit_time("t_start", t_start)
    grid = time_grid(num_steps, device=device, dtype=dtype)
    # A grid point within a hair of t_start is t_start itself (linspace rounding): never a near-zero step.
    later = grid[grid > t_start + 1e-4 / num_steps]
    return torch.cat([torch.tensor([t_start], device=grid.device, dtype=dtype), later])


# ---------------------------------------------------------------------------------------------- the SDE


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor | float,
    t_next: torch.Tensor | float,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    rho: float,
    xi: torch.Tensor,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """One step t → t' = t + h of the SDE whose noise is the VE's own Gaussian (pure; ``v`` = velocity_fn(x, t)).

    Split v̂ into (ẑ_image, ẑ_text) (``flow.split_velocity``), re-draw a fraction ρ of the text latent's noise,

        z_text' = ẑ_text + (√(1−ρ) − 1)·(ẑ_text − μ) + √ρ·σ·ξ,   ξ ~ N(0, I),

    which is μ + σ·(√(1−ρ)·ε̂ + √ρ·ξ) with ε̂ = (ẑ_text − μ)/σ, written so that it never divides by σ, and land
    on the straight path of the new pair: x' = t'·ẑ_image + (1 − k·t')·z_text' (k = 1 − σ_min). Substituting
    ẑ_image = v̂ + k·ẑ_text and ẑ_text = x − t·v̂ gives the form computed here,

        x' = x + h·v̂ + (1 − k·t')·Δ,   Δ = z_text' − ẑ_text = (√(1−ρ) − 1)·(ẑ_text − μ) + √ρ·σ·ξ:

    - ρ = 0: Δ = 0, so x' = x + h·v̂ — exactly (bit for bit) the Euler step; the SDE contains the paper's sampler.
    - Marginal: if ε̂ ~ N(0, I) (the model recovers a genuine posterior draw), √(1−ρ)·ε̂ + √ρ·ξ is N(0, I) again
      (variances 1 − ρ and ρ add to 1: a variance-preserving mix), so z_text' ~ N(μ, σ²) — every step restarts
      on a pair the model was trained on, only with part of the noise replaced.
    - The injected noise enters x' with the weight (1 − k·t') of z_text on the path: full at the start, σ_min at
      t' = 1 — late steps cannot move the image any more, early ones decide the layout.
    """
    _check_rho(rho)
    t, t_next = _time(t, x), _time(t_next, x)
    _, z_text_hat = flow.split_velocity(x, v, t, sigma_min)
    delta = (math.sqrt(1.0 - rho) - 1.0) * (z_text_hat - mu) + math.sqrt(rho) * sigma * xi
    return x + (t_next - t) * v + (1 - (1 - sigma_min) * t_next) * delta


def sde_step_noise(
    x: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor | float,
    t_next: torch.Tensor | float,
    x_next: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    rho: float,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """The ξ for which :func:`sde_step` (x, v, t → t_next) lands exactly on ``x_next``: solving
    x_next = x + h·v + c·((√(1−ρ) − 1)·(ẑ_text − μ) + √ρ·σ·ξ), c = 1 − k·t_next, for ξ.

    Needs ρ > 0, σ > 0 and c > 0 (t_next < 1 for σ_min → 0); ξ scales like 1/(c·√ρ·σ).
    """
    _check_rho(rho)
    if rho == 0:
        raise ValueError("rho = 0 injects no noise: there is no ξ to solve for (the step is plain Euler)")
    t, t_next = _time(t, x), _time(t_next, x)
    _, z_text_hat = flow.split_velocity(x, v, t, sigma_min)
    c = 1 - (1 - sigma_min) * t_next
    delta = (x_next - x - (t_next - t) * v) / c
    return (delta - (math.sqrt(1.0 - rho) - 1.0) * (z_text_hat - mu)) / (math.sqrt(rho) * sigma)


def _check_posterior(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> None:
    if mu.shape != x.shape or sigma.shape != x.shape:
        raise ValueError(f"mu and sigma must have the state's shape {tuple(x.shape)} (the image-latent shape), "
                         f"got {tuple(mu.shape)} and {tuple(sigma.shape)}")


def sample_sde(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    rho: float = DEFAULT_RHO,
    num_steps: int = DEFAULT_NUM_STEPS,
    t_start: float = 0.0,
    generator: torch.Generator | None = None,
    noises: Sequence[torch.Tensor] | None = None,
    return_noises: bool = False,
    sigma_min: float = SIGMA_MIN,
    *,
    residual: torch.Tensor | None = None,
    noise_fn: NoiseFn | None = None,
    return_trajectory: bool = False,
) -> SdeResult:
    """Integrate the SDE of :func:`sde_step` from x0 at ``t_start`` to t = 1 over :func:`step_grid`.

    ``noises``: the ξ of every step (one tensor per step, x0's shape), used instead of drawing; otherwise ξ is
    drawn from ``generator`` (through ``noise_fn`` if given, e.g. the VE's block-constant noise), and with ρ = 0
    nothing is drawn (the run is the Euler ODE solve). ``residual`` (from :class:`CycleCode`) is added to the
    state after the last step. μ, σ: the prompt's VE posterior in the latent shape; with guidance,
    ``velocity_fn`` is the guided callable (the split into endpoints then uses the guided velocity).
    """
    _check_rho(rho)
    _check_posterior(x0, mu, sigma)
    grid = step_grid(num_steps, t_start, device=x0.device, dtype=torch.promote_types(torch.float32, x0.dtype))
    n = len(grid) - 1
    if noises is not None and len(noises) != n:
        raise ValueError(f"got {len(noises)} noises for {n} steps (num_steps={num_steps}, t_start={t_start})")
    x, trajectory = x0, [x0]
    used: list[torch.Tensor] = []
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        v = velocity_fn(x, _batch_time(t, x))
        if noises is not None:
            xi = noises[i]
            if xi.shape != x.shape:
                raise ValueError(f"noise {i} has shape {tuple(xi.shape)}, the state {tuple(x.shape)}")
        else:
            xi = torch.zeros_like(x) if rho == 0 else _draw(noise_fn, x, generator)
        x = sde_step(x, v, t, t_next, mu, sigma, rho, xi.to(x), sigma_min)
        if return_noises:
            used.append(xi)
        if return_trajectory:
            trajectory.append(x)
    if residual is not None:
        x = x + residual
        if return_trajectory:
            trajectory[-1] = x
    return SdeResult(x, used if return_noises else None, trajectory if return_trajectory else None)


# ---------------------------------------------------------------------------------------------- inversion


def invert_ode(
    velocity_fn: VelocityFn,
    x1: torch.Tensor,
    num_steps: int = DEFAULT_NUM_STEPS,
    t_end: float = 0.0,
    solver: InversionSolver = "euler",
    iters: int = DEFAULT_FIXED_POINT_ITERS,
    damping: float = DEFAULT_FIXED_POINT_DAMPING,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) *backwards* from x1 at t = 1 to ``t_end`` over :func:`step_grid` (num_steps, t_end).

    ``euler``: x ← x − h·v(x, t_next), the slope taken at the current (later) time, 1 NFE per step;
    ``heun``: that as a predictor x̃, then x ← x − h/2·(v(x, t_next) + v(x̃, t)), 2 NFE per step. Forward Euler
    evaluates at the earlier end instead, so the round trip inverse → forward misses by O(h) (O(h²) with heun).
    ``fixed-point``: the exact inverse of forward Euler's step x_late = x + h·v(x, t_early), solved for x by
    ``iters`` damped fixed-point iterations x ← (1 − β)·x + β·(x_late − h·v(x, t_early)), β = ``damping`` halved per
    sample wherever an iterate's residual does not fall (:func:`_fixed_point_step`), from the ``euler`` guess
    (1 + ``iters`` NFE per step); forward Euler on the same grid then returns to x1 up to the residual left. The choice when the regenerated image must match: a trained flow from a narrow text
    posterior expands strongly (h·J_v has eigenvalues well above 1), so the explicit inverses' O(h) error is
    amplified on the way forward, and the undamped iteration (β = 1) diverges there (β contracts for real
    eigenvalues of h·J_v in (−1, 2/β − 1)).
    CrossFlow's velocity takes no text: the inversion needs only the indicator (conditional, guided or not);
    the prompt matters only where the inverted z_text is read as a draw of some posterior.
    """
    if solver not in INVERSION_SOLVERS:
        raise ValueError(f"unknown inversion solver {solver!r}; expected one of {', '.join(INVERSION_SOLVERS)}")
    if iters < 0 or not 0.0 < damping <= 1.0:
        raise ValueError(f"iters must be >= 0 and damping in (0, 1], got {iters} and {damping}")
    grid = step_grid(num_steps, t_end, device=x1.device, dtype=torch.promote_types(torch.float32, x1.dtype))
    x = x1
    for i in range(len(grid) - 1, 0, -1):
        t_late, t_early = grid[i], grid[i - 1]
        h = t_late - t_early
        v = velocity_fn(x, _batch_time(t_late, x))
        if solver == "heun":
            x_pred = x - h * v
            x = x - 0.5 * h * (v + velocity_fn(x_pred, _batch_time(t_early, x)))
            continue
        x_late, x = x, x - h * v
        if solver == "fixed-point":
            x = _fixed_point_step(velocity_fn, x, x_late, h, t_early, iters, damping)
    return x


def restore_clipped(
    velocity_fn: VelocityFn,
    latents: torch.Tensor,
    bounds: tuple[float, float] = (-1.0, 1.0),
    t: float = DEFAULT_RESTORE_T,
    iters: int = DEFAULT_RESTORE_ITERS,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """Give the entries of an image latent that sit on a bound of the data range the values the model would draw there.

    An image file clips: a model whose images overshoot the range (an x-prediction head draws the black background a
    little below −1) is saved with those pixels *at* the bound, and the clipped latent is no image the flow draws. Its
    ODE inverse then lands where the flow is unstable and the regeneration is another image (docs/experiments.md,
    "Inversion of clipped images": forward gain ~10³ at such a z_text against ~3 at a sampled one; rounding to 8 bits
    alone is harmless). A clipped entry says only "at or beyond the bound": ``iters`` times, each one takes the model's
    image estimate ẑ_image at (latents, ``t``) (:func:`crossflow.flow.split_velocity`), kept at or beyond its bound;
    the entries inside the range stay exactly as given. One velocity evaluation per iteration.
    """
    if iters < 0 or not 0.0 <= t <= 1.0:
        raise ValueError(f"iters must be >= 0 and t in [0, 1], got {iters} and {t}")
    low, high = bounds
    at_low, at_high = latents <= low, latents >= high
    if iters == 0 or not (at_low.any() or at_high.any()):
        return latents
    tt = _time(t, latents)
    x = latents
    for _ in range(iters):
        z_image, _ = flow.split_velocity(x, velocity_fn(x, _batch_time(tt, x)), tt, sigma_min)
        x = torch.where(at_low, z_image.clamp(max=low), torch.where(at_high, z_image.clamp(min=high), latents))
    return x


def _fixed_point_step(velocity_fn: VelocityFn, x: torch.Tensor, x_late: torch.Tensor, h: torch.Tensor,
                      t_early: torch.Tensor, iters: int, damping: float) -> torch.Tensor:
    """Solve x + h·v(x, t_early) = x_late for x by damped fixed-point iteration from ``x``, one β per sample.

    Each evaluation of the map G(x) = x_late − h·v(x, t_early) also gives x's residual ‖x − G(x)‖. An iterate whose
    residual did not fall is rejected: its sample halves β and steps again from its last accepted iterate (a guided
    flow is steeper than a plain one, and a β that contracts one sample may overshoot on another). ``iters``
    evaluations; returns each sample's last accepted (lowest-residual) iterate.
    """
    beta = torch.full((x.shape[0],) + (1,) * (x.dim() - 1), damping, dtype=x.dtype, device=x.device)
    kept, kept_g = x, x
    kept_res = torch.full_like(beta, math.inf)
    for _ in range(iters):
        g = x_late - h * velocity_fn(x, _batch_time(t_early, x))
        res = (x - g).flatten(1).norm(dim=1).view_as(beta)
        accept = res < kept_res
        kept, kept_g = torch.where(accept, x, kept), torch.where(accept, g, kept_g)
        kept_res = torch.where(accept, res, kept_res)
        beta = torch.where(accept, beta, beta / 2)
        x = (1 - beta) * kept + beta * kept_g
    return kept


def cycle_encode(
    velocity_fn: VelocityFn,
    x1: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    rho: float = DEFAULT_RHO,
    num_steps: int = DEFAULT_NUM_STEPS,
    generator: torch.Generator | None = None,
    t_start: float = 0.0,
    *,
    noise_fn: NoiseFn | None = None,
    sigma_min: float = SIGMA_MIN,
) -> CycleCode:
    """Encode the image latent x1 into the noises of :func:`sample_sde` that reproduce it exactly (edit-friendly
    inversion: Huberman-Spiegelglas et al. 2024, "An Edit Friendly DDPM Noise Space"; CycleDiffusion, Wu &
    De la Torre 2023).

    Scheme, over the grid t_0 = t_start < … < t_N = 1 of :func:`step_grid`:

    1. Draw *independent* z_text^(i) = μ + σ·ε_i (ε_i from ``generator`` / ``noise_fn``) for i < N and put
       x_{t_i} = path_sample(z_text^(i), x1, t_i); x_{t_N} = x1 itself. Independence across times is what makes
       the noise maps carry the image (the edit-friendly choice): under a perfect model ξ_i ≈ (ε_{i+1} − √(1−ρ)·ε_i)/√ρ,
       standard normal for ρ = 1 and of variance (2 − ρ)/ρ below it.
    2. Steps i < N − 1: ξ_i = :func:`sde_step_noise` — exact, the step from x_{t_i} lands on x_{t_{i+1}}.
    3. The last step (onto t = 1) is handled apart: there the text latent's weight 1 − k·t is σ_min, so solving
       for ξ would divide the model's last-step error by σ_min·√ρ·σ (ξ ~ 1e5, and ill-posed for σ_min = 0). Its
       ξ is set to 0 and what the step misses, r = x1 − sde_step(x_{t_{N−1}}, …, ξ = 0), is stored in latent units
       as ``residual`` and added at t = 1. Replaying with the same μ, σ, ρ is then exact up to rounding;
       under an edit the residual is carried unscaled (the noises are scaled by the new σ).

    Needs ρ > 0 (ρ = 0 has no noise to carry the image) and σ > 0: ξ scales like 1/σ, so a VE with a tiny σ
    (nearly deterministic z_text) gives huge noises that replay exactly but dominate any edit. Costs N NFE,
    each at a known x_{t_i} (the evaluations are independent of one another).
    """
    _check_rho(rho)
    if rho == 0:
        raise ValueError("cycle_encode needs rho > 0: with rho = 0 the sampler injects no noise to carry the image")
    _check_posterior(x1, mu, sigma)
    if not bool((sigma > 0).all()):
        raise ValueError("cycle_encode needs sigma > 0 everywhere: the noises are solved as (…)/(√ρ·σ)")
    _check_unit_time("t_start", t_start)
    if t_start >= 1:
        raise ValueError(f"t_start must be below 1 to leave a step to encode, got {t_start}")
    grid = step_grid(num_steps, t_start, device=x1.device, dtype=torch.promote_types(torch.float32, x1.dtype))
    n = len(grid) - 1
    states = [flow.path_sample(mu + sigma * _draw(noise_fn, x1, generator), x1, _batch_time(grid[i], x1), sigma_min)
              for i in range(n)] + [x1]
    noises: list[torch.Tensor] = []
    residual = torch.zeros_like(x1)
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        v = velocity_fn(states[i], _batch_time(t, x1))
        if i < n - 1:
            noises.append(sde_step_noise(states[i], v, t, t_next, states[i + 1], mu, sigma, rho, sigma_min))
        else:
            xi = torch.zeros_like(x1)
            residual = x1 - sde_step(states[i], v, t, t_next, mu, sigma, rho, xi, sigma_min)
            noises.append(xi)
    return CycleCode(states[0], noises, residual, t_start, num_steps)


def cycle_decode(
    velocity_fn: VelocityFn,
    code: CycleCode,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    rho: float = DEFAULT_RHO,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """Replay a :class:`CycleCode` under the posterior (μ, σ): the source's → its image; another prompt's → the edit."""
    return sample_sde(velocity_fn, code.x_start, mu, sigma, rho, code.num_steps, code.t_start, noises=code.noises,
                      sigma_min=sigma_min, residual=code.residual).x


def sdedit(
    velocity_fn: VelocityFn,
    z_image_source: torch.Tensor,
    z_text_new: torch.Tensor,
    t0: float,
    num_steps: int = DEFAULT_NUM_STEPS,
    method: EditMethod = "ode",
    mu: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    rho: float = DEFAULT_RHO,
    generator: torch.Generator | None = None,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) for the text→image flow: start on the path between the *new* text latent and the
    *source* image, x_t0 = path_sample(z_text_new, z_image_source, t0) = (1 − k·t0)·z_text_new + t0·z_image_source,
    and integrate to t = 1 with Euler (``ode``) or :func:`sample_sde` (``sde``, needs the new prompt's μ, σ).

    t0 trades faithfulness for edit strength: 0 is plain generation from z_text_new, 1 returns the source
    itself (untouched; the path's own end would add σ_min·z_text_new). The steps are those of the
    num_steps grid in [t0, 1] (:func:`step_grid`), so an edit at t0 costs ≈ (1 − t0)·num_steps NFE.
    """
    _check_unit_time("t0", t0)
    if method not in ("ode", "sde"):
        raise ValueError(f"unknown SDEdit method {method!r}; expected 'ode' or 'sde'")
    if z_text_new.shape != z_image_source.shape:
        raise ValueError(f"z_text_new {tuple(z_text_new.shape)} and z_image_source {tuple(z_image_source.shape)} "
                         "must have one shape")
    if method == "sde":
        _check_rho(rho)
        if mu is None or sigma is None:
            raise ValueError("SDEdit with method 'sde' needs the new prompt's posterior mu and sigma")
    if t0 >= 1:
        return z_image_source.clone()
    t = torch.tensor(t0, dtype=torch.promote_types(torch.float32, z_image_source.dtype), device=z_image_source.device)
    x = flow.path_sample(z_text_new, z_image_source, t, sigma_min)
    return complete(velocity_fn, x, t0, num_steps, method, mu, sigma, rho, generator, sigma_min)


def complete(
    velocity_fn: VelocityFn,
    x_t0: torch.Tensor,
    t0: float,
    num_steps: int = DEFAULT_NUM_STEPS,
    method: EditMethod = "ode",
    mu: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    rho: float = DEFAULT_RHO,
    generator: torch.Generator | None = None,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """Integrate an (edited) state x_t0 from t0 to 1 over the num_steps grid's points in [t0, 1]: Euler (``ode``)
    or :func:`sample_sde` (``sde``, with the prompt's μ, σ). The second half of every edit here."""
    if method == "sde":
        if mu is None or sigma is None:
            raise ValueError("completing with method 'sde' needs the prompt's posterior mu and sigma")
        return sample_sde(velocity_fn, x_t0, mu, sigma, rho, num_steps, t0, generator, sigma_min=sigma_min).x
    if method != "ode":
        raise ValueError(f"unknown method {method!r}; expected 'ode' or 'sde'")
    x = x_t0
    grid = step_grid(num_steps, t0, device=x.device, dtype=torch.promote_types(torch.float32, x.dtype))
    for i in range(len(grid) - 1):
        x = x + (grid[i + 1] - grid[i]) * velocity_fn(x, _batch_time(grid[i], x))
    return x


# ---------------------------------------------------------------------------------------------- pipeline level


def _require_crossflow(pipe: CrossFlowPipeline, what: str) -> None:
    if pipe.config.kind == "noise_baseline":
        raise CrossFlowError(f"this model (kind noise_baseline) has no text latent: {what} needs a CrossFlow "
                             "model's VE posterior")


def _check_pipe_args(num_steps: int, guidance_scale: float, rho: float | None = None) -> None:
    if num_steps <= 0:
        raise CrossFlowError(f"num_steps must be positive, got {num_steps}")
    if guidance_scale < 1.0:
        raise CrossFlowError(f"guidance scale must be >= 1 (1 = no guidance), got {guidance_scale}")
    if rho is not None:
        _check_rho(rho, CrossFlowError)


def _prompts(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not p or not p.strip() for p in prompts):
        raise CrossFlowError("prompts must be non-empty strings")
    return prompts


def _ve_noise_fn(pipe: CrossFlowPipeline, mu_grid: torch.Tensor) -> NoiseFn:
    """ξ as the VE draws ε: on its grid, brought up to the latent shape (block-constant with grid_downsample f > 1)."""
    return lambda generator: to_latent_shape(pipe, draw_noise(mu_grid, generator))


@dataclass
class PromptPosterior:
    """Prompts' VE posterior in the image-latent shape, and how to draw noise the way the VE does."""

    mu: torch.Tensor
    sigma: torch.Tensor
    noise_fn: NoiseFn
    """generator -> standard normal noise on the VE's grid, brought to the latent shape."""


def prompt_posterior(pipe: CrossFlowPipeline, prompts: Sequence[str], what: str = "editing") -> PromptPosterior:
    """μ, σ (latent shape) and the VE's noise draw for ``prompts``; ``what`` names the caller in the error a noise
    baseline gets (it has no text latent)."""
    _require_crossflow(pipe, what)
    post = text_posterior(pipe, prompts)
    mu, sigma = post.mu.to(pipe.device), post.sigma.to(pipe.device)
    return PromptPosterior(to_latent_shape(pipe, mu), to_latent_shape(pipe, sigma), _ve_noise_fn(pipe, mu))


def latent_posterior(pipe: CrossFlowPipeline, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (μ, σ) of the VE posterior in the image-latent shape (B, C, H, W), as the samplers here take
    them (``latent_ops.text_posterior`` gives them on the VE's grid). Draws nothing. CrossFlow models only."""
    post = prompt_posterior(pipe, _prompts(prompts), "the SDE sampler")
    return post.mu, post.sigma


def _latents(pipe: CrossFlowPipeline, latents: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    shape = tuple(pipe.config.latent_shape)
    if latents.dim() != 4 or tuple(latents.shape[1:]) != shape:
        raise CrossFlowError(f"expected latents of shape (B, {', '.join(map(str, shape))}), got {tuple(latents.shape)}")
    if batch is not None and latents.shape[0] != batch:
        raise CrossFlowError(f"got {latents.shape[0]} latents for {batch} prompts")
    return latents.to(pipe.device, torch.float32)


@torch.no_grad()
def sde_generate(
    pipe: CrossFlowPipeline,
    prompts: str | Sequence[str],
    rho: float = DEFAULT_RHO,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompts -> image latents by :func:`sample_sde`. z_text is the draw ``pipe(prompts, generator=g)`` makes,
    so ρ = 0 gives that call's latents exactly. Decode with ``pipe.codec.decode``."""
    prompts = _prompts(prompts)
    _check_pipe_args(num_steps, guidance_scale, rho)
    post = prompt_posterior(pipe, prompts, "SDE sampling")
    with pipe.eval_mode():
        x0 = post.mu + post.sigma * post.noise_fn(generator)  # ε first, as prepare_source draws it
        return sample_sde(pipe.velocity_fn(guidance_scale), x0, post.mu, post.sigma, rho, num_steps,
                          generator=generator, sigma_min=pipe.config.sigma_min, noise_fn=post.noise_fn).x


@torch.no_grad()
def invert_image(
    pipe: CrossFlowPipeline,
    images_or_latents: torch.Tensor | Sequence[Image.Image],
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = 1.0,
    solver: InversionSolver = "euler",
    iters: int = DEFAULT_FIXED_POINT_ITERS,
    damping: float = DEFAULT_FIXED_POINT_DAMPING,
    restore: bool = True,
) -> torch.Tensor:
    """PIL images (encoded by ``pipe.codec``) or image latents (a tensor (B, C, H, W)) -> the z_text at t = 0
    that the (guided) ODE maps to them (:func:`invert_ode`; ``iters``, ``damping`` for ``solver="fixed-point"``, whose
    inverse the forward Euler sampler undoes). No prompt: CrossFlow's velocity takes none.

    ``restore``: where the codec's latents have bounds (the pixel codec), entries on a bound are first given the
    model's own values (:func:`restore_clipped`): an image file clips what the model drew beyond the range, and the
    clipped latent has no stable preimage."""
    _require_crossflow(pipe, "inversion")
    _check_pipe_args(num_steps, guidance_scale)
    if isinstance(images_or_latents, torch.Tensor):
        latents = _latents(pipe, images_or_latents)
    else:
        latents = encode_images(pipe, images_or_latents)
    with pipe.eval_mode():
        velocity = pipe.velocity_fn(guidance_scale)
        if restore and pipe.codec.latent_bounds is not None:
            latents = restore_clipped(velocity, latents, pipe.codec.latent_bounds, sigma_min=pipe.config.sigma_min)
        return invert_ode(velocity, latents, num_steps, solver=solver, iters=iters, damping=damping)


def _pil_batch(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> (B, 3, S, S) in [0, 1] (the inverse of ``inference.to_pil`` up to 8-bit rounding)."""
    if not images:
        raise CrossFlowError("no images given")
    for im in images:
        if im.size != (size, size):
            raise CrossFlowError(f"image is {im.size[0]}x{im.size[1]} but the model draws {size}x{size}; "
                                 "resize it first (crossflow prepare does, for training data)")
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_images(pipe: CrossFlowPipeline, images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of the model's size -> image latents (B, C, H, W) through ``pipe.codec`` (the edit sources)."""
    batch = _pil_batch(images, pipe.config.codec.image_size).to(pipe.device)
    return pipe.codec.encode(batch).float()


@torch.no_grad()
def edit_sdedit(
    pipe: CrossFlowPipeline,
    source_latents: torch.Tensor,
    new_prompts: str | Sequence[str],
    t0: float,
    method: EditMethod = "ode",
    rho: float = DEFAULT_RHO,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
    num_steps: int = DEFAULT_NUM_STEPS,
) -> torch.Tensor:
    """:func:`sdedit` of the source latents towards ``new_prompts`` (z_text_new drawn from their posterior)."""
    prompts = _prompts(new_prompts)
    _check_pipe_args(num_steps, guidance_scale, rho)
    _check_unit_time("t0", t0, CrossFlowError)
    if method not in ("ode", "sde"):
        raise CrossFlowError(f"unknown SDEdit method {method!r}; expected 'ode' or 'sde'")
    post = prompt_posterior(pipe, prompts, "SDEdit")
    source = _latents(pipe, source_latents, len(prompts))
    with pipe.eval_mode():
        z_text_new = post.mu + post.sigma * post.noise_fn(generator)
        return sdedit(pipe.velocity_fn(guidance_scale), source, z_text_new, t0, num_steps, method, post.mu, post.sigma,
                      rho, generator, pipe.config.sigma_min)


@torch.no_grad()
def cycle_edit(
    pipe: CrossFlowPipeline,
    source_latents: torch.Tensor,
    source_prompts: str | Sequence[str],
    target_prompts: str | Sequence[str],
    rho: float = DEFAULT_RHO,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
    t_start: float = 0.0,
) -> torch.Tensor:
    """Cycle-consistent edit: :func:`cycle_encode` the source latents under the source prompts' posterior, then
    replay the code under the target prompts' (same guidance both ways). Target = source gives the source back."""
    src, tgt = _prompts(source_prompts), _prompts(target_prompts)
    if len(src) != len(tgt):
        raise CrossFlowError(f"got {len(src)} source prompts and {len(tgt)} target prompts")
    _check_pipe_args(num_steps, guidance_scale, rho)
    if rho == 0:
        raise CrossFlowError("cycle_edit needs rho > 0: with rho = 0 there is no noise to carry the image")
    _check_unit_time("t_start", t_start, CrossFlowError)
    if t_start >= 1:
        raise CrossFlowError(f"t_start must be below 1, got {t_start}")
    post_src, post_tgt = prompt_posterior(pipe, src, "cycle editing"), prompt_posterior(pipe, tgt, "cycle editing")
    source = _latents(pipe, source_latents, len(src))
    velocity_fn = pipe.velocity_fn(guidance_scale)
    with pipe.eval_mode():
        code = cycle_encode(velocity_fn, source, post_src.mu, post_src.sigma, rho, num_steps, generator, t_start,
                            noise_fn=post_src.noise_fn, sigma_min=pipe.config.sigma_min)
        return cycle_decode(velocity_fn, code, post_tgt.mu, post_tgt.sigma, rho, pipe.config.sigma_min)
