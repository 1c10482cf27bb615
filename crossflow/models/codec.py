"""Image <-> latent codecs. The flow runs between z_text and the codec's latent z_image.

``pixel``: the latent is the image itself, scaled to [-1, 1]. ``vae``: a frozen diffusers ``AutoencoderKL``
(SD 1.x/2.x, SDXL, FLUX, ...); its latent is scaled as the latent diffusion models do, z = (sample - shift) * scale,
so that z_image is roughly unit-variance like the VE's z_text.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from crossflow.errors import CrossFlowError

VAE_INSTALL_HINT = "pip install 'crossflow[vae]'"


@dataclass
class CodecConfig:
    """How images become the flow's target latents."""

    kind: Literal["pixel", "vae"] = "pixel"
    """``pixel``: the latent is the image scaled to [-1, 1]; ``vae``: a KL autoencoder's latent (SD-style)."""
    image_size: int = 32
    """Training resolution S in pixels (images are S×S)."""
    channels: int = 3
    """Image channels."""
    vae: str | None = None
    """For ``kind: vae``: a diffusers AutoencoderKL folder, a hub id, or ``ORG/NAME/SUBFOLDER`` for a VAE inside
    a pipeline repository (e.g. ``black-forest-labs/FLUX.1-dev/vae``). Loaded on first use, never checkpointed."""
    latent_channels: int = 4
    """For ``kind: vae``: latent channels of the autoencoder (SD / SDXL: 4, FLUX: 16); checked against the VAE."""
    downsample: int = 8
    """For ``kind: vae``: spatial downsampling factor of the autoencoder; checked against the VAE."""
    scaling_factor: float | None = None
    """For ``kind: vae``: z = (sample - shift) * scaling_factor. None = the VAE config's value
    (SD 1.x/2.x 0.18215, SDXL 0.13025, FLUX 0.3611)."""
    shift_factor: float | None = None
    """For ``kind: vae``: see ``scaling_factor``. None = the VAE config's value (FLUX 0.1159; SD / SDXL none = 0)."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of z_image — and therefore of z_text. From the config alone: it sizes the model."""
        if self.kind == "pixel":
            return (self.channels, self.image_size, self.image_size)
        if self.image_size % self.downsample:
            raise CrossFlowError(f"image_size {self.image_size} is not divisible by the VAE downsampling {self.downsample}")
        side = self.image_size // self.downsample
        return (self.latent_channels, side, side)


class Codec(nn.Module):
    """What the trainer and the pipeline use: images in [0, 1] <-> latents z_image of shape ``latent_shape``."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config

    latent_bounds: tuple[float, float] | None = None
    """The range every decoded image's latent lies in, where the image file clips (the pixel codec: [-1, 1]); None
    for a latent space without one (a VAE's)."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, S, S) in [0, 1] -> z_image (B, *latent_shape); ``generator`` draws any posterior noise."""
        raise NotImplementedError

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> the raw posterior (mean, logvar), what ``crossflow prepare`` stores in shards."""
        raise NotImplementedError

    def latents_from_moments(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Stored (mean, logvar) -> z_image, exactly as ``encode`` would give with the same noise."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """z (B, *latent_shape) -> images in [0, 1] (clamped)."""
        raise NotImplementedError

    def _check_images(self, images: torch.Tensor) -> None:
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")


class PixelCodec(Codec):
    """Identity codec in pixel space: images in [0, 1] <-> latents in [-1, 1] of shape (C, S, S)."""

    latent_bounds = (-1.0, 1.0)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, S, S) in [0, 1] -> z_image in [-1, 1] (deterministic: ``generator`` is unused)."""
        self._check_images(images)
        return images * 2.0 - 1.0

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise CrossFlowError("the pixel codec has no latent distribution; store pixels")

    def latents_from_moments(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        raise CrossFlowError("the pixel codec has no latent distribution; store pixels")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """z (B, C, S, S) -> images in [0, 1] (clamped)."""
        return ((latents + 1.0) * 0.5).clamp(0.0, 1.0)


def _import_autoencoder_kl() -> Any:
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise CrossFlowError(f"codec kind 'vae' needs diffusers: {VAE_INSTALL_HINT}") from err
    return AutoencoderKL


def _vae_location(spec: str) -> tuple[str, str | None]:
    """(folder or hub id, subfolder): ``ORG/NAME/SUB`` that is not a local path names a hub repo's subfolder."""
    if os.path.exists(spec) or spec.startswith(("/", ".", "~")) or spec.count("/") < 2:
        return spec, None
    org, name, subfolder = spec.split("/", 2)
    return f"{org}/{name}", subfolder


class VAECodec(Codec):
    """A frozen diffusers ``AutoencoderKL``: z = (sample - shift) * scale of its posterior (LDM convention).

    The VAE is loaded on first use and is *not* a submodule: it never enters ``state_dict()`` or checkpoints,
    and training on precomputed moments (``latents_from_moments``) only reads its config.json, never its
    weights. It follows the codec's device: ``.to(device)`` on any parent moves it (see ``_apply``).
    """

    def __init__(self, config: CodecConfig) -> None:
        super().__init__(config)
        if not config.vae:
            raise CrossFlowError("codec kind 'vae' needs codec.vae: a diffusers AutoencoderKL folder or hub id")
        # Zero-size and not persistent: only tells where the codec lives (moved by the parent's `.to`).
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        object.__setattr__(self, "_vae", None)  # bypass nn.Module: not a registered submodule
        object.__setattr__(self, "_vae_config", None)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def _apply(self, fn: Any, recurse: bool = True) -> VAECodec:
        # `.to(device)` / `.cuda()` on a parent reach here; move a loaded VAE along, but only its device:
        # dtype casts (e.g. a trainer's bf16-true precision) must not touch the frozen fp32 VAE.
        super()._apply(fn, recurse)
        if self._vae is not None:
            self._vae.to(self.device)
        return self

    def _read_config(self) -> dict[str, Any]:
        """The VAE's config.json, checked against CodecConfig; cached. Needs no weights."""
        if self._vae_config is None:
            autoencoder_kl = _import_autoencoder_kl()
            path, subfolder = _vae_location(self.config.vae)
            try:
                raw = dict(autoencoder_kl.load_config(path, subfolder=subfolder))
            except (OSError, ValueError) as err:  # missing folder, unknown hub id offline, bad repo id
                raise CrossFlowError(
                    f"cannot load the VAE config from {self.config.vae!r}: not a diffusers AutoencoderKL folder or known hub id"
                ) from err
            # Keys a config leaves out take AutoencoderKL's defaults, as from_pretrained would.
            defaults = {k: p.default for k, p in inspect.signature(autoencoder_kl.__init__).parameters.items()}
            vae_config = {**defaults, **raw}
            self._check_config(vae_config)
            object.__setattr__(self, "_vae_config", vae_config)
        return self._vae_config

    def _check_config(self, vae_config: dict[str, Any]) -> None:
        class_name = vae_config.get("_class_name", "AutoencoderKL")
        if class_name != "AutoencoderKL":
            raise CrossFlowError(f"VAE {self.config.vae!r} is a {class_name}, not an AutoencoderKL")
        found = {
            "latent_channels": int(vae_config["latent_channels"]),
            "downsample": 2 ** (len(vae_config["block_out_channels"]) - 1),
            "channels": int(vae_config["in_channels"]),
        }
        differs = [
            f"{name} {value} (VAE) vs {getattr(self.config, name)} (codec.{name})"
            for name, value in found.items()
            if value != getattr(self.config, name)
        ]
        if int(vae_config["out_channels"]) != int(vae_config["in_channels"]):
            differs.append(f"the VAE maps {vae_config['in_channels']} to {vae_config['out_channels']} channels")
        if differs:
            raise CrossFlowError(f"VAE {self.config.vae!r} does not match the codec config: {'; '.join(differs)}")

    @property
    def scaling_factor(self) -> float:
        """The configured scale, else the VAE config's (reads config.json only)."""
        if self.config.scaling_factor is not None:
            return float(self.config.scaling_factor)
        return float(self._read_config()["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        """The configured shift, else the VAE config's (None there means 0)."""
        if self.config.shift_factor is not None:
            return float(self.config.shift_factor)
        return float(self._read_config().get("shift_factor") or 0.0)

    @property
    def vae(self) -> nn.Module:
        """The frozen AutoencoderKL on the codec's device, loaded on first access."""
        if self._vae is None:
            self._read_config()  # a mismatch is reported before any weights are read
            path, subfolder = _vae_location(self.config.vae)
            try:
                vae = _import_autoencoder_kl().from_pretrained(path, subfolder=subfolder)
            except (OSError, ValueError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise CrossFlowError(f"cannot load the VAE weights from {self.config.vae!r}: {reason}") from err
            vae.requires_grad_(False)
            vae.eval()  # never switched back: the codec's train() does not reach it (not a submodule)
            object.__setattr__(self, "_vae", vae)
        if self._vae.device != self.device:
            self._vae.to(self.device)
        return self._vae

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, S, S) in [0, 1] -> the raw posterior (mean, logvar) (B, C', h, w), float32, unscaled."""
        self._check_images(images)
        vae = self.vae
        # Outside autocast: the fp32 VAE gives the same moments as `crossflow prepare` stored, whatever the
        # trainer's precision.
        with torch.autocast(device_type=self.device.type, enabled=False):
            x = images.to(self.device, torch.float32) * 2.0 - 1.0  # AutoencoderKL works on [-1, 1]
            posterior = vae.encode(x).latent_dist
        return posterior.mean.float().to(images.device), posterior.logvar.float().to(images.device)

    @torch.no_grad()
    def latents_from_moments(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(mean, logvar) (B, C', h, w) -> z = (mean + exp(logvar / 2) * eps - shift) * scale, float32.

        A fresh posterior sample each call, as online encoding would draw; needs the VAE's config, not its weights.
        """
        expected = self.latent_shape
        if mean.ndim != 4 or tuple(mean.shape[1:]) != expected or logvar.shape != mean.shape:
            raise ValueError(
                f"expected mean and logvar of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(mean.shape)} and {tuple(logvar.shape)}"
            )
        mean, logvar = mean.float(), logvar.float().clamp(-30.0, 20.0)  # diffusers' clamp, for stored moments
        # Noise is drawn on the generator's device, so one generator gives the same latents on any device.
        noise_device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32).to(mean.device)
        sample = mean + torch.exp(0.5 * logvar) * eps
        return (sample - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, S, S) in [0, 1] -> z_image (B, *latent_shape): a posterior sample drawn with ``generator``."""
        mean, logvar = self.moments(images)
        return self.latents_from_moments(mean, logvar, generator=generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """z (B, C', h, w) -> images (B, C, h·f, w·f) in [0, 1] (clamped), float32, on the input's device."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected latents of shape (B, {self.config.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        vae = self.vae
        with torch.autocast(device_type=self.device.type, enabled=False):
            z = latents.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
            images = vae.decode(z).sample
        return ((images.float() + 1.0) * 0.5).clamp(0.0, 1.0).to(latents.device)


def build_codec(config: CodecConfig) -> Codec:
    """The codec named by ``config.kind``."""
    if config.kind == "pixel":
        return PixelCodec(config)
    if config.kind == "vae":
        # Fail at build time, not at the first sample grid, when the optional extra is missing.
        if importlib.util.find_spec("diffusers") is None:
            raise CrossFlowError(f"codec kind 'vae' needs diffusers: {VAE_INSTALL_HINT}")
        return VAECodec(config)
    raise CrossFlowError(f"unknown codec kind {config.kind!r}; expected 'pixel' or 'vae'")
