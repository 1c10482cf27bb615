"""Read image + caption samples from any webdataset shards (no Lightning here).

Traps handled (DESIGN.md, webdataset 1.0.2): the default nodesplitter raises with world size > 1, so
shards are split by node *and* worker; the default handler re-raises on a corrupt sample, so corrupt
samples are skipped and *counted* — every yielded sample carries how many were skipped before it in its
worker, so a batch's sum is an exact running tally in the training process.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from crossflow.errors import CrossFlowError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
CAPTION_KEYS = ("txt", "caption")


def expand_shards(pattern: str | list[str]) -> list[str]:
    """Brace patterns (``data/shapes-{000000..000009}.tar``), globs or lists -> existing shard paths, sorted.

    Raises a one-line :class:`CrossFlowError` when nothing matches: the usual cause of a DDP job that
    hangs or of an "empty epoch" long after start-up.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    urls: list[str] = []
    for p in patterns:
        for expanded in braceexpand(p):
            if "://" in expanded or expanded.startswith("pipe:"):
                urls.append(expanded)  # remote / piped shards: cannot be checked up front
            elif os.path.isdir(expanded):
                urls += sorted(glob.glob(os.path.join(expanded, "*.tar")))
            elif any(ch in expanded for ch in "*?["):
                urls += sorted(glob.glob(expanded))
            elif os.path.exists(expanded):
                urls.append(expanded)
    if not urls:
        raise CrossFlowError(f"no webdataset shards match {pattern!r}")
    return urls


class _SkipCounter:
    """Per-process count of samples dropped by the tar reader (truncated tars, unreadable members)."""

    def __init__(self) -> None:
        self.pending = 0

    def handler(self, exn: Exception) -> bool:
        self.pending += 1
        log.warning("skipping corrupt webdataset data: %s", exn)
        return True  # continue with the next sample / shard

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n


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


def _decode_samples(source: Iterable[dict[str, Any]], image_size: int, counter: _SkipCounter) -> Iterator[dict[str, Any]]:
    for sample in source:
        try:
            image_key = next((k for k in IMAGE_KEYS if k in sample), None)
            if image_key is None:
                raise KeyError(f"no image member ({', '.join(IMAGE_KEYS)})")
            caption = caption_of(sample)
            if not caption:
                raise ValueError("empty caption")
            image = decode_image(sample[image_key], image_size)
        except Exception as exn:  # a corrupt sample must never stop training
            counter.handler(ValueError(f"{sample.get('__key__', '?')} in {sample.get('__url__', '?')}: {exn}"))
            continue
        yield {"image": image, "caption": caption, "skipped": counter.take()}


def image_text_dataset(
    shards: str | list[str],
    image_size: int,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    shuffle: bool = True,
) -> wds.WebDataset:
    """An iterable of {"image": (3, S, S) float, "caption": str, "skipped": int} from webdataset shards."""
    urls = expand_shards(shards)
    counter = _SkipCounter()
    dataset = wds.WebDataset(
        urls,
        handler=counter.handler,
        shardshuffle=len(urls) if shuffle else False,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        empty_check=False,
        seed=seed,
    )
    if shuffle and shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 500))
    return dataset.compose(lambda src: _decode_samples(src, image_size, counter))
