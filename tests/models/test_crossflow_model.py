"""CrossFlowModel: what ``velocity`` means for each kind of network output (config.prediction)."""

from __future__ import annotations

import torch

from crossflow import flow
from crossflow.config import ModelConfig
from crossflow.models.crossflow import CrossFlowModel


def test_velocity_prediction_is_the_network_output(tiny_model_config: ModelConfig) -> None:
    model = CrossFlowModel(tiny_model_config, text_dim=32)
    x_t, t = torch.randn(2, 3, 8, 8), torch.tensor([0.2, 0.8])
    assert torch.equal(model.velocity(x_t, t), torch.zeros_like(x_t))  # zero-initialised output layer


def test_data_prediction_is_turned_into_the_implied_velocity(tiny_model_config: ModelConfig) -> None:
    tiny_model_config.prediction = "data"
    model = CrossFlowModel(tiny_model_config, text_dim=32)
    torch.nn.init.normal_(model.flow.final.linear.weight, std=0.1)  # a non-trivial prediction
    x_t, t = torch.randn(2, 3, 8, 8), torch.tensor([0.2, 0.8])
    uncond = torch.tensor([False, True])
    x_hat = model.flow(x_t, t, uncond)
    expected = flow.velocity_from_data(x_hat, x_t, t, tiny_model_config.sigma_min)
    torch.testing.assert_close(model.velocity(x_t, t, uncond), expected)
    assert not torch.allclose(expected, x_hat)
