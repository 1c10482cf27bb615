"""Symmetric InfoNCE alignment between z_text and image features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from crossflow.models.alignment import (
    ContrastiveAlignment,
    ImageFeatureEncoder,
    gather_with_grad,
    symmetric_info_nce,
)


def _pairs(b: int = 8, e: int = 16, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    text = torch.randn(b, e, generator=g)
    image = text + noise * torch.randn(b, e, generator=g)
    return text, image


def test_matched_pairs_have_lower_loss_than_shuffled() -> None:
    text, image = _pairs()
    scale = torch.tensor(math.log(1 / 0.07))
    matched = symmetric_info_nce(text, image, scale)
    shuffled = symmetric_info_nce(text, image.roll(1, dims=0), scale)
    assert matched.item() < shuffled.item()
    assert matched.item() < 0.1 * math.log(8)  # near zero: the diagonal dominates
    assert shuffled.item() > math.log(8)  # worse than chance


def test_loss_is_symmetric_and_scale_invariant_in_inputs() -> None:
    text, image = _pairs(noise=1.0)
    scale = torch.tensor(2.0)
    loss = symmetric_info_nce(text, image, scale)
    torch.testing.assert_close(symmetric_info_nce(image, text, scale), loss)
    torch.testing.assert_close(
        symmetric_info_nce(3.0 * text, 0.5 * image, scale), loss
    )  # embeddings are normalised
    # With no temperature signal (scale → 0) every pair looks alike: the loss is log B.
    assert symmetric_info_nce(text, image, torch.tensor(-30.0)).item() == pytest.approx(math.log(8), rel=1e-4)


def test_works_without_distributed_initialised() -> None:
    assert not (dist.is_available() and dist.is_initialized())
    x = torch.randn(4, 8)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0


def test_logit_scale_is_learnable_and_clamped() -> None:
    torch.manual_seed(0)
    align = ContrastiveAlignment((3, 8, 8), dim=16)
    assert align.logit_scale.requires_grad
    assert align.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    z_text, z_image = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    loss = align(z_text, z_image)
    loss.backward()
    assert align.logit_scale.grad is not None and align.logit_scale.grad.item() != 0
    # Above log(100) the clamp holds the temperature at 1/100: same loss, no gradient to the scale.
    with torch.no_grad():
        align.logit_scale.fill_(math.log(100.0))
    at_max = align(z_text, z_image).item()
    with torch.no_grad():
        align.logit_scale.fill_(10.0)
    align.zero_grad()
    beyond = align(z_text, z_image)
    beyond.backward()
    assert beyond.item() == pytest.approx(at_max, rel=1e-6)
    assert align.logit_scale.grad.item() == 0.0


def test_alignment_module_shapes_and_training_signal() -> None:
    torch.manual_seed(0)
    align = ContrastiveAlignment((3, 8, 8), dim=16)
    assert ImageFeatureEncoder(3, 16, width=8)(torch.randn(2, 3, 8, 8)).shape == (2, 16)
    z_image = torch.randn(6, 3, 8, 8)
    z_text = torch.randn(6, 3, 8, 8, requires_grad=True)
    loss = align(z_text, z_image)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert (
        z_text.grad is not None and z_text.grad.abs().sum() > 0
    )  # the VE receives a gradient through z_text
    # A few steps of training make matched pairs easier to tell apart.
    opt = torch.optim.Adam(align.parameters(), lr=1e-2)
    first = align(z_text.detach(), z_image).item()
    for _ in range(4):
        opt.zero_grad()
        step_loss = align(z_text.detach(), z_image)
        step_loss.backward()
        opt.step()
    assert align(z_text.detach(), z_image).item() < first
