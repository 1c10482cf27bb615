"""Drag editing: the patch lands where asked, the source is re-noised, completion runs ODE and SDE."""

from __future__ import annotations

import copy

import pytest
import torch

from crossflow import flow
from crossflow.config import ModelConfig
from crossflow.editing.drag import drag_edit, drag_state, edit_drag, ring_mean
from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_ring_mean_is_the_border_around_the_box() -> None:
    z = torch.zeros(1, 6, 6)
    z[:, 1:5, 1:5] = 1.0  # ring of ones around the 2x2 centre box
    z[:, 2:4, 2:4] = 9.0  # the box itself must not count
    assert ring_mean(z, slice(2, 4), slice(2, 4)).item() == pytest.approx(1.0)


def test_drag_state_moves_the_patch_and_renoises_the_source() -> None:
    z_image, z_text, fresh = (torch.randn(2, 3, 16, 16, generator=_g(s)) for s in range(3))
    t0 = 0.7
    x = flow.path_sample(z_text, z_image, torch.tensor(t0))
    out = drag_state(z_image, z_text, fresh, [(4, 4), (10, 5)], [(11, 11), (5, 10)], t0, patch=4)
    # the target box holds the source box's state at t0
    torch.testing.assert_close(out[0, :, 9:13, 9:13], x[0, :, 2:6, 2:6])
    torch.testing.assert_close(out[1, :, 8:12, 3:7], x[1, :, 3:7, 8:12])
    # the source box is a fresh path point: the fresh text draw with the ring-filled image
    fill = ring_mean(z_image[0], slice(2, 6), slice(2, 6))[:, None, None]
    expected = t0 * fill + (1 - (1 - flow.SIGMA_MIN) * t0) * fresh[0, :, 2:6, 2:6]
    torch.testing.assert_close(out[0, :, 2:6, 2:6], expected)
    # everything else is untouched
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[2:6, 2:6] = mask[9:13, 9:13] = False
    torch.testing.assert_close(out[0][:, mask], x[0][:, mask])


@pytest.mark.parametrize("kwargs, message", [
    ({"t0": 1.0}, "t0"), ({"patch": 0}, "patch"), ({"source": [(0, 0)]}, "leaves"), ({"target": [(15, 15)]}, "leaves"),
])
def test_drag_state_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    z = torch.randn(1, 3, 16, 16)
    args = {"source": [(8, 8)], "target": [(4, 4)], "t0": 0.5, "patch": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        drag_state(z, z, z, args["source"], args["target"], args["t0"], args["patch"])


def test_drag_edit_with_an_oracle_velocity_keeps_the_edited_state() -> None:
    """With a velocity that points every state straight at a fixed image, ODE completion ends at that image."""
    target_image = torch.randn(1, 3, 16, 16, generator=_g(5))

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1, 1, 1)
        z_text = (x - tt * target_image) / (1 - (1 - flow.SIGMA_MIN) * tt)
        return flow.target_velocity(z_text, target_image)

    mu, sigma = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    out = drag_edit(velocity, torch.randn(1, 3, 16, 16), mu, sigma, [(8, 8)], [(4, 4)], t0=0.5, patch=4,
                    method="ode", num_steps=20, generator=_g(0))
    torch.testing.assert_close(out, target_image, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def pipe(tiny_model_config_session: ModelConfig, random_pipeline) -> CrossFlowPipeline:
    config = copy.deepcopy(tiny_model_config_session)
    return random_pipeline(config)


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_pipeline_drag_is_reproducible(pipe: CrossFlowPipeline, method: str) -> None:
    latents = torch.tanh(torch.randn(2, *pipe.config.latent_shape, generator=_g(3)))
    size = pipe.config.latent_shape[-1]
    args = (latents, ["a red circle", "a blue square"], [(2, 2), (size - 3, 2)], [(size - 3, size - 3), (2, size - 3)])
    a = edit_drag(pipe, *args, t0=0.5, patch=2, method=method, num_steps=8, generator=_g(1))
    b = edit_drag(pipe, *args, t0=0.5, patch=2, method=method, num_steps=8, generator=_g(1))
    assert a.shape == latents.shape and torch.equal(a, b)
    with pytest.raises(CrossFlowError, match="leaves"):
        edit_drag(pipe, latents, "a red circle", [(0, 0)] * 2, [(2, 2)] * 2, patch=4, num_steps=4)
