"""LightningDataModule over webdataset shards (any shards with an image and a caption).

Training reads whole shards per reader slot (rank × worker) with equalised epochs, through a
``torchdata`` ``StatefulDataLoader`` whose ``state_dict()`` is this rank's exact data position;
validation splits samples over slots in a fixed order (see :mod:`crossflow.data.pipeline`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from crossflow.data.pipeline import ShardStream, count_shards, expand_shards, is_local, read_shard
from crossflow.data.plan import dist_rank_world
from crossflow.data.shapes import P_OMIT
from crossflow.errors import CrossFlowError

GENERATION_RECORD = "generated.json"
"""Written beside generated shapes shards: the generation settings, checked when the folder is reused."""

log = logging.getLogger(__name__)


@dataclass
class ShapesGeneration:
    """Generate the embedded shapes dataset into the shard folders when they are empty."""

    num_train: int = 20000
    """Training samples to generate."""
    num_val: int = 1000
    """Validation samples to generate (a different seed)."""
    seed: int = 0
    """Generator seed for training shards (validation uses seed + 1; evaluation prompts use another)."""
    samples_per_shard: int = 5000
    """Samples per tar shard."""
    holdout: list[dict[str, str]] = field(default_factory=list)
    """Attribute combinations never generated, e.g. ``[{color: green, shape: triangle}]`` (compositional
    generalisation; configs/data/holdout_combos.yaml). Applies to train and validation shards alike."""
    blend_fraction: float = 0.0
    """Fraction of the *training* samples drawn between two captions that differ in colour, position or size,
    rendered that far between them (crossflow.data.shapes.Blend; configs/data/blend.yaml): the flow learns images
    for the latents that interpolation walks through. Validation shards have none. 0 = the dataset as specified
    in DESIGN.md."""
    p_omit_size: float = P_OMIT
    """How often a caption leaves the size out (then the object's size is whatever was drawn): DESIGN.md's 0.15.
    Higher values train the flow on more under-specified captions (configs/data/omit.yaml)."""
    p_omit_position: float = P_OMIT
    """How often a caption leaves the position out, independently of the size."""
    supersample: int = 1
    """Samples per pixel side when rendering. 1 (DESIGN.md's spec) fills a pixel when its centre is inside the
    shape; N > 1 gives each pixel the fraction of its N x N samples inside, anti-aliasing the outline so the image
    moves smoothly with the jittered centre (configs/data/antialias.yaml; docs/experiments.md measured it)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.blend_fraction < 1.0:
            raise CrossFlowError(f"generate_shapes.blend_fraction must be in [0, 1), got {self.blend_fraction}")
        for name in ("p_omit_size", "p_omit_position"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CrossFlowError(f"generate_shapes.{name} must be in [0, 1], got {getattr(self, name)}")
        if isinstance(self.supersample, bool) or not isinstance(self.supersample, int) or self.supersample < 1:
            raise CrossFlowError(f"generate_shapes.supersample must be an integer >= 1, got {self.supersample!r}")


class TrainLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` whose ``state_dict()`` can describe the last batch *trained on*.

    Lightning's data fetcher pulls one batch ahead (to know which batch is the last), so the live
    state, which Lightning saves in checkpoints, includes a batch no step has seen: a resume would skip
    it. Once a consumer reports batches with :meth:`mark_consumed` (the datamodule does, for each batch
    entering a training step), ``state_dict()`` returns the state right after the last consumed batch;
    without reports it is the live state.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls an API torch 2.13 deprecates; harmless
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(*args, **kwargs)
        self._states: deque[tuple[int, dict[str, Any]]] = deque(maxlen=8)  # (batches yielded, state after)
        self._yielded = self._consumed = 0
        self._reported = False

    def __iter__(self) -> Iterator[Any]:
        return self._tracked(super().__iter__())

    def _tracked(self, batches: Iterator[Any]) -> Iterator[Any]:
        self._yielded = self._consumed = 0
        self._states.clear()
        self._states.append((0, copy.deepcopy(super().state_dict())))
        for batch in batches:
            self._yielded += 1
            self._states.append((self._yielded, copy.deepcopy(super().state_dict())))
            yield batch

    def mark_consumed(self) -> None:
        """One more batch of the current iteration has been used (in yield order)."""
        self._consumed += 1
        self._reported = True

    def state_dict(self) -> dict[str, Any]:
        if self._reported and self._consumed < self._yielded:
            for count, state in self._states:
                if count == self._consumed:
                    return state
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._yielded = self._consumed = 0
        self._states.clear()
        super().load_state_dict(state_dict)


class ShardDataModule(pl.LightningDataModule):
    """Train / validation loaders over webdataset shards, exact over many ranks and resumable."""

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | None = None,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 1,
        shuffle_buffer: int = 2000,
        seed: int = 0,
        generate_shapes: ShapesGeneration | None = None,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
    ) -> None:
        """
        Args:
            train_shards: Shard folder, glob or brace pattern (``data/shapes/train/shapes-{000000..000007}.tar``),
                or a list of them (e.g. your data and a replay subset of the pre-training data).
            val_shards: Same for validation; None disables the validation loss.
            image_size: Images are decoded (and resized/cropped if needed) to S×S.
            batch_size: Per-device batch size.
            num_workers: DataLoader worker processes per device.
            shuffle_buffer: Samples held in the shuffle buffer (per worker).
            seed: Seed of shard order and sample shuffling.
            generate_shapes: If set and the shard folders are empty, write the shapes dataset there first.
            resampled: Draw training shards with replacement, an endless stream deterministic from
                (seed, epoch, rank, worker); epochs are ``samples_per_epoch`` long. Works with any number of
                shards.
            samples_per_epoch: Training samples per rank per epoch (rounded down to whole batches). Needed
                for ``resampled`` and for remote (``http://``, ``pipe:``) shards, which cannot be counted up
                front; otherwise every rank gets the same share of the counted samples (the smallest rank's).
        """
        super().__init__()
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.generate_shapes = generate_shapes
        self.resampled = resampled
        self.samples_per_epoch = samples_per_epoch
        self._train: ShardStream | None = None
        self._val: ShardStream | None = None
        self._train_loader: TrainLoader | None = None

    def prepare_data(self) -> None:
        gen = self.generate_shapes
        if gen is None:
            return
        for shards, num, seed, blend in ((self.train_shards, gen.num_train, gen.seed, gen.blend_fraction),
                                         (self.val_shards, gen.num_val, gen.seed + 1, 0.0)):
            if shards is None:
                continue
            if not isinstance(shards, str) or not (os.path.isdir(shards) or not os.path.exists(shards)):
                raise CrossFlowError(f"generate_shapes needs shard *folders*, got {shards!r}")
            # What was generated is recorded beside the shards, so a folder written with other settings (another
            # holdout, say) is refused instead of silently trained on.
            wanted = {"num": num, "seed": seed, "image_size": self.image_size, "holdout": gen.holdout}
            if blend:  # recorded only when used: folders generated before blends existed still match
                wanted["blend_fraction"] = blend
            for name in ("p_omit_size", "p_omit_position"):  # likewise, only when not the spec's
                if getattr(gen, name) != P_OMIT:
                    wanted[name] = getattr(gen, name)
            if gen.supersample != 1:
                wanted["supersample"] = gen.supersample
            record = os.path.join(shards, GENERATION_RECORD)
            if os.path.isdir(shards) and any(f.endswith(".tar") for f in os.listdir(shards)):
                if os.path.exists(record):
                    with open(record) as f:
                        found = json.load(f)
                    if found != wanted:
                        raise CrossFlowError(
                            f"{shards} holds shapes shards generated with {found}, but generate_shapes asks for "
                            f"{wanted}; point data.*_shards at another folder or delete this one"
                        )
                continue
            from crossflow.data.shards import write_shapes_shards

            write_shapes_shards(shards, num, seed=seed, samples_per_shard=gen.samples_per_shard,
                                image_size=self.image_size, holdout=gen.holdout, blend_fraction=blend,
                                p_omit_size=gen.p_omit_size, p_omit_position=gen.p_omit_position,
                                supersample=gen.supersample)
            with open(record, "w") as f:
                json.dump(wanted, f)

    def setup(self, stage: str | None = None) -> None:
        """Check the shards against the world size and count them: every problem surfaces here, at start-up."""
        if stage in (None, "fit"):
            self._train = self._train_stream()
        if stage in (None, "fit", "validate") and self.val_shards is not None:
            self._val = self._val_stream()

    def _train_stream(self) -> ShardStream:
        urls = expand_shards(self.train_shards)
        rank, world = dist_rank_world()
        workers = max(1, self.num_workers)
        self._check_train_options(urls, world, workers)
        counts = count_shards(urls) if all(is_local(url) for url in urls) else None
        stream = ShardStream(
            urls, self.image_size, counts=counts, shuffle=True, shuffle_buffer=self.shuffle_buffer, seed=self.seed,
            split="shards", batch_size=self.batch_size, num_workers=self.num_workers, equalise=True,
            resampled=self.resampled, samples_per_epoch=self.samples_per_epoch, rank=rank, world_size=world,
        )
        per_rank = stream.samples_per_rank(0)
        if not per_rank:
            raise CrossFlowError(
                f"{sum(counts or [])} training samples in {len(urls)} shard(s) are too few for one batch of "
                f"{self.batch_size} per rank ({world} rank(s) × {workers} worker(s)): lower data.batch_size"
            )
        if rank == 0:
            self._log_epoch(stream, counts, per_rank, world)
        return stream

    def _check_train_options(self, urls: list[str], world: int, workers: int) -> None:
        """One-line refusals of set-ups that would hang or cannot be planned."""
        if self.samples_per_epoch is not None and self.samples_per_epoch < self.batch_size:
            raise CrossFlowError(f"samples_per_epoch={self.samples_per_epoch} is less than one batch ({self.batch_size})")
        if self.resampled and self.samples_per_epoch is None:
            raise CrossFlowError("resampled=true streams shards without end: set data.samples_per_epoch (per rank)")
        if not self.resampled and len(urls) < world * workers:
            raise CrossFlowError(
                f"{len(urls)} training shard(s) for {world} rank(s) × {workers} worker(s) = {world * workers} readers: "
                f"every reader needs at least one shard; re-shard into >= {world * workers} smaller shards "
                "(shapes data: python -m crossflow.data.shards --samples-per-shard), lower data.num_workers, "
                "or set data.resampled=true"
            )
        if not all(is_local(url) for url in urls) and self.samples_per_epoch is None:
            raise CrossFlowError(
                "remote training shards cannot be counted up front: set data.samples_per_epoch (samples per rank)"
            )

    def _log_epoch(self, stream: ShardStream, counts: list[int] | None, per_rank: int, world: int) -> None:
        if counts is None or stream.samples_per_epoch is not None:
            log.info("fixed epoch: %d samples per rank (samples_per_epoch)", per_rank)
            if counts is not None and not stream.resampled and world * per_rank > sum(counts):
                log.warning("samples_per_epoch asks %d samples of %d ranks but the shards hold %d: some repeat "
                            "within an epoch", per_rank, world, sum(counts))
            return
        total = sum(counts)
        log.info("equalised epoch: %d samples per rank, %d dropped of %d", per_rank, total - world * per_rank, total)

    def _val_stream(self) -> ShardStream:
        """Validation: fixed order, samples split over slots; with several ranks every slot yields the same
        number of samples (fewer than ranks × workers dropped), so every rank yields the same number of
        batches and none waits for another (under FSDP every forward is a collective)."""
        assert self.val_shards is not None
        urls = expand_shards(self.val_shards)
        rank, world = dist_rank_world()
        counts = count_shards(urls) if world > 1 else None  # small: remote ones are read through once
        stream = ShardStream(
            urls, self.image_size, counts=counts, shuffle=False, seed=self.seed, split="samples",
            batch_size=self.batch_size, num_workers=self.num_workers, equalise=world > 1, rank=rank, world_size=world,
        )
        readers = world * max(1, self.num_workers)
        if world > 1 and not stream.samples_per_rank(0):
            raise CrossFlowError(
                f"{sum(counts or [])} validation sample(s) for {readers} readers ({world} ranks × "
                f"{max(1, self.num_workers)} workers): every reader needs one; lower data.num_workers or add samples"
            )
        return stream

    def first_train_sample(self) -> tuple[dict[str, Any], str] | None:
        """The first raw sample of the first training shard and its url (None if it has none): lets the
        model check precomputed members against its config before the first step."""
        for url in expand_shards(self.train_shards)[:1]:
            for sample in read_shard(url, on_error=lambda exn: None):
                return sample, url
        return None

    def train_dataloader(self) -> TrainLoader:
        if self._train is None:
            self.setup("fit")
        # Persistent workers keep each worker's dataset copy, which counts the epochs (and the position).
        self._train_loader = TrainLoader(
            self._train, batch_size=self.batch_size, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, drop_last=True,
        )
        return self._train_loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch that enters a step, after the fetcher has already pulled the next one.
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.mark_consumed()
        return batch

    def val_dataloader(self) -> DataLoader | list:
        if self.val_shards is None:
            return []
        if self._val is None:
            self.setup("validate")
        return DataLoader(
            self._val, batch_size=self.batch_size, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, drop_last=False,
        )
