"""Shards written by ``crossflow prepare`` with precomputed members, and their check against a model.

A prepared sample may hold, next to ``txt`` / ``json``:

- ``text.npy`` (L, D) float16 and ``mask.npy`` (L,) bool: the frozen text encoder's token states, so training
  never loads the encoder;
- ``latent.npy`` (2, C, h, w) float16: the VAE posterior's raw mean and log-variance, so training never runs
  the VAE (each step draws a fresh latent from them, as the online codec would);
- ``png``: the image at the training resolution (pixel codec, or kept alongside latents).

``json["prepared"]`` records what produced them (encoder, layer, length, scale; VAE and latent shape). A model
whose config disagrees would train on garbage with no error — :func:`check_prepared` refuses it at start-up.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from crossflow.config import ModelConfig
from crossflow.errors import CrossFlowError

TEXT_KEY, MASK_KEY, LATENT_KEY = "text.npy", "mask.npy", "latent.npy"


def load_npy(data: bytes) -> np.ndarray:
    """A ``.npy`` member -> array; object arrays are refused (``allow_pickle=False``: no code runs)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_precomputed(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The precomputed members of a raw sample as tensors: text_states/text_mask and/or latent_moments."""
    out: dict[str, torch.Tensor] = {}
    if TEXT_KEY in sample:
        if MASK_KEY not in sample:
            raise KeyError(f"{TEXT_KEY} without {MASK_KEY}")
        out["text_states"] = torch.from_numpy(load_npy(sample[TEXT_KEY]).astype(np.float32))
        out["text_mask"] = torch.from_numpy(load_npy(sample[MASK_KEY]).astype(bool))
    if LATENT_KEY in sample:
        out["latent_moments"] = torch.from_numpy(load_npy(sample[LATENT_KEY]).astype(np.float32))
    return out


def prepared_info(sample: dict[str, Any]) -> dict[str, Any] | None:
    """``json["prepared"]`` of a raw sample (None for shards that ``crossflow prepare`` did not write)."""
    if "json" not in sample:
        return None
    try:
        return json.loads(sample["json"]).get("prepared")
    except (ValueError, AttributeError):
        return None


def check_prepared(sample: dict[str, Any], config: ModelConfig, source: str) -> None:
    """Refuse, in one line, shards whose stored text states or latents do not fit ``config``.

    Compares the arrays' shapes with the model (max_length × hidden size; latent shape) and the recorded
    producer (encoder, layer, scale; VAE) with the model's text encoder and codec.
    """
    info = prepared_info(sample) or {}
    problems: list[str] = []
    enc = config.text_encoder
    if TEXT_KEY in sample:
        states = load_npy(sample[TEXT_KEY])
        text = info.get("text") or {}
        hidden = text.get("hidden_size")
        if states.ndim != 2 or states.shape[0] != enc.max_length:
            problems.append(f"text states {tuple(states.shape)} but text_encoder.max_length={enc.max_length}")
        if hidden is not None and states.shape[-1] != hidden:
            problems.append(f"text states width {states.shape[-1]} but the shards record hidden_size {hidden}")
        for field in ("pretrained", "hidden_state_layer", "scale"):
            if field in text and text[field] != getattr(enc, field, None):
                problems.append(f"text_encoder.{field}: shards {text[field]!r} vs model {getattr(enc, field, None)!r}")
    if LATENT_KEY in sample:
        moments = load_npy(sample[LATENT_KEY])
        expected = (2, *config.latent_shape)
        if config.codec.kind != "vae":
            problems.append(f"shards hold VAE latents but the model's codec is {config.codec.kind!r}")
        elif tuple(moments.shape) != expected:
            problems.append(f"latent moments {tuple(moments.shape)} but the model needs {expected} (mean, logvar)")
        latent = info.get("latent") or {}
        if config.codec.kind == "vae" and latent.get("vae") not in (None, config.codec.vae):
            problems.append(f"codec.vae: shards {latent.get('vae')!r} vs model {config.codec.vae!r}")
    elif info.get("image_size") not in (None, config.codec.image_size):  # pixels, encoded online

        problems.append(f"images prepared at {info['image_size']} px but codec.image_size={config.codec.image_size}")
    if problems:
        raise CrossFlowError(f"prepared shards {source} do not match the model config: " + "; ".join(problems))
