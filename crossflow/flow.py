"""Noise-free cross-modal flow matching: the probability path, its target, time sampling, losses.

Pure tensor math, no Lightning. Convention: t = 0 is the text latent ``z_text`` and t = 1 the image
latent ``z_image`` (Liu et al., "Flowing from Words to Pixels", arXiv 2412.15213, Sec. 3 / Eq. 1-2,
with the optimal-transport path of Lipman et al. 2023, Eq. 20-23, where the *source* is z_text instead
of Gaussian noise).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

SIGMA_MIN = 1e-5

TimeSampling = Literal["uniform", "logit_normal"]
Prediction = Literal["velocity", "data"]


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample time (B,) against a latent (B, ...)."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def path_sample(
    z_text: torch.Tensor, z_image: torch.Tensor, t: torch.Tensor, sigma_min: float = SIGMA_MIN
) -> torch.Tensor:
    """x_t = t·z_image + (1 − (1 − σ_min)·t)·z_text: the point at time t on the straight path."""
    t = _expand(t, z_image)
    return t * z_image + (1 - (1 - sigma_min) * t) * z_text


def target_velocity(z_text: torch.Tensor, z_image: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """v* = d x_t / dt = z_image − (1 − σ_min)·z_text: constant along the path."""
    return z_image - (1 - sigma_min) * z_text


def split_velocity(
    x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float, sigma_min: float = SIGMA_MIN
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two endpoints a velocity prediction implies at x_t: (ẑ_image, ẑ_text), the exact inverse of
    :func:`path_sample` / :func:`target_velocity`.

    With k = 1 − σ_min, x_t = t·z_image + (1 − k·t)·z_text and v = z_image − k·z_text, so
    x_t − t·v = t·z_image + z_text − k·t·z_text − t·z_image + k·t·z_text = z_text, and then
    z_image = v + k·z_text. Both are linear and well conditioned for every t ∈ [0, 1] (no division),
    so they hold for any velocity, exact or predicted.
    """
    t = _expand(t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=x_t.dtype, device=x_t.device), x_t)
    z_text_hat = x_t - t * v
    z_image_hat = v + (1 - sigma_min) * z_text_hat
    return z_image_hat, z_text_hat


def velocity_from_data(
    x_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sigma_min: float = SIGMA_MIN, min_gap: float = 0.05
) -> torch.Tensor:
    """The velocity implied by a prediction x̂ of the endpoint z_image: v = (x̂ − (1 − σ_min)·x_t) / (1 − (1 − σ_min)·t).

    Solving the path for z_text and substituting into :func:`target_velocity`; exact when x̂ = z_image.
    A network that predicts the *clean image* ("x-prediction", Li & He 2025, "Back to Basics: Let
    Denoising Generative Models Denoise", arXiv 2511.13720) need not reproduce the source's per-pixel
    pattern in its output, which a velocity network must cancel exactly; its loss on this velocity is
    their "v-loss". The gap 1 − (1 − σ_min)·t is clamped at ``min_gap`` (their t-clip) so the weight
    1/gap² of errors stays bounded near t = 1.
    """
    dtype = torch.promote_types(torch.promote_types(x_hat.dtype, x_t.dtype), torch.float32)  # never in bf16
    x_hat, x_t = x_hat.to(dtype), x_t.to(dtype)
    gap = (1 - (1 - sigma_min) * _expand(t, x_t)).clamp(min=min_gap)
    return (x_hat - (1 - sigma_min) * x_t) / gap


def sample_time(
    batch_size: int,
    kind: TimeSampling = "uniform",
    *,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw training times t ∈ (0, 1).

    ``logit_normal`` (SD3, Esser et al. 2024, Eq. 19; the paper's choice) puts little mass near t = 0,
    where a text-to-image sampler *starts*: with a highly structured z_text this can leave the first
    Euler steps untrained (see DESIGN.md, "a throwaway prototype"). ``uniform`` covers [0, 1] evenly.
    ``shift`` s then maps t ↦ s·t / (1 + (s − 1)·t) (SD3's timestep shift, Eq. 23, written for our
    direction): s > 1 moves mass towards the image end t = 1, s < 1 towards the text end, s = 1 is identity.
    """
    if shift <= 0:
        raise ValueError(f"time shift must be positive, got {shift}")
    if kind == "uniform":
        t = torch.rand(batch_size, device=device, generator=generator)
    elif kind == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(batch_size, device=device, generator=generator))
    else:
        raise ValueError(f"unknown time sampling {kind!r}; expected 'uniform' or 'logit_normal'")
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def flow_matching_loss(
    v_pred: torch.Tensor, v_target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between predicted and target velocity (the paper's L_FM).

    With ``weight`` (broadcastable to the latents, e.g. :func:`edge_weights`) the mean is weighted:
    Σ w·(v̂ − v)² / Σ w, so the loss keeps the scale of the plain MSE.
    """
    if weight is None:
        return F.mse_loss(v_pred.float(), v_target.float())
    err = (v_pred.float() - v_target.float()).pow(2)
    w = weight.float().expand_as(err)
    return (w * err).sum() / w.sum()


def edge_weights(z_image: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights 1 + strength·g, g ∈ [0, 1] the target's local contrast (B, 1, H, W).

    g is the morphological gradient (3×3 max − min, largest over channels), divided by its per-sample
    maximum: 1 on the object's outline, 0 on flat areas. A plain MSE spends almost all of its mass on
    the flat background; a 9-px square differs from a 9-px disc in four corner pixels, so the outline
    is where the shapes demo's errors are (docs/experiments.md, round 4).
    """
    if strength < 0:
        raise ValueError(f"edge weight strength must be >= 0, got {strength}")
    x = z_image.detach().float()
    g = (F.max_pool2d(x, 3, stride=1, padding=1) + F.max_pool2d(-x, 3, stride=1, padding=1)).amax(1, keepdim=True)
    g = g / g.flatten(1).amax(1).clamp_min(1e-6).reshape(-1, 1, 1, 1)
    return 1 + strength * g


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ·ε with ε ~ N(0, I): the VE's differentiable sample (Kingma & Welling 2014)."""
    eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)), averaged over *elements* (so its weight does not scale with latent size)."""
    return 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()


def cfg_unconditional_mask(
    batch_size: int, p_uncond: float, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bernoulli(p) mask of samples trained as *unconditional* (indicator = 1) for CFG."""
    return torch.rand(batch_size, device=device, generator=generator) < p_uncond


def roll_unconditional_targets(z_image: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Swap each unconditional sample's image for another unconditional sample's image.

    CrossFlow has no "empty text" to flow from, so the unconditional branch learns to map a text
    latent to an image *unrelated to it*: targets are rolled by one within the unconditional subset
    (paper Sec. 3.3). With fewer than two unconditional samples nothing can be swapped.
    """
    idx = uncond.nonzero(as_tuple=True)[0]
    if idx.numel() < 2:
        return z_image
    out = z_image.clone()
    out[idx] = z_image[idx.roll(1)]
    return out
