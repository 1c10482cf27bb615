"""Image <-> latent codecs. The flow runs between z_text and the codec's latent z_image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class CodecConfig:
    """How images become the flow's target latents."""

    kind: Literal["pixel"] = "pixel"
    """``pixel``: the latent is the image itself, scaled to [-1, 1] (a VAE codec comes later)."""
    image_size: int = 32
    """Training resolution S (images are S×S)."""
    channels: int = 3
    """Image channels."""


class PixelCodec(nn.Module):
    """Identity codec in pixel space: images in [0, 1] <-> latents in [-1, 1] of shape (C, S, S)."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.image_size, self.config.image_size)

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
    raise ValueError(f"unknown codec kind {config.kind!r}; expected 'pixel'")
