"""Text-latent space operations: VE posteriors, prompt interpolation and latent arithmetic.

CrossFlow's flow starts at z_text = μ + σ·ε, drawn from the Variational Encoder's posterior N(μ, σ²)
(paper Sec. 3.1); the paper's latent interpolation and arithmetic experiments move the image by moving
z_text. Everything here acts on the posterior *before* the draw, so the noise ε is under the caller's
control and can be shared between frames or terms:

    a, b = text_posterior(pipe, ["a red circle"]), text_posterior(pipe, ["a blue square"])
    frames = interpolate(pipe, "a red circle", "a blue square", num_frames=11, generator=g)  # (11, 3, S, S)
    save_gif(frames, "morph.gif")
    images = arithmetic(pipe, "a red circle + square - circle", num_seeds=4, generator=g)

Posteriors live on the VE's grid: the image-latent shape (C, H, W), or (C, H/f, W/f) with the VE's
``grid_downsample`` f; ε is drawn on that grid as in training and the sample is brought up to the latent
shape (:func:`to_latent_shape`) just before the flow integrates it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange, repeat

from crossflow.errors import CrossFlowError
from crossflow.inference import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    check_temperature,
    make_grid,
    to_pil,
)
from crossflow.sampling import Solver

# Rounds of re-placing the frames by image-space arc length (spacing="arc"). The x-prediction shapes demo switches
# within one of 11 evenly spaced frames: 2 rounds leave a max/median step ratio of 2.9, 5 rounds 1.55 (docs/results.md
# "Interpolation"; the velocity model needed 2). Each round costs F more renders.
DEFAULT_ARC_ROUNDS = 5
InterpolationMode = Literal["lerp", "slerp"]
INTERPOLATION_MODES: tuple[str, ...] = ("lerp", "slerp")
Spacing = Literal["uniform", "arc"]
SPACINGS: tuple[str, ...] = ("uniform", "arc")
# Below this angle (or this close to π) between two μ's, slerp's 1/sin θ is ill-conditioned: use lerp.
_PARALLEL_EPS = 1e-4


@dataclass
class TextPosterior:
    """The VE's posterior N(μ, σ²) for a batch of prompts, both (B, C, H, W) on the VE's grid."""

    mu: torch.Tensor
    """Mean μ."""
    sigma: torch.Tensor
    """Standard deviation σ = exp(log σ² / 2) (not the log-variance)."""

    def __post_init__(self) -> None:
        if self.mu.shape != self.sigma.shape or self.mu.ndim != 4:
            raise CrossFlowError(
                f"a text posterior needs μ and σ of one shape (B, C, H, W), got {tuple(self.mu.shape)} "
                f"and {tuple(self.sigma.shape)}"
            )

    def __len__(self) -> int:
        return self.mu.shape[0]

    def sample(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """z_text = μ + τ·σ·ε for a given ε (broadcast against μ), on the VE's grid."""
        return self.mu + temperature * self.sigma * eps


# ---------------------------------------------------------------------------------------------- posteriors


def _require_crossflow(pipe: CrossFlowPipeline) -> None:
    if pipe.config.kind == "noise_baseline":
        raise CrossFlowError("this model (kind noise_baseline) has no text latent: interpolation and arithmetic "
                             "need a CrossFlow model's VE posterior")


@torch.no_grad()
def text_posterior(pipe: CrossFlowPipeline, prompts: str | Sequence[str]) -> TextPosterior:
    """Prompts -> the VE's posterior N(μ, σ²) (B, C, H, W) on the VE's grid. CrossFlow models only."""
    _require_crossflow(pipe)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not p or not p.strip() for p in prompts):
        raise CrossFlowError("prompts must be non-empty strings")
    with pipe.eval_mode():  # the VE's dropout (if any) must not perturb μ, σ
        # τ = 0: no ε is drawn, so asking for a posterior never consumes anybody's random stream.
        source = pipe.prepare_source(prompts, temperature=0.0)
    if source.mu is None or source.logvar is None:
        raise CrossFlowError(f"model kind {pipe.config.kind} exposes no VE posterior (μ, log σ²)")
    return TextPosterior(mu=source.mu.float(), sigma=torch.exp(0.5 * source.logvar.float()))


def sigma_stats(posterior: TextPosterior) -> dict[str, float]:
    """Summary of σ against μ's scale: is the trained σ big enough to carry noise (SDE editing, diversity)?

    ``sigma_mean/median/min/max`` over all elements, ``mu_abs_mean`` = mean |μ|, ``mu_std`` = std of μ over
    all elements, and ``sigma_over_mu_std`` = sigma_mean / mu_std (≈ 0: z_text is nearly deterministic).
    """
    sigma, mu = posterior.sigma.float().flatten(), posterior.mu.float().flatten()
    mu_std = mu.std().item() if mu.numel() > 1 else 0.0
    sigma_mean = sigma.mean().item()
    return {
        "sigma_mean": sigma_mean,
        "sigma_median": sigma.median().item(),
        "sigma_min": sigma.min().item(),
        "sigma_max": sigma.max().item(),
        "mu_abs_mean": mu.abs().mean().item(),
        "mu_std": mu_std,
        "sigma_over_mu_std": sigma_mean / mu_std if mu_std > 0 else math.inf,
    }


def to_latent_shape(pipe: CrossFlowPipeline, z: torch.Tensor) -> torch.Tensor:
    """A sample on the VE's grid -> the image-latent shape the flow integrates (identity when f = 1)."""
    return pipe.model.variational.upsample(z)


def draw_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ε ~ N(0, I) shaped like ``like``: the same draw ``pipe(prompts, generator=g)`` makes for a batch of that
    shape, so a seed here and a seed there give the same z_text for the same posterior."""
    if generator is not None and generator.device != like.device:
        raise CrossFlowError(f"generator is on {generator.device}, tensors on {like.device}")
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


@torch.no_grad()
def render_latents(
    pipe: CrossFlowPipeline,
    z_text: torch.Tensor,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    solver: Solver = "euler",
) -> torch.Tensor:
    """z_text (B, C, H, W) on the VE's grid -> images (B, 3, S, S) in [0, 1] on the CPU, in one batch."""
    with pipe.eval_mode():
        z_image = pipe.generate_latents(to_latent_shape(pipe, z_text.to(pipe.device)), num_steps, guidance_scale,
                                        solver)
    return pipe.codec.decode(z_image).float().cpu()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- interpolation


def _check_pair(a: TextPosterior, b: TextPosterior) -> None:
    if a.mu.shape != b.mu.shape:
        raise CrossFlowError(f"cannot interpolate posteriors of shapes {tuple(a.mu.shape)} and {tuple(b.mu.shape)}")


def _alphas(alphas: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    alphas = torch.as_tensor(alphas, dtype=like.dtype, device=like.device).flatten()
    if alphas.numel() == 0:
        raise CrossFlowError("need at least one interpolation weight alpha")
    return alphas


def _lerp(x: torch.Tensor, y: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """(B, ...) , (B, ...) , (F,) -> (F·B, ...) frame-major: row f·B + i is sample i at alphas[f]."""
    w = alphas.view(-1, *([1] * x.ndim))
    return rearrange((1 - w) * x + w * y, "f b ... -> (f b) ...")


def _slerp(x: torch.Tensor, y: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the *directions* of x and y (each sample flattened), with the norm
    interpolated linearly — so the path neither cuts through the low-norm interior (lerp's midpoint of two
    near-orthogonal μ's has ≈ 1/√2 of their norm) nor changes the scale the flow was trained on."""
    xf, yf = x.flatten(1), y.flatten(1)
    nx, ny = xf.norm(dim=1, keepdim=True), yf.norm(dim=1, keepdim=True)
    ux, uy = xf / nx.clamp_min(1e-12), yf / ny.clamp_min(1e-12)
    # θ from half-chord / half-sum: accurate near 0 and π, where acos(u·v) loses all its digits.
    theta = 2 * torch.atan2((ux - uy).norm(dim=1, keepdim=True), (ux + uy).norm(dim=1, keepdim=True))
    a = alphas.view(-1, 1, 1)  # (F, 1, 1) against (B, N)
    sin_theta = torch.sin(theta)
    degenerate = (sin_theta < _PARALLEL_EPS) | (nx < 1e-12) | (ny < 1e-12)  # μ_a ∥ μ_b, or a zero μ
    safe_sin = torch.where(degenerate, torch.ones_like(sin_theta), sin_theta)
    direction = (torch.sin((1 - a) * theta) * ux + torch.sin(a * theta) * uy) / safe_sin
    spherical = ((1 - a) * nx + a * ny) * direction
    linear = (1 - a) * xf + a * yf
    out = torch.where(degenerate, linear, spherical)  # (F, B, N)
    return rearrange(out, "f b n -> (f b) n").reshape(-1, *x.shape[1:])


def interpolate_posteriors(
    a: TextPosterior, b: TextPosterior, alphas: Sequence[float] | torch.Tensor, mode: InterpolationMode = "lerp"
) -> TextPosterior:
    """The posterior at each α: μ(α) by lerp or slerp (:func:`_slerp`; lerp where μ_a ∥ μ_b), σ(α) always
    lerped (σ is a per-element scale, not a direction).

    ``a`` and ``b`` have one batch shape (B, C, H, W) (B = 1 for a pair of prompts); the frames are stacked
    along the batch dimension, frame-major: the result is (F·B, C, H, W), row f·B + i = sample i at alphas[f].
    With B = 1 that is (F, C, H, W), ready for the flow as one batch.
    """
    _check_pair(a, b)
    if mode not in INTERPOLATION_MODES:
        raise CrossFlowError(f"unknown interpolation mode {mode!r}; expected one of {', '.join(INTERPOLATION_MODES)}")
    w = _alphas(alphas, a.mu)
    mu = _lerp(a.mu, b.mu, w) if mode == "lerp" else _slerp(a.mu, b.mu, w)
    return TextPosterior(mu=mu, sigma=_lerp(a.sigma, b.sigma, w))


def shared_noise_latents(
    a: TextPosterior,
    b: TextPosterior,
    alphas: Sequence[float] | torch.Tensor,
    eps: torch.Tensor,
    mode: InterpolationMode = "lerp",
    temperature: float = 1.0,
) -> torch.Tensor:
    """z(α) = μ(α) + τ·σ(α)·ε with ONE ε (shaped like a.mu) for every frame: (F·B, C, H, W), frame-major.

    Each frame is a genuine draw from its interpolated posterior, so the noise scale stays σ(α) all along
    (compare :func:`naive_latents`) and only the prompt content moves between frames.
    """
    if eps.shape != a.mu.shape:
        raise CrossFlowError(f"eps must have the posterior's shape {tuple(a.mu.shape)}, got {tuple(eps.shape)}")
    post = interpolate_posteriors(a, b, alphas, mode)
    return post.sample(repeat(eps, "b ... -> (f b) ...", f=len(post) // len(a)), temperature)


def naive_latents(
    a: TextPosterior,
    b: TextPosterior,
    alphas: Sequence[float] | torch.Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The baseline: lerp of two independent draws z_a = μ_a + σ_a·ε_a, z_b = μ_b + σ_b·ε_b (ε_a drawn first).

    Its noise (1−α)σ_a·ε_a + α·σ_b·ε_b has std √((1−α)²σ_a² + α²σ_b²): with σ_a = σ_b that is √0.5 ≈ 0.71 of
    the endpoints' at α = 0.5, so mid-frames start from a source the flow never saw in training.
    """
    _check_pair(a, b)
    z_a = a.sample(draw_noise(a.mu, generator), temperature)
    z_b = b.sample(draw_noise(b.mu, generator), temperature)
    return _lerp(z_a, z_b, _alphas(alphas, a.mu))


@torch.no_grad()
def interpolate(
    pipe: CrossFlowPipeline,
    prompt_a: str,
    prompt_b: str,
    num_frames: int = 11,
    mode: InterpolationMode = "lerp",
    naive: bool = False,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    solver: Solver = "euler",
    spacing: Spacing = "uniform",
    arc_rounds: int = DEFAULT_ARC_ROUNDS,
) -> torch.Tensor:
    """Frames (F, 3, S, S) in [0, 1] from ``prompt_a`` (α = 0) to ``prompt_b`` (α = 1).

    Default: interpolated posterior with one shared ε (:func:`shared_noise_latents`); frame 0 is then the
    image ``pipe([prompt_a], generator=g)`` gives for the same seed. ``naive=True``: the lerp of two
    independent draws (:func:`naive_latents`, ``mode`` ignored), the baseline to compare against.
    ``spacing``: α evenly spaced (``"uniform"``, one batch of F renders) or at equal image-space steps
    (``"arc"``, :func:`interpolate_with_alphas`, (1 + ``arc_rounds``)·F renders).
    """
    return interpolate_with_alphas(pipe, prompt_a, prompt_b, num_frames, mode, naive, num_steps, guidance_scale,
                                   generator, temperature, solver, spacing, arc_rounds)[0]


@torch.no_grad()
def interpolate_with_alphas(
    pipe: CrossFlowPipeline,
    prompt_a: str,
    prompt_b: str,
    num_frames: int = 11,
    mode: InterpolationMode = "lerp",
    naive: bool = False,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    solver: Solver = "euler",
    spacing: Spacing = "uniform",
    arc_rounds: int = DEFAULT_ARC_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`interpolate`'s frames (F, 3, S, S) and the α of each (F,).

    ``spacing="arc"`` re-parameterises the path by image-space arc length: a flow trained on discrete prompts
    tends to hold one image over most of [0, 1] and change within a short stretch of α, so evenly spaced α
    give a few large jumps between long still runs. Starting from F evenly spaced frames, each of
    ``arc_rounds`` rounds places F new α at equal steps of cumulative L2 distance along every frame rendered
    so far (:func:`equal_arc_alphas`) and renders them; the last round's frames are returned. The noise (shared
    ε, or the naive baseline's two draws) is drawn once, so every round renders points of one path.
    """
    if num_frames < 2:
        raise CrossFlowError(f"num_frames must be at least 2 (the two prompts), got {num_frames}")
    check_temperature(temperature)
    if spacing not in SPACINGS:
        raise CrossFlowError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    if arc_rounds < 0:
        raise CrossFlowError(f"arc_rounds must be >= 0, got {arc_rounds}")
    posterior = text_posterior(pipe, [prompt_a, prompt_b])
    a = TextPosterior(posterior.mu[:1], posterior.sigma[:1])
    b = TextPosterior(posterior.mu[1:], posterior.sigma[1:])
    if naive:  # ε_a then ε_b, the order naive_latents draws them in
        z_a = a.sample(draw_noise(a.mu, generator), temperature)
        z_b = b.sample(draw_noise(b.mu, generator), temperature)

        def latents(alphas: torch.Tensor) -> torch.Tensor:
            return _lerp(z_a, z_b, _alphas(alphas, a.mu))
    else:
        eps = draw_noise(a.mu, generator)

        def latents(alphas: torch.Tensor) -> torch.Tensor:
            return shared_noise_latents(a, b, alphas, eps, mode, temperature)

    alphas = torch.linspace(0.0, 1.0, num_frames)
    frames = render_latents(pipe, latents(alphas), num_steps, guidance_scale, solver)
    seen_alphas, seen_frames = alphas, frames
    for _ in range(arc_rounds if spacing == "arc" else 0):
        alphas = equal_arc_alphas(seen_alphas, seen_frames, num_frames)
        frames = render_latents(pipe, latents(alphas), num_steps, guidance_scale, solver)
        seen_alphas, seen_frames = torch.cat([seen_alphas, alphas]), torch.cat([seen_frames, frames])
    return frames, alphas


def equal_arc_alphas(alphas: torch.Tensor, frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``num_frames`` α's (first and last the path's ends) splitting the path through ``frames`` (rendered at
    ``alphas``, any order, repeats allowed) into steps of equal L2 length, the path taken piecewise linear
    between rendered frames. A path that does not move (length 0) gives evenly spaced α."""
    if alphas.ndim != 1 or len(alphas) != len(frames) or len(alphas) < 2 or num_frames < 2:
        raise CrossFlowError(
            f"need one α per frame (at least 2) and num_frames >= 2, got {tuple(alphas.shape)} α's, "
            f"{len(frames)} frames, num_frames={num_frames}"
        )
    order = alphas.double().argsort(stable=True)
    a, f = alphas.double()[order], frames[order]
    s = torch.cat([torch.zeros(1, dtype=torch.float64), adjacent_distances(f).double().cumsum(0)])
    if s[-1] <= 0:
        return torch.linspace(a[0].item(), a[-1].item(), num_frames, dtype=alphas.dtype)
    targets = torch.linspace(0.0, s[-1].item(), num_frames, dtype=torch.float64)
    hi = torch.searchsorted(s, targets, right=True).clamp(1, len(s) - 1)
    lo = hi - 1
    step = (s[hi] - s[lo]).clamp_min(1e-300)
    w = ((targets - s[lo]) / step).clamp(0.0, 1.0)
    out = a[lo] + w * (a[hi] - a[lo])
    out[0], out[-1] = a[0], a[-1]
    return out.to(alphas.dtype)


def save_strip(images: torch.Tensor, path: str | Path, pad: int = 2) -> Path:
    """Frames (F, 3, S, S) in [0, 1] -> one PNG row, left to right."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(to_pil(images), columns=len(images), pad=pad).save(path)
    return path


def save_gif(images: torch.Tensor, path: str | Path, duration_ms: int = 150, upscale: int = 4) -> Path:
    """Frames (F, 3, S, S) in [0, 1] -> an animated GIF looping forever, each frame shown ``duration_ms``.

    Nearest-neighbour upscaling by ``upscale`` keeps 32-px frames crisp and visible. (PIL merges *identical*
    consecutive frames into one longer frame, so such a GIF has fewer than F frames but the same timing.)
    """
    if upscale < 1 or duration_ms <= 0:
        raise CrossFlowError(f"upscale must be >= 1 and duration_ms > 0, got {upscale} and {duration_ms}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [f.resize((f.width * upscale, f.height * upscale), resample=0) for f in to_pil(images)]  # 0 = NEAREST
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return path


def adjacent_distances(frames: torch.Tensor) -> torch.Tensor:
    """(F, ...) -> (F−1,) L2 distances between consecutive frames (each flattened)."""
    if frames.shape[0] < 2:
        raise CrossFlowError(f"need at least 2 frames, got {frames.shape[0]}")
    return (frames[1:].float() - frames[:-1].float()).flatten(1).norm(dim=1)


def smoothness_ratio(frames: torch.Tensor) -> float:
    """max / median of :func:`adjacent_distances`: 1 = evenly paced, large = one jump carries the change
    (the issue's bar: ≤ 2). A static sequence (median 0) gives 1 if nothing moves, else inf."""
    d = adjacent_distances(frames)
    median, top = d.quantile(0.5).item(), d.max().item()
    if median == 0:
        return 1.0 if top == 0 else math.inf
    return top / median


# ---------------------------------------------------------------------------------------------- arithmetic


def latent_arithmetic(
    terms: Sequence[tuple[float, TextPosterior]],
    base_sigma: torch.Tensor | float | None = None,
    restandardise: bool = True,
) -> TextPosterior:
    """Σ wᵢ·μᵢ over the terms, e.g. [(1, a), (1, b), (−1, c)] for a + (b − c).

    ``restandardise``: rescale the result, per sample over its C·H·W elements, to the mean and std of the
    *first* term's μ. Sums and differences of μ's have a scale no real prompt's μ has (a − c can be near 0,
    a + b is ≈ √2 too large), and the flow was trained only on real μ's.

    σ: ``base_sigma`` if given (a tensor or a constant), else the first term's σ — the result is read as
    "the first prompt, edited", so it keeps that prompt's noise scale (σ's do not add like μ's).
    Batch shapes broadcast (B = 1 terms against B > 1 ones).
    """
    if not terms:
        raise CrossFlowError("latent arithmetic needs at least one term")
    mu = sum(float(w) * post.mu for w, post in terms)
    assert isinstance(mu, torch.Tensor)
    first = terms[0][1]
    if restandardise:
        ref_mean, ref_std = _moments(first.mu)
        mean, std = _moments(mu)
        # A result that is constant (e.g. a − a) has no direction to rescale: it is left at the reference mean.
        mu = (mu - mean) / std.clamp_min(1e-12) * ref_std + ref_mean
    if base_sigma is None:
        sigma = first.sigma
    elif isinstance(base_sigma, torch.Tensor):
        sigma = base_sigma.to(mu)
    else:
        sigma = torch.full_like(mu, float(base_sigma))
    sigma = sigma.expand_as(mu) if sigma.shape != mu.shape else sigma
    return TextPosterior(mu=mu, sigma=sigma)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and std over C·H·W, shaped (B, 1, 1, 1) for broadcasting."""
    flat = x.flatten(1)
    return flat.mean(dim=1).view(-1, 1, 1, 1), flat.std(dim=1).view(-1, 1, 1, 1)


# A "+" anywhere, or a "-" at the start or after whitespace (so "top-left" stays inside a prompt).
_SEPARATOR = re.compile(r"(\+|(?:^|(?<=\s))-)")
_WEIGHTED = re.compile(r"^(?:(\d+(?:\.\d*)?|\.\d+)\s*\*)?\s*(.*)$", re.DOTALL)


def parse_expression(expression: str) -> list[tuple[float, str]]:
    """``"red circle + 1.0*square - circle"`` -> ``[(1.0, "red circle"), (1.0, "square"), (-1.0, "circle")]``.

    Terms are separated by "+" or by "-" preceded by whitespace (or at the start); each term is an optional
    non-negative weight followed by "*", then a prompt (spaces allowed). A leading sign applies to the first term.
    """
    if not expression or not expression.strip():
        raise CrossFlowError("empty latent expression: write e.g. 'red circle + square - circle'")
    parts = _SEPARATOR.split(expression)
    chunks, signs = parts[0::2], [+1.0] + [1.0 if s == "+" else -1.0 for s in parts[1::2]]
    if len(chunks) > 1 and not chunks[0].strip():  # "-circle + square": the leading sign belongs to term 1
        chunks, signs = chunks[1:], signs[1:]
    terms: list[tuple[float, str]] = []
    for i, (sign, chunk) in enumerate(zip(signs, chunks, strict=True)):
        match = _WEIGHTED.match(chunk.strip())
        assert match is not None  # the pattern matches any string
        weight, prompt = match.group(1), " ".join(match.group(2).split())
        if not prompt:
            raise CrossFlowError(f"term {i + 1} of {expression!r} has no prompt")
        if "*" in prompt:
            raise CrossFlowError(f"term {i + 1} of {expression!r} is malformed: write WEIGHT*PROMPT, e.g. 0.5*square")
        terms.append((sign * (float(weight) if weight is not None else 1.0), prompt))
    return terms


@torch.no_grad()
def arithmetic(
    pipe: CrossFlowPipeline,
    expression_or_terms: str | Sequence[tuple[float, str]],
    num_seeds: int = 4,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
    restandardise: bool = True,
    temperature: float = 1.0,
    solver: Solver = "euler",
) -> torch.Tensor:
    """Images (num_seeds, 3, S, S) in [0, 1] of the latent expression, one per noise draw.

    The draws are those ``pipe([prompt] * num_seeds, generator=g)`` makes with the same seed, so the result
    lines up seed for seed with its terms' own images (and a single term with weight 1 reproduces them).
    """
    terms = parse_expression(expression_or_terms) if isinstance(expression_or_terms, str) else list(expression_or_terms)
    if not terms:
        raise CrossFlowError("latent arithmetic needs at least one term")
    if num_seeds < 1:
        raise CrossFlowError(f"num_seeds must be positive, got {num_seeds}")
    check_temperature(temperature)
    prompts = list(dict.fromkeys(p for _, p in terms))  # each distinct prompt encoded once
    posterior = text_posterior(pipe, prompts)
    index = {p: i for i, p in enumerate(prompts)}
    weighted = [(w, TextPosterior(posterior.mu[index[p]:index[p] + 1], posterior.sigma[index[p]:index[p] + 1]))
                for w, p in terms]
    result = latent_arithmetic(weighted, restandardise=restandardise)
    mu = result.mu.expand(num_seeds, -1, -1, -1)
    z = TextPosterior(mu, result.sigma.expand_as(mu)).sample(draw_noise(mu, generator), temperature)
    return render_latents(pipe, z, num_steps, guidance_scale, solver)
