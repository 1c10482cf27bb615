"""ModelConfig serialisation and diffs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from crossflow.config import ModelConfig, config_diff
from crossflow.errors import CrossFlowError
from crossflow.models.codec import CodecConfig
from crossflow.models.transformer import PRESETS


def test_to_dict_from_dict_round_trip(tiny_model_config: ModelConfig) -> None:
    data = tiny_model_config.to_dict()
    assert data["variational"]["width"] == 32 and data["codec"]["image_size"] == 8
    restored = ModelConfig.from_dict(data)
    assert restored == tiny_model_config
    assert isinstance(restored.codec, CodecConfig)
    # Through JSON too (this is what config.json and the safetensors metadata hold).
    assert ModelConfig.from_dict(json.loads(json.dumps(data))) == tiny_model_config
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_from_dict_rejects_unknown_keys() -> None:
    data = ModelConfig().to_dict()
    with pytest.raises(CrossFlowError, match="invalid CrossFlow model config"):
        ModelConfig.from_dict({**data, "unknown_field": 1})
    nested = ModelConfig().to_dict()
    nested["variational"]["not_a_field"] = 3
    with pytest.raises(CrossFlowError, match="not_a_field"):
        ModelConfig.from_dict(nested)


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert ModelConfig.from_dict({"preset": "small"}) == dataclasses.replace(ModelConfig(), preset="small")


def test_config_diff_lists_changed_fields(tiny_model_config: ModelConfig) -> None:
    assert config_diff(tiny_model_config, tiny_model_config) == []
    other = dataclasses.replace(
        tiny_model_config,
        variational=dataclasses.replace(tiny_model_config.variational, width=64),
        preset="small",
    )
    assert config_diff(tiny_model_config, other) == [
        "preset: 'tiny' vs 'small'",
        "variational.width: 32 vs 64",
    ]


def test_transformer_config_derives_sizes_from_codec(tiny_model_config: ModelConfig) -> None:
    assert tiny_model_config.latent_shape == (3, 8, 8)
    cfg = tiny_model_config.transformer_config()
    assert (cfg.in_channels, cfg.input_size, cfg.patch_size) == (3, 8, 4)
    assert (cfg.width, cfg.depth, cfg.num_heads) == (
        PRESETS["tiny"].width,
        PRESETS["tiny"].depth,
        PRESETS["tiny"].num_heads,
    )
