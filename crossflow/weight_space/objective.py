"""The instance fine-tuning objective: CrossFlow's flow-matching loss from one fixed prompt to an instance's images.

Every image of every instance carries the same rare-token caption ("a photo of sks"), and the VE is frozen, so the
prompt's posterior N(μ, σ²) is computed once (:func:`encode_prompt`) and each sample draws its own z_text from it
as training does (``CrossFlowModel.text_latent``). The rest is ``CrossFlowLitModule.compute_losses``'s flow term,
from the same functions of crossflow.flow: t, x_t, v*, v_θ, MSE (paper Sec. 3, Eq. 1–3). The alignment and KL terms
train the VE, which stays frozen here, so they are left out; no CFG dropout either (sampling an instance model uses
the conditional branch: guidance 1 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossflow import flow
from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline
from crossflow.models.flow_model import FlowModel


@dataclass
class PromptLatent:
    """One prompt's VE posterior on the VE's grid: μ and log σ², each (1, C, h, w)."""

    mu: torch.Tensor
    logvar: torch.Tensor

    def to(self, device: torch.device | str) -> PromptLatent:
        return PromptLatent(self.mu.to(device), self.logvar.to(device))


@torch.no_grad()
def encode_prompt(pipe: CrossFlowPipeline, prompt: str) -> PromptLatent:
    """The frozen text encoder + VE posterior of ``prompt`` (CrossFlow models only), on the pipeline's device."""
    if pipe.config.kind != "crossflow":
        raise CrossFlowError(f"instance fine-tunes flow from a text latent: a {pipe.config.kind} model has none")
    with pipe.eval_mode():
        source = pipe.prepare_source([prompt], temperature=0.0)  # τ = 0 draws nothing
    assert source.mu is not None and source.logvar is not None
    return PromptLatent(source.mu.float(), source.logvar.float())


def draw_text_latents(model: FlowModel, prompt: PromptLatent, batch: int, generator: torch.Generator | None = None,
                      text_offset: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """``batch`` draws z_text = μ (+ offset) + τ·σ·ε in the image-latent shape; ``text_offset`` (B or 1, C, h, w)."""
    mu = prompt.mu.expand(batch, *prompt.mu.shape[1:])
    if text_offset is not None:
        mu = mu + text_offset
    return model.text_latent(mu, prompt.logvar.expand(batch, *prompt.logvar.shape[1:]), generator=generator,
                             temperature=temperature)


def instance_flow_loss(
    model: FlowModel,
    prompt: PromptLatent,
    z_image: torch.Tensor,
    generator: torch.Generator | None = None,
    time_sampling: str = "uniform",
    text_offset: torch.Tensor | None = None,
    time_shift: float = 1.0,
) -> torch.Tensor:
    """Flow-matching MSE of ``z_image`` (B, C, H, W) under the prompt, each sample with its own z_text and t.

    Whatever instance update is active on ``model`` (a LoRA bank's mode) acts on v_θ; ``text_offset`` moves each
    sample's μ (a text-offset bank). All samples conditional (indicator 0).
    """
    b, device = z_image.shape[0], z_image.device
    z_text = draw_text_latents(model, prompt, b, generator, text_offset)
    t = flow.sample_time(b, time_sampling, shift=time_shift, device=device, generator=generator)  # type: ignore[arg-type]
    sigma_min = model.config.sigma_min
    x_t = flow.path_sample(z_text, z_image, t, sigma_min)
    v_target = flow.target_velocity(z_text, z_image, sigma_min)
    v_pred = model.velocity(x_t, t)
    return flow.flow_matching_loss(v_pred, v_target)
