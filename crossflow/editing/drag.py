"""Drag-style point editing on the flow's state at t0, completed by the ODE or the SDE.

After DragSDE in Nie et al. 2023 ("The Blessing of Randomness: SDE Beats ODE in General Diffusion-based Image
Editing"): go part of the way back along the path, move a patch there, and let the sampler repair the seams. For
CrossFlow's text→image flow:

1. x_t0 = path_sample(z_text, z_image_source, t0) = (1 − k·t0)·z_text + t0·z_image_source, z_text drawn from the
   source prompt's VE posterior (k = 1 − σ_min).
2. **Copy**: the (p × p) patch of x_t0 around the source point is pasted around the target point.
3. **Re-noise the source**: where the patch came from (and the target did not cover), x_t0 is replaced by a fresh
   path point, t0·z_fill + (1 − k·t0)·(μ + σ·ξ) with new noise ξ and z_fill the source latent with the patch
   filled by the mean of the ring of latent pixels around it (a crude inpainting that knows nothing about
   objects: on the shapes data, the background; on natural images, a blur the sampler must repair).
4. **Complete** from t0 to 1 with Euler (``ode``) or the VE-noise SDE (``sde``, crossflow/editing/sde.py).

Nie et al.'s argument: the copy and the fill leave x_t0 off the marginal the model was trained on; an SDE
contracts that gap (fresh noise at each step), the ODE carries it to t = 1. Whether that holds here is measured
by bench/latent_navigation.py (``--parts drag``), not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossflow import flow
from crossflow.editing.sde import DEFAULT_RHO, EditMethod, complete, prompt_posterior
from crossflow.errors import CrossFlowError
from crossflow.flow import SIGMA_MIN
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, CrossFlowPipeline
from crossflow.sampling import VelocityFn

Point = tuple[int, int]
"""(x, y) in latent pixels: column, row."""


def _box(point: Point, patch: int, size: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the patch × patch box centred on ``point``; refused when it leaves the latent."""
    x, y = point
    half = patch // 2
    h, w = size
    top, left = y - half, x - half
    if top < 0 or left < 0 or top + patch > h or left + patch > w:
        raise ValueError(f"a {patch}x{patch} patch at (x={x}, y={y}) leaves the {w}x{h} latent")
    return slice(top, top + patch), slice(left, left + patch)


def ring_mean(z: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """Per sample and channel, the mean of the one-pixel ring just outside the box (clipped to the latent)."""
    h, w = z.shape[-2:]
    r0, r1 = max(rows.start - 1, 0), min(rows.stop + 1, h)
    c0, c1 = max(cols.start - 1, 0), min(cols.stop + 1, w)
    outer = z[..., r0:r1, c0:c1]
    inner = z[..., rows, cols]
    count = outer.shape[-1] * outer.shape[-2] - inner.shape[-1] * inner.shape[-2]
    return (outer.sum(dim=(-2, -1)) - inner.sum(dim=(-2, -1))) / max(count, 1)


def drag_state(
    z_image: torch.Tensor,
    z_text: torch.Tensor,
    fresh_text: torch.Tensor,
    source: Sequence[Point],
    target: Sequence[Point],
    t0: float,
    patch: int,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """Steps 1-3 of the module doc: the edited state at t0, per sample (source[i] → target[i]).

    ``fresh_text`` is a second draw μ + σ·ξ from the same posterior (the re-noising); pure tensor code."""
    if not 0.0 <= t0 < 1.0:
        raise ValueError(f"t0 must be in [0, 1), got {t0}")
    if patch <= 0:
        raise ValueError(f"patch must be positive, got {patch}")
    if len(source) != len(z_image) or len(target) != len(z_image):
        raise ValueError(f"need one source and one target point per image ({len(z_image)}), "
                         f"got {len(source)} and {len(target)}")
    t = torch.tensor(t0, dtype=torch.promote_types(torch.float32, z_image.dtype), device=z_image.device)
    x = flow.path_sample(z_text, z_image, t, sigma_min)
    out = x.clone()
    size = tuple(z_image.shape[-2:])
    for i, (src, dst) in enumerate(zip(source, target, strict=True)):
        src_box, dst_box = _box(src, patch, size), _box(dst, patch, size)  # type: ignore[arg-type]
        fill = z_image[i].clone()
        fill[:, src_box[0], src_box[1]] = ring_mean(z_image[i], *src_box)[:, None, None]
        renoised = flow.path_sample(fresh_text[i:i + 1], fill[None], t, sigma_min)[0]
        out[i, :, src_box[0], src_box[1]] = renoised[:, src_box[0], src_box[1]]
        out[i, :, dst_box[0], dst_box[1]] = x[i, :, src_box[0], src_box[1]]  # the target wins where they overlap
    return out


def drag_edit(
    velocity_fn: VelocityFn,
    z_image: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    source: Sequence[Point],
    target: Sequence[Point],
    t0: float = 0.6,
    patch: int = 12,
    method: EditMethod = "sde",
    rho: float = DEFAULT_RHO,
    num_steps: int = 50,
    generator: torch.Generator | None = None,
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """Move what is around each source point to its target point (module doc), completed by ``method``."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    xi = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    x = drag_state(z_image, mu + sigma * eps, mu + sigma * xi, source, target, t0, patch, sigma_min)
    return complete(velocity_fn, x, t0, num_steps, method, mu, sigma, rho, generator, sigma_min)



@torch.no_grad()
def edit_drag(
    pipe: CrossFlowPipeline,
    source_latents: torch.Tensor,
    prompts: str | Sequence[str],
    source: Sequence[Point],
    target: Sequence[Point],
    t0: float = 0.6,
    patch: int = 12,
    method: EditMethod = "sde",
    rho: float = DEFAULT_RHO,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    num_steps: int = DEFAULT_NUM_STEPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`drag_edit` of image latents described by ``prompts`` (their posterior supplies z_text and the noise,
    drawn as the VE draws it). Returns the edited latents; decode with ``pipe.codec.decode``."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1 and len(source_latents) > 1:
        prompts = prompts * len(source_latents)
    if len(prompts) != len(source_latents):
        raise CrossFlowError(f"got {len(prompts)} prompts for {len(source_latents)} images")
    post = prompt_posterior(pipe, prompts, "drag editing")
    z_text = post.mu + post.sigma * post.noise_fn(generator)
    fresh = post.mu + post.sigma * post.noise_fn(generator)
    try:
        x = drag_state(source_latents.to(post.mu), z_text, fresh, source, target, t0, patch, pipe.config.sigma_min)
        with pipe.eval_mode():
            return complete(pipe.velocity_fn(guidance_scale), x, t0, num_steps, method, post.mu, post.sigma, rho,
                            generator, pipe.config.sigma_min)
    except ValueError as err:
        raise CrossFlowError(str(err)) from None
