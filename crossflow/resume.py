"""Exact resume on many ranks: each rank's data position and RNG states, gathered into the one checkpoint.

Lightning saves the *rank-0* loop state only (the data position of a ``StatefulDataLoader`` included)
and no RNG state. On save, every rank contributes its own part and rank 0's checkpoint holds the list;
on load, each rank puts its own part back. The training step itself draws its randomness from a
generator seeded by (seed, rank, step) (``CrossFlowLitModule.step_generator``), so the losses after a
resume do not depend on RNG state at all; the global RNG states are restored for everything else.
"""

from __future__ import annotations

import io
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn

PER_RANK_KEY = "crossflow_per_rank"


def _loader_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Where Lightning keeps the training dataloader's state inside a checkpoint."""
    return checkpoint.setdefault("loops", {}).setdefault("fit_loop", {}).setdefault("state_dict", {})


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def gather_rank_states(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Called on every rank while saving: ``checkpoint[PER_RANK_KEY]`` = [rank 0's part, rank 1's, ...]."""
    own = {"data": _loader_state(checkpoint).get("combined_loader"), "rng": _plain(rng_states())}
    if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
        # Tensors inside all_gather_object's pickles do not survive the trip: send torch.save bytes.
        buffer = io.BytesIO()
        torch.save(own, buffer)
        blobs: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(blobs, buffer.getvalue())
        parts = [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]
    else:
        parts = [own]
    checkpoint[PER_RANK_KEY] = parts


def restore_rank_state(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """Called on every rank while loading: put this rank's data position in place; return its RNG states."""
    parts = checkpoint.get(PER_RANK_KEY)
    if not parts:
        return None
    loop = _loader_state(checkpoint)
    if len(parts) != trainer.world_size:
        rank_zero_warn(
            f"resuming on {trainer.world_size} ranks a run saved on {len(parts)}: the data position cannot be"
            " mapped, so each rank starts the current epoch's data from the beginning"
        )
        loop.pop("combined_loader", None)
        return None
    own = parts[trainer.global_rank]
    if own["data"] is not None:
        loop["combined_loader"] = own["data"]
    return _unplain(own["rng"])


def _plain(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors, lists and ints only, so the checkpoint loads with ``weights_only=True``."""
    out = dict(states)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    out["numpy"] = [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)]
    version, internal, gauss = states["python"]
    out["python"] = [int(version), list(internal), gauss]
    return out


def _unplain(states: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_plain`."""
    out = dict(states)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    out["numpy"] = (kind, keys.numpy(), pos, has_gauss, cached)
    version, internal, gauss = states["python"]
    out["python"] = (version, tuple(internal), gauss)
    return out
