"""Single-image inversion into a weight space: the PC coefficients whose model best explains one image.

As in weights2weights: optimise the k coefficients (not the weights) under the training objective for a single
image; the space's span acts as the prior that keeps one image from being over-fitted. Here the objective is the
instance flow-matching loss (objective.instance_flow_loss) of the image under the rare-token prompt, with fresh t and
z_text draws every step; the coefficients are optimised in whitened units u = c / √variance (starting at u = 0, the
mean model), so one Adam learning rate suits components of any variance. ``prior_weight`` adds λ·mean(u²), the
Gaussian prior over coefficients (0 by default: the span alone constrains).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline
from crossflow.weight_space.bank import DEFAULT_TARGETS
from crossflow.weight_space.generate import SpaceKind, applied
from crossflow.weight_space.objective import PromptLatent, instance_flow_loss
from crossflow.weight_space.space import WeightSpace

DEFAULT_INVERSION_STEPS = 200
DEFAULT_INVERSION_LR = 0.05
DEFAULT_INVERSION_BATCH = 16


@dataclass
class InversionResult:
    """The fitted coefficients and how the loss went."""

    coefficients: torch.Tensor
    """(k,) PC coefficients of the inverted model."""
    losses: list[float]
    """The flow-matching loss at every step (before that step's update)."""
    seconds: float


def _image_batch(z_image: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if z_image.dim() == 3:
        z_image = z_image[None]
    if z_image.dim() != 4 or z_image.shape[0] != 1:
        raise CrossFlowError(f"inversion takes one image latent (1, C, H, W), got {tuple(z_image.shape)}")
    return z_image.to(device).float().expand(batch, -1, -1, -1)


def coefficient_loss(pipe: CrossFlowPipeline, space: WeightSpace, coeffs: torch.Tensor, z_image: torch.Tensor,
                     prompt: PromptLatent, batch_size: int = DEFAULT_INVERSION_BATCH,
                     generator: torch.Generator | None = None, kind: SpaceKind | None = None,
                     targets: Sequence[str] | None = None, time_shift: float = 1.0) -> torch.Tensor:
    """The instance flow-matching loss of one image latent under the model at ``coeffs`` (differentiable in them);
    ``time_shift``: the bank's training shift of t (BankTrainConfig.time_shift), so the fit sees the same t's."""
    kind = kind or space.metadata.get("kind", "lora")
    targets = tuple(targets or space.metadata.get("targets", DEFAULT_TARGETS))
    batch = _image_batch(z_image, batch_size, pipe.device)
    with applied(pipe, kind, space.decode(coeffs.to(pipe.device)), targets) as offset:
        return instance_flow_loss(pipe.model, prompt.to(pipe.device), batch, generator, text_offset=offset,
                                  time_shift=time_shift)


def invert(
    pipe: CrossFlowPipeline,
    space: WeightSpace,
    z_image: torch.Tensor,
    prompt: PromptLatent,
    steps: int = DEFAULT_INVERSION_STEPS,
    lr: float = DEFAULT_INVERSION_LR,
    batch_size: int = DEFAULT_INVERSION_BATCH,
    prior_weight: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    time_shift: float = 1.0,
) -> InversionResult:
    """Fit the k PC coefficients to one image latent ``z_image`` ((1, C, H, W) or (C, H, W)) by Adam on the flow-
    matching loss (``batch_size`` draws of t and z_text per step). Only the coefficients get gradients."""
    if steps < 1 or lr <= 0 or batch_size < 1 or prior_weight < 0:
        raise CrossFlowError(f"need steps >= 1, lr > 0, batch_size >= 1, prior_weight >= 0; got {steps}, {lr}, "
                             f"{batch_size}, {prior_weight}")
    scale = space.variances.sqrt().clamp_min(1e-12).to(pipe.device)
    u = torch.zeros(space.k, device=pipe.device, requires_grad=True)
    optimizer = torch.optim.Adam([u], lr=lr)
    losses: list[float] = []
    start = time.perf_counter()
    with pipe.eval_mode():
        for _ in tqdm(range(steps), desc="inversion", disable=not progress, leave=False):
            loss = coefficient_loss(pipe, space, u * scale, z_image, prompt, batch_size, generator,
                                    time_shift=time_shift)
            total = loss + prior_weight * (u * u).mean() if prior_weight else loss
            # autograd.grad, not backward: the model's own weights may require grad; they must neither get nor keep any.
            (grad,) = torch.autograd.grad(total, [u])
            u.grad = grad
            optimizer.step()
            losses.append(float(loss.detach()))
    return InversionResult((u.detach() * scale).cpu(), losses, time.perf_counter() - start)
