"""The model configuration: everything needed to rebuild a CrossFlow model (saved as ``config.json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from crossflow.errors import CrossFlowError
from crossflow.flow import Prediction
from crossflow.models.baseline import NoiseBaselineConfig
from crossflow.models.codec import CodecConfig
from crossflow.models.text_encoder import TextEncoderConfig
from crossflow.models.transformer import FlowTransformerConfig
from crossflow.models.variational import VariationalEncoderConfig


@dataclass
class ModelConfig:
    """A CrossFlow model: frozen text encoder -> VE -> z_text -> flow transformer -> z_image -> codec."""

    kind: Literal["crossflow", "noise_baseline"] = "crossflow"
    """Which network: ``crossflow`` (text latent -> image, the paper's) or ``noise_baseline`` (Gaussian noise ->
    image with the text as a condition; models/baseline.py, configured by ``baseline``). The baseline ignores
    ``variational`` and ``alignment_dim``; CrossFlow ignores ``baseline``."""
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """The frozen prompt encoder."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    """Image <-> latent codec; fixes the latent shape (C, H, W) that z_text must match."""
    variational: VariationalEncoderConfig = field(default_factory=VariationalEncoderConfig)
    """The Variational Encoder (tokens -> μ, log σ²)."""
    preset: str = "tiny"
    """Flow transformer size: micro, tiny, small, base, large or xl (see models/transformer.py PRESETS)."""
    patch_size: int = 4
    """Latent patch side for the flow transformer."""
    alignment_dim: int = 256
    """Shared embedding size of the contrastive alignment loss."""
    sigma_min: float = 1e-5
    """σ_min of the path x_t = t·z_image + (1 − (1 − σ_min)·t)·z_text."""
    pixel_head: int = 0
    """Channels of the flow transformer's convolutional output head (0 = linear unpatchify, the paper's;
    FlowTransformerConfig.pixel_head)."""
    prediction: Prediction = "velocity"
    """What the flow transformer outputs: ``velocity`` (the paper) or ``data``, the image endpoint, turned
    into a velocity by flow.velocity_from_data (trained with the same velocity loss)."""
    baseline: NoiseBaselineConfig = field(default_factory=NoiseBaselineConfig)
    """Text conditioning of the noise baseline (``kind: noise_baseline`` only)."""

    def transformer_config(self) -> FlowTransformerConfig:
        """The preset with its derived sizes (latent channels and size from the codec)."""
        c, h, _ = self.latent_shape
        return FlowTransformerConfig.from_preset(
            self.preset, in_channels=c, input_size=h, patch_size=self.patch_size, pixel_head=self.pixel_head
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) shared by z_text and z_image, fixed by the codec."""
        return self.codec.latent_shape

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another version). Fields a
        config predates (``kind``, ``baseline``, ...) take their defaults: an old checkpoint is CrossFlow."""
        nested = {
            "text_encoder": TextEncoderConfig, "codec": CodecConfig, "variational": VariationalEncoderConfig,
            "baseline": NoiseBaselineConfig,
        }
        try:
            kwargs = {k: nested[k](**v) if k in nested else v for k, v in data.items()}
            return cls(**kwargs)
        except TypeError as err:
            raise CrossFlowError(f"invalid CrossFlow model config: {err}") from err


def config_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Human-readable list of fields that differ between two model configs (for mismatch errors)."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
