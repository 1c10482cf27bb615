"""Precomputed shard members: decoding, and the start-up check against a model config."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from crossflow.config import ModelConfig
from crossflow.data.decode import decode_sample
from crossflow.data.precomputed import check_prepared, load_npy
from crossflow.errors import CrossFlowError
from crossflow.models.codec import CodecConfig


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def prepared_sample(config: ModelConfig, latent_shape: tuple[int, ...] | None = None, length: int | None = None,
                    width: int = 32) -> dict:
    enc = config.text_encoder
    length = enc.max_length if length is None else length
    mask = np.zeros(length, dtype=bool)
    mask[:3] = True
    info = {"version": 1, "image_size": config.codec.image_size,
            "text": {"pretrained": enc.pretrained, "max_length": enc.max_length,
                     "hidden_state_layer": enc.hidden_state_layer, "hidden_size": width}}
    sample = {"__key__": "000000001", "__url__": "/data/x-000000.tar", "txt": b"a red circle",
              "text.npy": npy(np.random.default_rng(0).normal(size=(length, width)).astype(np.float16)),
              "mask.npy": npy(mask)}
    if latent_shape is not None:
        sample["latent.npy"] = npy(np.zeros((2, *latent_shape), dtype=np.float16))
        info["latent"] = {"kind": "vae", "vae": config.codec.vae, "shape": list(latent_shape)}
    sample["json"] = json.dumps({"caption": "a red circle", "prepared": info}).encode()
    return sample


def vae_config(base: ModelConfig) -> ModelConfig:
    config = ModelConfig.from_dict(base.to_dict())
    config.codec = CodecConfig(kind="vae", vae="/vaes/tiny", image_size=32, latent_channels=4, downsample=2)
    return config


def test_precomputed_members_decode_without_an_image(tiny_model_config: ModelConfig) -> None:
    config = vae_config(tiny_model_config)
    sample = prepared_sample(config, latent_shape=(4, 16, 16))
    out = decode_sample(sample, image_size=32)
    assert "image" not in out  # the latents replace the (expensive) image decode
    assert out["text_states"].shape == (config.text_encoder.max_length, 32) and out["text_states"].dtype == torch.float32
    assert out["text_mask"].tolist()[:4] == [True, True, True, False]
    assert out["latent_moments"].shape == (2, 4, 16, 16)
    check_prepared(sample, config, "x.tar")  # matches: no error


def test_text_states_without_mask_are_refused(tiny_model_config: ModelConfig) -> None:
    sample = prepared_sample(tiny_model_config)
    del sample["mask.npy"]
    with pytest.raises(KeyError, match="mask"):
        decode_sample(sample, image_size=32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.text_encoder, "max_length", 20), "max_length=20"),
        (lambda c: setattr(c.text_encoder, "pretrained", "other/encoder"), "text_encoder.pretrained"),
        (lambda c: setattr(c.text_encoder, "hidden_state_layer", -2), "hidden_state_layer"),
        (lambda c: setattr(c.codec, "latent_channels", 16), r"\(2, 16, 16, 16\)"),
        (lambda c: setattr(c.codec, "vae", "/vaes/other"), "codec.vae"),
    ],
)
def test_mismatch_with_the_model_is_one_clear_error(tiny_model_config: ModelConfig, change, message: str) -> None:
    config = vae_config(tiny_model_config)
    sample = prepared_sample(config, latent_shape=(4, 16, 16))
    change(config)
    with pytest.raises(CrossFlowError, match=message) as info:
        check_prepared(sample, config, "x.tar")
    assert "\n" not in str(info.value)


def test_vae_latents_for_a_pixel_model_are_refused(tiny_model_config: ModelConfig) -> None:
    sample = prepared_sample(tiny_model_config, latent_shape=(4, 16, 16))
    with pytest.raises(CrossFlowError, match="codec is 'pixel'"):
        check_prepared(sample, tiny_model_config, "x.tar")


def test_pickled_npy_is_refused() -> None:
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npy(npy(np.array([{"a": 1}], dtype=object)))
