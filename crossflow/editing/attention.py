"""Disentangled editing in the flow transformer's attention outputs, after FluxSpace (Dalva et al. 2024,
"FluxSpace: Disentangled Semantic Editing in Rectified Flow Transformers", arXiv 2412.09611: its fine-grained and
coarse edits).

FluxSpace edits Flux by linear algebra on each joint block's attention output ℓ_θ(x, c, t) for three
conditions: the base prompt c, the edit prompt c_e and the null prompt φ (the *prior*). Its fine-grained edit
keeps of the edit's output only what the prior does not already explain, and adds that to the base:

    ℓ'_e = ℓ_θ(x, c_e, t) − proj_{ℓ_θ(x, φ, t)} ℓ_θ(x, c_e, t),     proj_u(v) = (v·u / u·u)·u   (per token)
    ℓ̂   = ℓ_θ(x, c, t) + λ_fine · M ⊙ ℓ'_e

with an optional token mask M (1 where the edit acts), from some step t_start on. Its coarse edit does the same
projection on pooled text embeddings (the global, stylising part).

CrossFlow has no text tokens in the flow: the text reaches the transformer only through x_t = t·z_image +
(1 − k·t)·z_text (k = 1 − σ_min; paper Sec. 3.1 of Liu et al.). So the three conditions become three *states*,
evaluated as one batch at every step of the sampler:

- base:  x_t itself (the state the sampler integrates), conditional indicator;
- edit:  the same x_t with its text part swapped for the edit prompt's, x_t + (1 − k·t)·(z_edit − z_base), where
  z_base and z_edit are draws of the two prompts' VE posteriors with the *same* noise ε (:func:`same_noise_latents`);
- prior: the base x_t under the *unconditional* CFG indicator (Liu et al. Sec. 3.3) — CrossFlow's "null prompt",
  and at the same time the unconditional branch of classifier-free guidance, so guidance costs nothing extra.

At the chosen blocks (and steps) the base rows' self-attention output (before the adaLN gate) becomes
``out_base + λ·M ⊙ (out_edit − proj_{out_prior}(out_edit))`` (:func:`orthogonal_component`), M from where the edit
changes the output (:func:`token_change_mask`, threshold τ) or M = 1. The edit and prior rows are never changed:
they are references. The velocity integrated is CFG on the (edited) base state, v = v_prior + w·(v_base − v_prior),
as the pipeline guides. The coarse variant (:func:`coarse_text_latent`) projects the text-latent difference
instead: z = z_base + λ·(d − proj_{z_prior} d), d = z_edit − z_base.

    result = edit_attention(pipe, "a small blue circle in the center", "a small red circle in the center",
                            lam=1.0, tau=0.5, generator=torch.Generator().manual_seed(0))
    result.images  # (1, 3, S, S) in [0, 1]

The hook API underneath (:func:`attention_hook`, :meth:`FlowTransformer.attention_output_hook`) reads or replaces
any block's attention output for any other purpose.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from crossflow.errors import CrossFlowError
from crossflow.inference import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    check_temperature,
)
from crossflow.models.transformer import AttnOutHook, FlowTransformer
from crossflow.sampling import SOLVERS, Solver, integrate, time_grid

DEFAULT_SHARPNESS = 10.0
"""κ of :func:`token_change_mask`: how steeply the mask rises from 0 at τ to 1 at the most-changed token."""
DEFAULT_PRIOR_PROMPT = ""
"""The coarse edit's unconditional reference: the VE mean of the empty prompt (see :func:`prior_text_latent`)."""


# ---------------------------------------------------------------------------------------------- the hook


def _flow_transformer(target: Any) -> FlowTransformer:
    """The flow transformer of a pipeline, a flow model (``.flow``) or the transformer itself."""
    for candidate in (target, getattr(target, "flow", None), getattr(getattr(target, "model", None), "flow", None)):
        if isinstance(candidate, FlowTransformer):
            return candidate
    raise CrossFlowError(f"cannot hook attention outputs of a {type(target).__name__}: pass a CrossFlowPipeline, "
                         "a flow model or a FlowTransformer")


@contextmanager
def attention_hook(target: CrossFlowPipeline | torch.nn.Module, hook: AttnOutHook) -> Iterator[FlowTransformer]:
    """Within the block, ``hook(block, t, out) -> out'`` sees (and may replace) every block's self-attention output.

    ``target``: a :class:`CrossFlowPipeline`, a flow model (``pipe.model``) or a :class:`FlowTransformer`. ``block``
    is the block's index, ``t`` the per-sample time (B,) of that forward, ``out`` the attention output (B, N, D), the
    CFG indicator token first, before the block's adaLN gate. Return ``out`` itself for a block to leave it as is.
    Outside the block (and with no hook) the transformer runs its plain forward, bit for bit. Yields the transformer.
    """
    flow = _flow_transformer(target)
    if flow._attn_out_hook is not None:
        raise CrossFlowError("an attention hook is already set on this model: hooks do not nest (use one hook that "
                             "handles every block)")
    with flow.attention_output_hook(hook):
        yield flow


# ---------------------------------------------------------------------------------------------- the algebra


def project(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """proj_u(v) = (v·u / u·u)·u over the last dimension (per token for (B, N, D)); 0 where u = 0.

    Computed in at least float32 and returned in v's dtype; ``u`` broadcasts against ``v``.
    """
    work = torch.promote_types(torch.promote_types(torch.float32, v.dtype), u.dtype)
    v_, u_ = v.to(work), u.to(work)
    denom = (u_ * u_).sum(-1, keepdim=True)
    # u = 0 has no direction to project on: (v·0)/tiny = 0, so the projection is 0 and v is kept whole.
    coeff = (v_ * u_).sum(-1, keepdim=True) / denom.clamp_min(torch.finfo(work).tiny)
    return (coeff * u_).to(v.dtype)


def orthogonal_component(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """v − proj_u(v) (:func:`project`): the part of v that u does not explain, orthogonal to u per token.

    FluxSpace's ℓ'_e with v = the edit's attention output and u = the prior's.
    """
    work = torch.promote_types(torch.promote_types(torch.float32, v.dtype), u.dtype)
    return (v.to(work) - project(v.to(work), u.to(work))).to(v.dtype)


def token_change_mask(
    out_edit: torch.Tensor, out_base: torch.Tensor, tau: float, sharpness: float = DEFAULT_SHARPNESS
) -> torch.Tensor:
    """Where the edit changes the attention output: (B, N) in [0, 1] from outputs (B, N, D).

    d = ‖out_edit − out_base‖ per token, normalised per image to d̂ ∈ [0, 1] (min → 0, max → 1), then sharpened by a
    sigmoid centred on τ and rescaled so that τ ↦ 0 and the most-changed token ↦ 1:

        M = clamp( (2·σ(κ·(d̂ − τ)) − 1) / (2·σ(κ·(1 − τ)) − 1), 0, 1 )       (2σ(a) − 1 = tanh(a/2))

    so M = 0 wherever d̂ ≤ τ (the threshold: higher τ, fewer tokens), and rises steeply (κ = ``sharpness``) to 1
    above it. An image whose tokens all change equally (or not at all) has no place to localise: M = 0 there.
    FluxSpace derives its mask from the edit prompt's image–text attention (normalised, smoothed, thresholded);
    CrossFlow's self-attention-only flow has no such map, so the change the edit makes stands in for it.
    """
    check_tau(tau)
    if not sharpness > 0:
        raise CrossFlowError(f"mask sharpness must be positive, got {sharpness}")
    work = torch.promote_types(torch.float32, out_edit.dtype)
    d = (out_edit.to(work) - out_base.to(work)).norm(dim=-1)
    low, high = d.amin(dim=-1, keepdim=True), d.amax(dim=-1, keepdim=True)
    spread = high - low
    d_hat = torch.where(spread > 0, (d - low) / spread.clamp_min(torch.finfo(work).tiny), torch.zeros_like(d))
    rise = torch.tanh(0.5 * sharpness * (d_hat - tau)) / math.tanh(0.5 * sharpness * (1.0 - tau))
    return rise.clamp(0.0, 1.0)


def coarse_text_latent(
    z_base: torch.Tensor, z_edit: torch.Tensor, z_prior: torch.Tensor, lam: float
) -> torch.Tensor:
    """The coarse edit on the text latent: z = z_base + λ·(d − proj_{z_prior} d), d = z_edit − z_base.

    Each sample is flattened over (C, H, W) for the projection (FluxSpace's coarse edit projects the pooled edit
    embedding off the null prompt's; here the text-latent difference off the reference ``z_prior``, (1, C, H, W) or
    (B, C, H, W)). What the two prompts' latents differ in *along* the generic direction z_prior (overall scale,
    what every prompt shares) is dropped; the rest is added with weight λ. λ = 0 returns z_base bit for bit.
    """
    check_lambda(lam)
    if z_base.shape != z_edit.shape:
        raise CrossFlowError(f"z_base {tuple(z_base.shape)} and z_edit {tuple(z_edit.shape)} must have one shape")
    d = (z_edit - z_base).flatten(1)
    prior = z_prior.flatten(1).to(d)
    if prior.shape[1] != d.shape[1]:
        raise CrossFlowError(f"z_prior {tuple(z_prior.shape)} does not match the latents {tuple(z_base.shape)}")
    return z_base + lam * orthogonal_component(d, prior).view_as(z_base)


# ---------------------------------------------------------------------------------------------- settings


def check_tau(tau: float | None) -> None:
    """Raise a one-line :class:`CrossFlowError` unless τ is None (no mask) or in (0, 1)."""
    if tau is not None and not (isinstance(tau, (int, float)) and 0.0 < tau < 1.0):
        raise CrossFlowError(f"tau must be in (0, 1) (the mask threshold) or None for no mask, got {tau}")


def check_lambda(lam: float) -> None:
    """Raise a one-line :class:`CrossFlowError` unless λ is a finite number."""
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam):
        raise CrossFlowError(f"lam (the edit strength λ) must be a finite number, got {lam!r}")


@dataclass(frozen=True)
class AttentionEdit:
    """What the fine-grained edit changes, and where."""

    lam: float = 1.0
    """λ: how much of the edit's prior-orthogonal attention output is added (0: none; negative: the opposite)."""
    tau: float | None = None
    """Mask threshold τ ∈ (0, 1) of :func:`token_change_mask`; None: no mask (M = 1, the indicator token included)."""
    start_step: int = 0
    """Edit only from this step of the sampler's grid on (t ≥ t_start = time_grid(num_steps)[start_step])."""
    blocks: tuple[int, ...] | None = None
    """Indices of the flow blocks whose attention output is edited; None: every block."""
    sharpness: float = DEFAULT_SHARPNESS
    """κ of the mask's sigmoid (only with a τ)."""
    relative: bool = False
    """Add λ·(ℓ'_edit − ℓ'_base) instead of λ·ℓ'_edit (ℓ' = the part orthogonal to the prior's output). FluxSpace's
    conditions are different prompts over one image; CrossFlow's are states of one x_t, so base and edit share most
    of their prior-orthogonal content and the absolute form adds it a second time (λ = 1 doubles it). The relative
    form adds only what the edit changes: λ = 1 swaps the base's prior-orthogonal output for the edit's."""

    def check(self, depth: int, num_steps: int) -> tuple[int, ...]:
        """Raise a one-line :class:`CrossFlowError` for a bad setting; the edited block indices, sorted."""
        check_lambda(self.lam)
        check_tau(self.tau)
        if not self.sharpness > 0:
            raise CrossFlowError(f"mask sharpness must be positive, got {self.sharpness}")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) \
                or not 0 <= self.start_step < num_steps:
            raise CrossFlowError(f"start_step must be an integer step in [0, {num_steps - 1}] (num_steps = "
                                 f"{num_steps}), got {self.start_step}")
        if self.blocks is None:
            return tuple(range(depth))
        blocks = tuple(self.blocks)
        if not blocks:
            raise CrossFlowError("blocks must name at least one block (or be None for every block)")
        for block in blocks:
            if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < depth:
                raise CrossFlowError(f"block {block!r} is out of range: this flow transformer has {depth} blocks "
                                     f"(0..{depth - 1})")
        return tuple(sorted(set(blocks)))


@dataclass
class EditResult:
    """The outcome of :func:`edit_attention` / :func:`edit_coarse` (or their ``*_latents`` forms)."""

    latents: torch.Tensor
    """The edited image latents (B, C, H, W) at t = 1."""
    images: torch.Tensor
    """Those decoded: (B, 3, S, S) in [0, 1], on the CPU."""
    edited_calls: int = 0
    """Fine edit: block calls whose attention output was edited (edited evaluations × blocks)."""
    mask_coverage: float | None = None
    """Fine edit with a τ: the mean of M over the patch tokens of every edited call (the edited share)."""


# ---------------------------------------------------------------------------------------------- sampling


class AttentionEditVelocity:
    """The velocity callable the sampler integrates for a fine edit: CFG over the edited base state.

    Call it as ``v(x, t)`` inside ``torch.no_grad``. At times before the edit starts it is exactly the pipeline's
    guided velocity (``pipe.velocity_fn(w)``); from t_start on it evaluates [base; prior; edit] as one batch of 3B
    with :meth:`hook` set on the transformer, and guides the edited base rows with the prior rows.
    """

    def __init__(
        self,
        pipe: CrossFlowPipeline,
        z_base: torch.Tensor,
        z_edit: torch.Tensor,
        edit: AttentionEdit,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        num_steps: int = DEFAULT_NUM_STEPS,
    ) -> None:
        if z_base.shape != z_edit.shape:
            raise CrossFlowError(f"z_base {tuple(z_base.shape)} and z_edit {tuple(z_edit.shape)} must have one shape")
        self.pipe = pipe
        self.flow = _flow_transformer(pipe)
        self.blocks = frozenset(edit.check(len(self.flow.blocks), num_steps))
        self.edit = edit
        self.guidance_scale = guidance_scale
        self.delta = z_edit - z_base
        self.k = 1.0 - pipe.config.sigma_min
        self.t_start = time_grid(num_steps, device=z_base.device,
                                 dtype=torch.promote_types(torch.float32, z_base.dtype))[edit.start_step]
        self.plain = pipe.velocity_fn(guidance_scale)
        self.batch = z_base.shape[0]
        self.edited_calls = 0
        self._coverage: torch.Tensor | float = 0.0

    @property
    def mask_coverage(self) -> float | None:
        if self.edit.tau is None or self.edited_calls == 0:
            return None
        return float(self._coverage) / self.edited_calls

    def hook(self, block: int, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out_base ← out_base + λ·M ⊙ (out_edit − proj_{out_prior} out_edit) on the chosen blocks (rows [0, B))."""
        if block not in self.blocks:
            return out
        b = self.batch
        base, prior, edit = out[:b], out[b:2 * b], out[2 * b:]
        direction = orthogonal_component(edit, prior)
        if self.edit.relative:
            direction = direction - orthogonal_component(base, prior)
        if self.edit.tau is not None:
            # Over the patch tokens only: the indicator token is global (every token reads it), so a masked,
            # local edit leaves it alone.
            mask = token_change_mask(edit[:, 1:], base[:, 1:], self.edit.tau, self.edit.sharpness)
            self._coverage = self._coverage + mask.mean()
            direction = F.pad(mask, (1, 0)).unsqueeze(-1).to(direction.dtype) * direction
        self.edited_calls += 1
        return torch.cat([base + self.edit.lam * direction, out[b:]])

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not bool((t >= self.t_start).all()):
            return self.plain(x, t)
        b = x.shape[0]
        if b != self.batch:
            raise CrossFlowError(f"this edit was set up for a batch of {self.batch}, got {b}")
        # The edit state: x_t with its text part (1 − k·t)·z_base swapped for (1 − k·t)·z_edit.
        weight = (1 - self.k * t).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        x_edit = x + weight * self.delta.to(x)
        flags = torch.tensor([False, True, False], device=x.device).repeat_interleave(b)
        with attention_hook(self.flow, self.hook):
            v = self.pipe.model.velocity(torch.cat([x, x, x_edit]), torch.cat([t, t, t]), flags)
        v_base, v_prior = v[:b], v[b:2 * b]
        if self.guidance_scale == 1.0:
            return v_base
        return v_prior + self.guidance_scale * (v_base - v_prior)  # as crossflow.sampling.classifier_free_guidance


def _check_sampling(pipe: CrossFlowPipeline, num_steps: int, guidance_scale: float, solver: str,
                    temperature: float = 1.0) -> None:
    if pipe.config.kind != "crossflow":
        raise CrossFlowError(f"this model (kind {pipe.config.kind}) has no text latent: attention editing needs a "
                             "CrossFlow model")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps <= 0:
        raise CrossFlowError(f"num_steps must be a positive integer, got {num_steps}")
    if not guidance_scale >= 1.0:
        raise CrossFlowError(f"guidance scale must be >= 1 (1 = no guidance), got {guidance_scale}")
    if solver not in SOLVERS:
        raise CrossFlowError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    check_temperature(temperature)


def _decode(pipe: CrossFlowPipeline, latents: torch.Tensor) -> torch.Tensor:
    return pipe.codec.decode(latents).float().cpu()


@torch.no_grad()
def attention_edit_latents(
    pipe: CrossFlowPipeline,
    z_base: torch.Tensor,
    z_edit: torch.Tensor,
    edit: AttentionEdit,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    solver: Solver = "euler",
) -> EditResult:
    """The fine edit from given text latents (B, C, H, W) in the image-latent shape (:func:`same_noise_latents`).

    λ = 0 adds nothing, so no edit rows are evaluated: the result is ``pipe.generate_latents(z_base, …)`` bit for
    bit. Steps before ``edit.start_step`` are the plain guided steps in any case.
    """
    _check_sampling(pipe, num_steps, guidance_scale, solver)
    z_base, z_edit = z_base.to(pipe.device), z_edit.to(pipe.device)
    with pipe.eval_mode():
        velocity = AttentionEditVelocity(pipe, z_base, z_edit, edit, guidance_scale, num_steps)
        if edit.lam == 0:
            latents = pipe.generate_latents(z_base, num_steps, guidance_scale, solver)
        else:
            latents = integrate(velocity, z_base, num_steps=num_steps, solver=solver).x
    assert isinstance(latents, torch.Tensor)
    return EditResult(latents, _decode(pipe, latents), velocity.edited_calls, velocity.mask_coverage)


def _prompt_list(prompts: str | Sequence[str], name: str) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise CrossFlowError(f"{name} must be non-empty strings")
    return prompts


def _paired(prompts: str | Sequence[str], edit_prompts: str | Sequence[str]) -> tuple[list[str], list[str]]:
    base, edit = _prompt_list(prompts, "prompts"), _prompt_list(edit_prompts, "edit prompts")
    if len(edit) == 1 and len(base) > 1:
        edit = edit * len(base)
    if len(edit) != len(base):
        raise CrossFlowError(f"got {len(edit)} edit prompts for {len(base)} prompts (give one, or one per prompt)")
    return base, edit


@torch.no_grad()
def same_noise_latents(
    pipe: CrossFlowPipeline,
    prompts: str | Sequence[str],
    edit_prompts: str | Sequence[str],
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_base, z_edit) in the image-latent shape: both prompts' VE draws μ + τ·σ·ε with ONE ε per sample.

    z_base is exactly the draw ``pipe(prompts, generator=g, temperature=τ)`` makes (and ``generator`` advances as
    it would there); z_edit replays the same generator state for the edit prompts. ``edit_prompts``: one for all
    prompts, or one per prompt. τ = 0: the VE means.
    """
    base, edit = _paired(prompts, edit_prompts)
    check_temperature(temperature)
    if generator is None:  # one seed from the global RNG, so both draws can share it
        generator = torch.Generator(pipe.device).manual_seed(int(torch.randint(0, 2**62, ())))
    twin = torch.Generator(generator.device)
    twin.set_state(generator.get_state())
    with pipe.eval_mode():
        z_base = pipe.prepare_source(base, generator=generator, temperature=temperature).x0
        z_edit = pipe.prepare_source(edit, generator=twin, temperature=temperature).x0
    return z_base, z_edit


@torch.no_grad()
def edit_attention(
    pipe: CrossFlowPipeline,
    prompts: str | Sequence[str],
    edit_prompts: str | Sequence[str],
    lam: float = 1.0,
    tau: float | None = None,
    start_step: int = 0,
    blocks: Sequence[int] | None = None,
    *,
    sharpness: float = DEFAULT_SHARPNESS,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    solver: Solver = "euler",
) -> EditResult:
    """Prompts, edited towards ``edit_prompts`` in the attention outputs (FluxSpace's fine-grained edit, adapted):

        out_base ← out_base + λ·M ⊙ (out_edit − proj_{out_prior}(out_edit))

    at ``blocks`` (None: all) from step ``start_step`` on, M = :func:`token_change_mask` with threshold ``tau`` or 1
    (``tau=None``). See the module docstring for the three states. With the same ``generator`` seed, λ = 0 gives
    ``pipe(prompts, generator=g)``'s images bit for bit, so a seed's plain image is the edit's "before".
    """
    edit = AttentionEdit(lam, tau, start_step, None if blocks is None else tuple(blocks), sharpness)
    _check_sampling(pipe, num_steps, guidance_scale, solver, temperature)
    edit.check(len(_flow_transformer(pipe).blocks), num_steps)  # before drawing anything
    z_base, z_edit = same_noise_latents(pipe, prompts, edit_prompts, generator, temperature)
    return attention_edit_latents(pipe, z_base, z_edit, edit, num_steps, guidance_scale, solver)


@torch.no_grad()
def prior_text_latent(pipe: CrossFlowPipeline, prior_prompt: str = DEFAULT_PRIOR_PROMPT) -> torch.Tensor:
    """The coarse edit's unconditional reference z_prior (1, C, H, W): the VE mean μ of ``prior_prompt``.

    Default: the empty prompt, CrossFlow's nearest thing to FluxSpace's null prompt φ — what the text encoder and VE
    make of no words at all, i.e. the part of every text latent that does not depend on what the prompt says.
    (The unconditional indicator token cannot serve: it acts inside the flow, not on z_text.)
    """
    if not isinstance(prior_prompt, str):
        raise CrossFlowError(f"prior_prompt must be a string, got {type(prior_prompt).__name__}")
    with pipe.eval_mode():
        return pipe.prepare_source([prior_prompt], temperature=0.0).x0


@torch.no_grad()
def edit_coarse(
    pipe: CrossFlowPipeline,
    prompts: str | Sequence[str],
    edit_prompts: str | Sequence[str],
    lam: float = 1.0,
    *,
    prior_prompt: str = DEFAULT_PRIOR_PROMPT,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    solver: Solver = "euler",
) -> EditResult:
    """The coarse (global) edit: integrate from z = z_base + λ·(d − proj_{z_prior} d), d = z_edit − z_base
    (:func:`coarse_text_latent`, z_prior = :func:`prior_text_latent`), z_base and z_edit with one ε.

    λ = 0 is ``pipe(prompts, generator=g)`` bit for bit; the flow itself runs unhooked.
    """
    check_lambda(lam)
    _check_sampling(pipe, num_steps, guidance_scale, solver, temperature)
    z_base, z_edit = same_noise_latents(pipe, prompts, edit_prompts, generator, temperature)
    z = coarse_text_latent(z_base, z_edit, prior_text_latent(pipe, prior_prompt), lam)
    with pipe.eval_mode():
        latents = pipe.generate_latents(z, num_steps, guidance_scale, solver)
    assert isinstance(latents, torch.Tensor)
    return EditResult(latents, _decode(pipe, latents))
