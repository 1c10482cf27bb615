"""LightningDataModule over webdataset shards (any shards with an image and a caption)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from crossflow.data.pipeline import expand_shards, image_text_dataset
from crossflow.errors import CrossFlowError


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


class ShardDataModule(pl.LightningDataModule):
    """Train / validation loaders over webdataset shards."""

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 1,
        shuffle_buffer: int = 2000,
        seed: int = 0,
        generate_shapes: ShapesGeneration | None = None,
    ) -> None:
        """
        Args:
            train_shards: Shard folder, glob or brace pattern (``data/shapes/train/shapes-{000000..000007}.tar``).
            val_shards: Same for validation; None disables the validation loss.
            image_size: Images are decoded (and resized/cropped if needed) to S×S.
            batch_size: Per-device batch size.
            num_workers: DataLoader worker processes per device.
            shuffle_buffer: Samples held in the shuffle buffer.
            seed: Seed of shard order and sample shuffling.
            generate_shapes: If set and the shard folders are empty, write the shapes dataset there first.
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

    def prepare_data(self) -> None:
        gen = self.generate_shapes
        if gen is None:
            return
        for shards, num, seed in ((self.train_shards, gen.num_train, gen.seed), (self.val_shards, gen.num_val, gen.seed + 1)):
            if shards is None:
                continue
            if not (os.path.isdir(shards) or not os.path.exists(shards)):
                raise CrossFlowError(f"generate_shapes needs shard *folders*, got {shards!r}")
            if os.path.isdir(shards) and any(f.endswith(".tar") for f in os.listdir(shards)):
                continue
            from crossflow.data.shards import write_shapes_shards

            write_shapes_shards(shards, num, seed=seed, samples_per_shard=gen.samples_per_shard, image_size=self.image_size)

    def setup(self, stage: str | None = None) -> None:
        expand_shards(self.train_shards)  # fail at start-up, not after the first epoch, on a bad pattern
        if self.val_shards is not None:
            expand_shards(self.val_shards)

    def _loader(self, shards: str, train: bool) -> DataLoader:
        dataset = image_text_dataset(
            shards, self.image_size, shuffle_buffer=self.shuffle_buffer, seed=self.seed, shuffle=train
        )
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, drop_last=train,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_shards, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_shards is None else self._loader(self.val_shards, train=False)
