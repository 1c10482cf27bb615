"""Sampling from an instance model — a point of a weight space (or of the text-latent space) — with optional delayed
injection of an edit.

A LoRA-kind point is a dense ΔW of the flow's q/v weights, applied in the bank layers' dense mode
(:meth:`crossflow.weight_space.bank.LoraBank.dense`); a text-kind point is an offset of the prompt's VE mean. Either
way the flow starts at z_text = μ (+ offset) + σ·ε of the instance prompt, as in training.

Delayed injection (an injection schedule in the manner of Prompt-to-Prompt's): the flow runs with the
``early`` weights for t < t_inject and with the ``late`` (edited) weights from t_inject on (t = 0 is the text
latent, t = 1 the image, as everywhere here). The early part lays out the image, so an edit injected later keeps
more of it. It is a velocity callable like any other (crossflow.sampling): the solvers never know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

from crossflow.data.shapes import Instance, render_instance
from crossflow.errors import CrossFlowError
from crossflow.inference import DEFAULT_NUM_STEPS, CrossFlowPipeline, check_temperature
from crossflow.sampling import Solver, VelocityFn, integrate
from crossflow.weight_space.bank import DEFAULT_TARGETS, LoraBank
from crossflow.weight_space.objective import PromptLatent, draw_text_latents

SpaceKind = Literal["lora", "text"]
DEFAULT_INSTANCE_GUIDANCE = 1.0
"""Instance models are trained on the conditional branch only (objective.py), so they sample without guidance."""


def check_t_inject(t_inject: float) -> None:
    if not 0.0 <= t_inject <= 1.0:
        raise CrossFlowError(f"t_inject must be in [0, 1] (0: edited throughout, 1: never), got {t_inject}")


@contextmanager
def applied(pipe: CrossFlowPipeline, kind: SpaceKind, vector: torch.Tensor | None,
            targets: Sequence[str] = DEFAULT_TARGETS) -> Iterator[torch.Tensor | None]:
    """Within the block ``pipe.model`` is the instance model ``vector`` describes (None: the base model). A model
    without a bank gets dense-mode layers on first use (LoraBank.attach_dense: free while unused).

    ``lora``: the flow's q/v weights carry the dense ΔW ``vector`` (L, P, D, D); yields None. ``text``: the weights
    stay the base's; yields the offset (C, h, w) -> (1, C, h, w) to add to the prompt's μ.
    """
    if kind == "lora":
        bank = LoraBank.attach_dense(pipe.model, targets)
        with bank.dense(None if vector is None else vector.to(pipe.device)):
            yield None
    elif kind == "text":
        yield None if vector is None else vector.to(pipe.device)[None]
    else:
        raise CrossFlowError(f"unknown space kind {kind!r}; expected 'lora' or 'text'")


def injected_velocity(pipe: CrossFlowPipeline, late: torch.Tensor | None, early: torch.Tensor | None = None,
                      t_inject: float = 0.0, guidance_scale: float = DEFAULT_INSTANCE_GUIDANCE,
                      targets: Sequence[str] = DEFAULT_TARGETS) -> VelocityFn:
    """v(x, t) of the model with dense ΔW ``early`` (None: the base) for t < t_inject and ``late`` for t ≥ t_inject.

    t_inject = 0 is the ``late`` model throughout; t_inject = 1 the ``early`` one throughout (also at t = 1, where
    Heun's corrector evaluates). Rows of one batch at different times are split between the two.
    """
    check_t_inject(t_inject)
    bank = LoraBank.attach_dense(pipe.model, targets)
    guided = pipe.velocity_fn(guidance_scale)
    device = pipe.device
    late = None if late is None else late.to(device)
    early = None if early is None else early.to(device)

    def run(delta: torch.Tensor | None, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with bank.dense(delta):
            return guided(x, t)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        is_late = t >= t_inject if t_inject < 1.0 else torch.zeros_like(t, dtype=torch.bool)
        if bool(is_late.all()):
            return run(late, x, t)
        if not bool(is_late.any()):
            return run(early, x, t)
        out = torch.empty_like(x)
        out[is_late] = run(late, x[is_late], t[is_late])
        out[~is_late] = run(early, x[~is_late], t[~is_late])
        return out

    return velocity


@torch.no_grad()
def sample_instance(
    pipe: CrossFlowPipeline,
    prompt: PromptLatent,
    kind: SpaceKind,
    vector: torch.Tensor | None,
    num_images: int,
    generator: torch.Generator | None = None,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_INSTANCE_GUIDANCE,
    solver: Solver = "euler",
    t_inject: float = 0.0,
    early: torch.Tensor | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    progress: Callable[[int], None] | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``num_images`` images (n, 3, S, S) in [0, 1] of the instance model ``vector`` (see :func:`applied`), each from
    its own z_text draw. LoRA kind: ``early`` / ``t_inject`` for delayed injection (:func:`injected_velocity`).

    ``temperature`` scales the z_text draws' σ, as the pipeline's: 1 samples what the model was trained on, 0 gives
    μ alone (one image, whatever the seed). The base model's seed-to-seed spread of outlines comes from that noise
    (docs/experiments.md), so lower values trade seed diversity for a steadier identity."""
    if num_images < 1:
        raise CrossFlowError(f"num_images must be positive, got {num_images}")
    check_temperature(temperature, "temperature (the z_text noise scale)")
    check_t_inject(t_inject)
    if kind == "text" and (t_inject > 0 or early is not None):
        raise CrossFlowError("delayed injection changes weights during the flow; a text-latent point acts only at t = 0")
    if kind not in ("lora", "text"):
        raise CrossFlowError(f"unknown space kind {kind!r}; expected 'lora' or 'text'")
    with pipe.eval_mode():
        # A text-kind model is an offset of the VE mean; a LoRA-kind model changes the flow's weights instead.
        offset = vector.to(pipe.device)[None] if kind == "text" and vector is not None else None
        z_text = draw_text_latents(pipe.model, prompt.to(pipe.device), num_images, generator, offset, temperature)
        velocity = (pipe.velocity_fn(guidance_scale) if kind == "text"
                    else injected_velocity(pipe, vector, early, t_inject, guidance_scale, targets))
        z_image = integrate(velocity, z_text, num_steps=num_steps, solver=solver, progress=progress).x
    return pipe.codec.decode(z_image).float().cpu()


def render_references(instances: Sequence[Instance], image_size: int, rng: np.random.Generator | None = None,
                      position: str | None = None) -> torch.Tensor:
    """Ground-truth renders (n, 3, S, S) in [0, 1] of ``instances`` (one each; ``rng`` places them, None: centred;
    ``position`` fixes where, as the bank's training did)."""
    arrays = [np.asarray(render_instance(inst, image_size, rng, position)) for inst in instances]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)
