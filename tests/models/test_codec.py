"""The pixel codec: images in [0, 1] <-> latents in [-1, 1]."""

from __future__ import annotations

import pytest
import torch

from crossflow.errors import CrossFlowError
from crossflow.models.codec import CodecConfig, PixelCodec, build_codec


def test_pixel_codec_round_trip_and_range() -> None:
    codec = build_codec(CodecConfig(image_size=8, channels=3))
    assert isinstance(codec, PixelCodec)
    assert codec.latent_shape == (3, 8, 8)
    images = torch.rand(2, 3, 8, 8)
    z = codec.encode(images)
    assert z.shape == images.shape
    assert z.min() >= -1 and z.max() <= 1
    torch.testing.assert_close(codec.decode(z), images)
    torch.testing.assert_close(codec.encode(torch.zeros(1, 3, 8, 8)), -torch.ones(1, 3, 8, 8))
    torch.testing.assert_close(codec.encode(torch.ones(1, 3, 8, 8)), torch.ones(1, 3, 8, 8))


def test_decode_clamps_out_of_range_latents() -> None:
    codec = PixelCodec(CodecConfig(image_size=8, channels=3))
    out = codec.decode(torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0]).reshape(1, 5, 1, 1))
    assert out.flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 16, 16), (2, 3, 8, 4)])
def test_encode_rejects_wrong_shape(shape: tuple[int, ...]) -> None:
    codec = PixelCodec(CodecConfig(image_size=8, channels=3))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 8, 8\)"):
        codec.encode(torch.rand(*shape))


def test_unknown_codec_kind_raises() -> None:
    with pytest.raises(CrossFlowError, match="unknown codec kind"):
        build_codec(CodecConfig(kind="jpeg"))  # type: ignore[arg-type]


def test_vae_codec_is_refused_with_a_clear_error_until_it_exists() -> None:
    with pytest.raises(CrossFlowError, match="'vae' is not available"):
        build_codec(CodecConfig(kind="vae"))


def test_vae_latent_shape_is_derived_from_image_size() -> None:
    assert CodecConfig(kind="vae", image_size=256, latent_channels=4, downsample=8).latent_shape == (4, 32, 32)
    with pytest.raises(CrossFlowError, match="not divisible"):
        _ = CodecConfig(kind="vae", image_size=100).latent_shape
