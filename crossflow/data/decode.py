"""A raw webdataset sample (member bytes by extension) -> image tensor + caption, or an exception.

Any sample with an image (``png``/``jpg``/``jpeg``/``webp``) and a caption (``txt``, ``caption`` or a
``json`` member's "caption" field) works, and so do ``crossflow prepare`` shards with precomputed text
states and/or VAE latents; the caller skips and counts the samples that raise.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from crossflow.data.precomputed import decode_precomputed

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
CAPTION_KEYS = ("txt", "caption")


def decode_image(data: bytes, image_size: int) -> torch.Tensor:
    """Encoded image -> float (3, S, S) in [0, 1]; other sizes are resized (shorter side) and centre-cropped."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (image_size, image_size):
        w, h = img.size
        scale = image_size / min(w, h)
        img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def caption_of(sample: dict[str, Any]) -> str:
    """The caption from ``txt`` / ``caption`` members or a ``json`` member's "caption" field."""
    for key in CAPTION_KEYS:
        if key in sample:
            return sample[key].decode("utf-8").strip()
    if "json" in sample:
        return str(json.loads(sample["json"]).get("caption", "")).strip()
    raise KeyError("no caption member (txt, caption or json['caption'])")


BLEND_KEY = "blend.json"


def blend_of(sample: dict[str, Any]) -> dict[str, Any]:
    """A ``blend.json`` member -> {"blend_caption", "blend_alpha"} (crossflow.data.shapes.Blend): the flow of
    this sample starts at α of the way from its caption's VE posterior to B's. No member, or α = 0 (B's caption
    may then be absent), is a plain sample: every sample gets both keys, so blend and plain shards mix in a batch."""
    if BLEND_KEY not in sample:
        return {"blend_caption": "", "blend_alpha": torch.tensor(0.0)}
    record = json.loads(sample[BLEND_KEY])
    alpha = float(record.get("alpha", float("nan")))
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{BLEND_KEY}: alpha must be in [0, 1], got {record.get('alpha')!r}")
    other = str(record.get("caption", "")).strip()
    if alpha > 0 and not other:
        raise ValueError(f"{BLEND_KEY}: alpha {alpha} > 0 but no caption to blend with")
    return {"blend_caption": other, "blend_alpha": torch.tensor(alpha)}


def decode_sample(sample: dict[str, Any], image_size: int) -> dict[str, Any]:
    """Raw tar sample -> {"image", "caption", "key"} plus any precomputed members (text_states, text_mask,
    latent_moments: see :mod:`crossflow.data.precomputed`) and a blend (:func:`blend_of`); raises on anything
    unusable. The caption is checked first and precomputed latents replace the image: the image decode is the
    expensive part."""
    caption = caption_of(sample)
    if not caption:
        raise ValueError("empty caption")
    out = {"caption": caption, "key": f"{os.path.basename(sample['__url__'])}/{sample['__key__']}"}
    out.update(decode_precomputed(sample))
    out.update(blend_of(sample))
    if "latent_moments" not in out:
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None:
            raise KeyError(f"no image member ({', '.join(IMAGE_KEYS)})")
        out["image"] = decode_image(sample[image_key], image_size)
    return out
