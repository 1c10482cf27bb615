"""The codecs: pixel (images in [0, 1] <-> latents in [-1, 1]) and a tiny random diffusers AutoencoderKL."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from crossflow.errors import CrossFlowError
from crossflow.models.codec import Codec, CodecConfig, PixelCodec, VAECodec, _vae_location, build_codec


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


def test_vae_latent_shape_is_derived_from_image_size() -> None:
    assert CodecConfig(kind="vae", image_size=256, latent_channels=4, downsample=8).latent_shape == (4, 32, 32)
    with pytest.raises(CrossFlowError, match="not divisible"):
        _ = CodecConfig(kind="vae", image_size=100).latent_shape


def test_pixel_codec_has_no_latent_distribution() -> None:
    codec = build_codec(CodecConfig(image_size=8, channels=3))
    assert isinstance(codec, Codec)
    images = torch.rand(2, 3, 8, 8)
    assert torch.equal(codec.encode(images, torch.Generator().manual_seed(0)), codec.encode(images))
    with pytest.raises(CrossFlowError, match="the pixel codec has no latent distribution; store pixels"):
        codec.moments(images)
    with pytest.raises(CrossFlowError, match="no latent distribution"):
        codec.latents_from_moments(images, images)


# --- kind: vae, with a tiny random AutoencoderKL (f = 2, 4 latent channels) ----------------------------------

IMAGE = 16
LATENT = (4, IMAGE // 2, IMAGE // 2)


@pytest.fixture(scope="module")
def sd_style_vae_dir(tiny_vae_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same weights with an SD-1.x-style config: no shift, and no scaling_factor key (the default 0.18215)."""
    directory = tmp_path_factory.mktemp("sd_style_vae")
    shutil.copytree(tiny_vae_dir, directory, dirs_exist_ok=True)
    config = json.loads((directory / "config.json").read_text())
    del config["scaling_factor"], config["shift_factor"]
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def _vae_codec(directory: str, **overrides: object) -> VAECodec:
    config = {"kind": "vae", "image_size": IMAGE, "vae": directory, "latent_channels": 4, "downsample": 2}
    codec = build_codec(CodecConfig(**{**config, **overrides}))  # type: ignore[arg-type]
    assert isinstance(codec, VAECodec)
    return codec


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_vae_codec_latent_shape_and_encode(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir)
    assert codec.latent_shape == LATENT
    z = codec.encode(torch.rand(2, 3, IMAGE, IMAGE), _gen())
    assert z.shape == (2, *LATENT) and z.dtype == torch.float32 and torch.isfinite(z).all()
    mean, logvar = codec.moments(torch.rand(2, 3, IMAGE, IMAGE))
    assert mean.shape == logvar.shape == (2, *LATENT)


def test_scale_and_shift_come_from_the_vae_config_and_can_be_overridden(
    tiny_vae_dir: str, sd_style_vae_dir: str
) -> None:
    images = torch.rand(2, 3, IMAGE, IMAGE)
    codec = _vae_codec(tiny_vae_dir)
    assert (codec.scaling_factor, codec.shift_factor) == (0.5, pytest.approx(0.1))
    mean, logvar = codec.moments(images)
    sample = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=_gen())
    torch.testing.assert_close(codec.encode(images, _gen()), (sample - 0.1) * 0.5)

    overridden = _vae_codec(tiny_vae_dir, scaling_factor=2.0, shift_factor=0.0)
    assert (overridden.scaling_factor, overridden.shift_factor) == (2.0, 0.0)
    torch.testing.assert_close(overridden.encode(images, _gen()), sample * 2.0)

    sd_style = _vae_codec(sd_style_vae_dir)  # keys left out take AutoencoderKL's defaults
    assert (sd_style.scaling_factor, sd_style.shift_factor) == (0.18215, 0.0)
    torch.testing.assert_close(sd_style.encode(images, _gen()), sample * 0.18215)


def test_latents_from_moments_equal_encode_for_the_same_seed(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir)
    images = torch.rand(3, 3, IMAGE, IMAGE)
    mean, logvar = codec.moments(images)
    assert torch.equal(codec.latents_from_moments(mean, logvar, _gen(7)), codec.encode(images, _gen(7)))
    assert not torch.equal(codec.encode(images, _gen(7)), codec.encode(images, _gen(8)))
    # Stored moments may be half precision; training on them needs the VAE's config but never its weights.
    fresh = _vae_codec(tiny_vae_dir)
    z = fresh.latents_from_moments(mean.half(), logvar.half(), _gen(7))
    assert z.dtype == torch.float32 and z.shape == (3, *LATENT)
    assert fresh._vae is None


def test_decode_inverts_the_scaling_and_returns_images_in_range(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir)
    z = torch.randn(2, *LATENT) * 3
    images = codec.decode(z)
    assert images.shape == (2, 3, IMAGE, IMAGE) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        raw = codec.vae.decode(z / 0.5 + 0.1).sample
    torch.testing.assert_close(images, ((raw + 1) / 2).clamp(0, 1))


def test_vae_is_frozen_in_eval_mode_and_runs_without_grad(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir)
    codec.train()
    assert not codec.vae.training and not any(p.requires_grad for p in codec.vae.parameters())
    images = torch.rand(1, 3, IMAGE, IMAGE, requires_grad=True)
    assert not codec.encode(images).requires_grad
    assert not codec.decode(torch.randn(1, *LATENT, requires_grad=True)).requires_grad


def test_vae_is_not_a_submodule_and_follows_the_codec_device(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir)
    parent = torch.nn.ModuleDict({"codec": codec, "head": torch.nn.Linear(2, 2)})
    vae = codec.vae  # loaded
    assert set(parent.state_dict()) == {"head.weight", "head.bias"}
    assert list(codec.parameters()) == [] and list(codec.state_dict()) == []
    parent.to(torch.float64)  # a dtype cast (a trainer's precision) leaves the frozen VAE alone
    assert next(vae.parameters()).dtype == torch.float32
    parent.to("meta")  # a device move takes the loaded VAE along
    assert codec.device == torch.device("meta") and next(vae.parameters()).device == torch.device("meta")
    # Loaded after the move: placed on the codec's device on first use.
    later = _vae_codec(tiny_vae_dir).to("meta")
    assert later._vae is None and next(later.vae.parameters()).device == torch.device("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_vae_codec_runs_on_the_gpu(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir).to("cuda")
    images = torch.rand(2, 3, IMAGE, IMAGE)
    z_cpu = _vae_codec(tiny_vae_dir).encode(images, _gen(3))
    z_gpu = codec.encode(images.cuda(), _gen(3))  # a CPU generator draws the same noise for any device
    assert z_gpu.device.type == "cuda" and next(codec.vae.parameters()).device.type == "cuda"
    torch.testing.assert_close(z_gpu.cpu(), z_cpu, atol=1e-2, rtol=1e-2)  # cuDNN convolutions may use TF32
    assert codec.decode(z_gpu).device.type == "cuda"


def test_vae_config_mismatch_is_a_one_line_error(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir, latent_channels=16, downsample=8, image_size=32)
    assert codec.latent_shape == (16, 4, 4)  # from the config alone, no VAE needed
    with pytest.raises(CrossFlowError) as err:
        codec.encode(torch.rand(1, 3, 32, 32))
    message = str(err.value)
    assert "\n" not in message
    assert "latent_channels 4 (VAE) vs 16 (codec.latent_channels)" in message
    assert "downsample 2 (VAE) vs 8 (codec.downsample)" in message
    assert codec._vae is None  # refused before any weights are read
    with pytest.raises(CrossFlowError, match=r"channels 3 \(VAE\) vs 1 \(codec.channels\)"):
        _ = _vae_codec(tiny_vae_dir, channels=1).scaling_factor


def test_vae_codec_validates_shapes(tiny_vae_dir: str) -> None:
    codec = _vae_codec(tiny_vae_dir)
    with pytest.raises(ValueError, match=rf"expected images of shape \(B, 3, {IMAGE}, {IMAGE}\)"):
        codec.encode(torch.rand(1, 3, IMAGE * 2, IMAGE * 2))
    with pytest.raises(ValueError, match="expected mean and logvar of shape"):
        codec.latents_from_moments(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="expected mean and logvar of shape"):
        codec.latents_from_moments(torch.zeros(1, *LATENT), torch.zeros(2, *LATENT))
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 4, h, w\)"):
        codec.decode(torch.zeros(1, 3, 8, 8))


def test_missing_vae_folder_is_a_one_line_error(tmp_path: Path, tiny_vae_dir: str) -> None:
    codec = _vae_codec(str(tmp_path / "no_vae_here"))
    with pytest.raises(CrossFlowError, match="cannot load the VAE config from") as err:
        codec.encode(torch.rand(1, 3, IMAGE, IMAGE))
    assert "\n" not in str(err.value)
    with pytest.raises(CrossFlowError, match="needs codec.vae"):
        build_codec(CodecConfig(kind="vae", image_size=IMAGE, downsample=2))


def test_missing_diffusers_is_a_one_line_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real_find_spec(name, *a)
    )
    config = CodecConfig(kind="vae", image_size=IMAGE, vae="some/vae", downsample=2)
    with pytest.raises(CrossFlowError, match=r"needs diffusers: pip install 'crossflow\[vae\]'"):
        build_codec(config)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(CrossFlowError, match=r"pip install 'crossflow\[vae\]'"):
        _ = VAECodec(config).scaling_factor


def test_vae_location_splits_a_hub_subfolder(tmp_path: Path) -> None:
    assert _vae_location("black-forest-labs/FLUX.1-dev/vae") == ("black-forest-labs/FLUX.1-dev", "vae")
    assert _vae_location("stabilityai/sd-vae-ft-ema") == ("stabilityai/sd-vae-ft-ema", None)
    local = tmp_path / "a" / "b"
    local.mkdir(parents=True)
    assert _vae_location(str(local)) == (str(local), None)
