"""Which reader slot reads which shards, and how many samples, in an epoch: pure functions of the seed,
the epoch and the slots, so every rank computes the same plan without talking to the others.

A *slot* is one reader: a DataLoader worker of a rank, numbered ``rank * num_workers + worker`` over all
ranks. Every rank must yield the same number of batches (uneven counts hang DDP), so each slot gets a
*quota* of samples.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch.distributed as dist


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size): torch.distributed when initialised, else env RANK / WORLD_SIZE, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass(frozen=True)
class Slot:
    """One reader: a worker of a rank."""

    rank: int
    world_size: int
    worker: int
    num_workers: int

    @property
    def index(self) -> int:
        """This slot's number over all ranks."""
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        """Slots over all ranks."""
        return self.world_size * self.num_workers


def seeded_rng(*parts: object) -> random.Random:
    """A generator seeded from ``parts``: a str seed is hashed with SHA-512, the same in every process
    (unlike ``hash()``)."""
    return random.Random(":".join(map(str, parts)))


def shard_assignment(num_shards: int, num_slots: int, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """Shard indices per slot for one epoch: one order from (seed, epoch) for all ranks, strided over slots,
    so each shard is read by exactly one slot."""
    order = list(range(num_shards))
    if shuffle:
        seeded_rng(seed, "order", epoch).shuffle(order)
    return [order[s::num_slots] for s in range(num_slots)]


def equalise(slot_counts: Sequence[int], num_workers: int, batch_size: int) -> list[int]:
    """Per-slot quotas in whole batches such that every rank (``num_workers`` consecutive slots) gets the
    same number of batches: the smallest rank's. A rank's largest slots give up batches first, so its
    workers stay balanced."""
    batches = [count // batch_size for count in slot_counts]
    ranks = [batches[r : r + num_workers] for r in range(0, len(batches), num_workers)]
    target = min(sum(rank) for rank in ranks)
    for rank in ranks:
        for _ in range(sum(rank) - target):
            rank[rank.index(max(rank))] -= 1
    return [b * batch_size for rank in ranks for b in rank]


def split_quota(samples_per_rank: int, num_workers: int, batch_size: int) -> list[int]:
    """A rank's fixed epoch length (whole batches) spread evenly over its workers."""
    batches = samples_per_rank // batch_size
    return [(batches // num_workers + (w < batches % num_workers)) * batch_size for w in range(num_workers)]
