"""Image <-> latent codecs. The flow runs between z_text and the codec's latent z_image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from crossflow.errors import CrossFlowError


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
    """For ``kind: vae``: a diffusers AutoencoderKL folder or hub id."""
    latent_channels: int = 4
    """For ``kind: vae``: latent channels of the autoencoder."""
    downsample: int = 8
    """For ``kind: vae``: spatial downsampling factor of the autoencoder."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of z_image — and therefore of z_text."""
        if self.kind == "pixel":
            return (self.channels, self.image_size, self.image_size)
        if self.image_size % self.downsample:
            raise CrossFlowError(f"image_size {self.image_size} is not divisible by the VAE downsampling {self.downsample}")
        side = self.image_size // self.downsample
        return (self.latent_channels, side, side)


class PixelCodec(nn.Module):
    """Identity codec in pixel space: images in [0, 1] <-> latents in [-1, 1] of shape (C, S, S)."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) in [0, 1] -> z_image in [-1, 1]."""
        expected = self.latent_shape
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(images.shape)}")
        return images * 2.0 - 1.0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """z (B, C, S, S) -> images in [0, 1] (clamped)."""
        return ((latents + 1.0) * 0.5).clamp(0.0, 1.0)


def build_codec(config: CodecConfig) -> PixelCodec:
    """The codec named by ``config.kind``."""
    if config.kind == "pixel":
        return PixelCodec(config)
    if config.kind == "vae":
        # The config format is fixed now so paper-scale recipes can be written down and parsed; the
        # diffusers AutoencoderKL codec itself is the next step of the roadmap (the "your own data" issue).
        raise CrossFlowError("codec kind 'vae' is not available in this version yet; use kind: pixel")
    raise CrossFlowError(f"unknown codec kind {config.kind!r}; expected 'pixel' or 'vae'")
