"""Data over many ranks: exactly-once epochs, equal batch counts, start-up refusals, resampling, exact resume.

Ranks are real processes with a gloo process group where collectives matter (the exactly-once test);
elsewhere a rank is simulated with the RANK / WORLD_SIZE fallback, which is what the pipeline reads when
torch.distributed is not initialised.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import tarfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

import crossflow.data.pipeline as pipeline
from crossflow.data import decode
from crossflow.data.pipeline import ShardStream, count_shards, expand_shards
from crossflow.data.shards import write_shapes_shards
from crossflow.datamodule import ShardDataModule
from crossflow.errors import CrossFlowError

IMAGE_SIZE = 16  # the shapes generator's smallest size


def _shapes(root: Path, num: int, per_shard: int) -> str:
    write_shapes_shards(str(root), num, seed=0, samples_per_shard=per_shard, image_size=IMAGE_SIZE, progress=False)
    return str(root)


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (value % 256, value // 256 % 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


def _custom(root: Path, counts: list[int], corrupt: set[tuple[int, int]] = frozenset()) -> str:
    """Shards with the given sample counts; (shard, index) pairs in ``corrupt`` get an undecodable image."""
    root.mkdir(parents=True, exist_ok=True)
    for s, count in enumerate(counts):
        with wds.TarWriter(str(root / f"part-{s:06d}.tar")) as sink:
            for i in range(count):
                png = b"not a png" if (s, i) in corrupt else _png(s * 100 + i)
                sink.write({"__key__": f"{s:02d}-{i:03d}", "png": png, "txt": f"shard {s} sample {i}"})
    return str(root)


def _module(shards: str, **kwargs: Any) -> ShardDataModule:
    options = {"image_size": IMAGE_SIZE, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8} | kwargs
    dm = ShardDataModule(shards, **options)
    dm.setup("fit")
    return dm


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def _epoch_keys(loader: Any) -> list[list[str]]:
    """Keys of one epoch, batch by batch."""
    return [list(batch["key"]) for batch in loader]


# --------------------------------------------------------------------------------- exactly once, 2 × 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, shards: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dm = _module(shards, num_workers=2)  # counts are shared over the group (all_gather_object)
        loader = dm.train_dataloader()
        epochs = [_epoch_keys(loader) for _ in range(2)]
        Path(out, f"rank{rank}.json").write_text(json.dumps(epochs))
    finally:
        dist.destroy_process_group()


def test_every_sample_exactly_once_over_two_ranks_and_two_workers(tmp_path: Path) -> None:
    shards = _shapes(tmp_path / "shards", 96, per_shard=12)  # 8 shards over 4 reader slots
    # fork: the ranks inherit the imported modules (a spawned rank re-imports torch and Lightning, ~15 s here)
    mp.start_processes(_rank_main, args=(2, _free_port(), shards, str(tmp_path)), nprocs=2, start_method="fork")
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    everything = {f"shapes-{i // 12:06d}.tar/{i:08d}" for i in range(96)}
    for epoch in range(2):
        keys = [k for run in runs for batch in run[epoch] for k in batch]
        assert len(keys) == 96 and set(keys) == everything, "each sample once per epoch, nothing dropped"
        assert len(runs[0][epoch]) == len(runs[1][epoch]) == 12
    assert runs[0][0] != runs[0][1], "a new epoch reads in a new order"


# ------------------------------------------------------------------------------------- uneven shards


@pytest.mark.parametrize(("counts", "workers"), [([20, 12, 12, 5, 9], 0), ([12, 3, 9, 20, 7, 5, 16, 1], 2)])
def test_uneven_shards_give_every_rank_the_same_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, counts: list[int], workers: int
) -> None:
    shards = _custom(tmp_path / "shards", counts)
    per_rank: list[list[list[str]]] = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        with caplog.at_level(logging.INFO, logger="crossflow.datamodule"):
            dm = _module(shards, num_workers=workers)
        per_rank.append(_epoch_keys(dm.train_dataloader()))
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    keys = [k for run in per_rank for batch in run for k in batch]
    assert len(keys) == len(set(keys)), "no sample on two ranks"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("equalised epoch")]
    assert len(lines) == 1, "logged once, by rank 0"
    n, dropped, total = map(int, re.fullmatch(r"equalised epoch: (\d+) samples per rank, (\d+) dropped of (\d+)", lines[0]).groups())
    assert (n, total) == (4 * len(per_rank[0]), sum(counts))
    assert dropped == total - len(keys) > 0


def test_corrupt_samples_do_not_unbalance_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 ranks × 1 worker, 4 shards of 8: every rank plans 16 samples; one of rank 0's images is corrupt.
    shards = _custom(tmp_path / "shards", [8, 8, 8, 8], corrupt={(0, 3)})
    batches, skipped = [], []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        run = list(_module(shards).train_dataloader())
        batches.append(len(run))
        skipped.append(int(sum(b["skipped"].sum() for b in run)))
    assert batches == [4, 4], "a short rank tops up from its own shards instead of hanging the others"
    assert sum(skipped) == 1


def test_unusable_shards_raise_instead_of_looping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_FAILURES", 20)
    shards = _custom(tmp_path / "shards", [6, 6], corrupt={(s, i) for s in range(2) for i in range(6)})
    for options in ({}, {"resampled": True, "samples_per_epoch": 8}):
        with pytest.raises(CrossFlowError, match="corrupt samples in a row"):
            list(_module(shards, **options).train_dataloader())


def test_too_few_shards_are_refused_at_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = _custom(tmp_path / "shards", [4, 4, 4])
    _as_rank(monkeypatch, 0, 2)
    with pytest.raises(CrossFlowError) as err:
        _module(shards, num_workers=2)
    message = str(err.value)
    assert "3 training shard(s)" in message and "2 rank(s) × 2 worker(s) = 4 readers" in message
    assert "num_workers" in message and "\n" not in message


def test_remote_shards_need_samples_per_epoch() -> None:
    with pytest.raises(CrossFlowError, match="samples_per_epoch"):
        _module("pipe:cat /nonexistent/shard-{000000..000003}.tar")


# ------------------------------------------------------------------------------------------ resampled


def test_resampled_stream_is_reproducible_per_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = _custom(tmp_path / "shards", [6, 6, 6])  # fewer shards than 2 × 2 slots: fine when resampling
    streams = []
    for rank in (0, 0, 1):
        _as_rank(monkeypatch, rank, 2)
        loader = _module(shards, num_workers=2, resampled=True, samples_per_epoch=16).train_dataloader()
        streams.append([_epoch_keys(loader) for _ in range(2)])
    assert streams[0] == streams[1], "same config, same stream"
    assert streams[0] != streams[2], "ranks draw differently"
    assert [len(epoch) for epoch in streams[0]] == [4, 4], "epochs of samples_per_epoch"
    assert streams[0][0] != streams[0][1]


# -------------------------------------------------------------------------------------------- resume


def _batches(loader: Any, epochs: int, stop: int | None = None) -> tuple[list[dict], dict | None]:
    """Up to ``epochs`` epochs of batches; with ``stop``, also the loader state after that many batches."""
    out: list[dict] = []
    for _ in range(epochs):
        for batch in loader:
            out.append({"caption": list(batch["caption"]), "image": batch["image"].clone()})
            if len(out) == stop:
                return out, loader.state_dict()
    return out, None


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["caption"] == y["caption"] and torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _shapes(tmp_path_factory.mktemp("resume"), 90, per_shard=12)  # 7 × 12 + 6: workers end apart


@pytest.fixture(scope="module")
def uninterrupted(uneven_shards: str) -> list[dict]:
    loader = _module(uneven_shards, num_workers=2).train_dataloader()
    return _batches(loader, epochs=2)[0]


@pytest.mark.parametrize(
    ("stop", "after_loop"), [(5, False), (22, False), (22, True), (27, False)],
    ids=["mid-epoch", "after-last-batch", "after-epoch-loop", "next-epoch"],
)
def test_stateful_loader_resume_equals_uninterrupted(
    uneven_shards: str, uninterrupted: list[dict], stop: int, after_loop: bool
) -> None:
    per_epoch = len(uninterrupted) // 2
    assert per_epoch == 22  # 90 samples: slots of 48 and 42 samples -> 12 + 10 batches of 4
    first_loader = _module(uneven_shards, num_workers=2).train_dataloader()
    if after_loop:  # the epoch's loop has ended: the next iter() starts the next epoch
        head, _ = _batches(first_loader, epochs=stop // per_epoch)
        state, epochs_left = first_loader.state_dict(), 2 - stop // per_epoch
    else:  # taken right after batch `stop`, the loader still inside its epoch
        head, state = _batches(first_loader, epochs=2, stop=stop)
        epochs_left = 2 - (stop - 1) // per_epoch
    del first_loader
    resumed = _module(uneven_shards, num_workers=2).train_dataloader()
    resumed.load_state_dict(state)
    tail, _ = _batches(resumed, epochs=epochs_left)
    assert _same(head + tail, uninterrupted)


@pytest.mark.parametrize(
    ("counted", "resampled"), [(True, False), (False, False), (True, True)],
    ids=["counted", "uncounted", "resampled"],
)
def test_resume_decodes_only_what_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: bool, resampled: bool
) -> None:
    urls = expand_shards(_shapes(tmp_path / "shards", 60, per_shard=12))
    counts = count_shards(urls) if counted else None

    def stream() -> ShardStream:
        options = {"resampled": True, "samples_per_epoch": 60} if resampled else {}
        return ShardStream(urls, IMAGE_SIZE, counts=counts, shuffle_buffer=10, seed=3, **options)

    full = [s["key"] for s in stream()]
    first = stream()
    it = iter(first)
    head = [next(it)["key"] for _ in range(23)]
    state = first.state_dict()
    assert state["consumed"] == state["yielded"] == 23

    decoded = []
    real = decode.decode_image
    monkeypatch.setattr(decode, "decode_image", lambda data, size: decoded.append(1) or real(data, size))
    again = stream()
    again.load_state_dict(state)
    tail = [s["key"] for s in again]
    assert head + tail == full and len(full) == 60
    assert len(decoded) == 60 - 23, "samples before the resume point are not decoded"


# ------------------------------------------------------------------------------------------ validation


def test_validation_splits_samples_evenly_over_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    val = _custom(tmp_path / "val", [10])  # one shard, two ranks: split by sample, not by shard
    runs = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        dm = _module(_custom(tmp_path / "train", [4, 4]), val_shards=val, batch_size=2)
        loader = dm.val_dataloader()
        runs.append(_epoch_keys(loader))
        assert _epoch_keys(loader) == runs[-1], "validation is deterministic"
    assert [[len(b) for b in r] for r in runs] == [[2, 2, 1], [2, 2, 1]], "5 samples each, same batch count"
    keys = [k for run in runs for batch in run for k in batch]
    assert len(set(keys)) == 10
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    single = _module(_custom(tmp_path / "train", [4, 4]), val_shards=val, batch_size=4).val_dataloader()
    assert [k for batch in _epoch_keys(single) for k in batch] == [f"part-000000.tar/00-{i:03d}" for i in range(10)]


def test_counts_match_what_the_reader_yields(tmp_path: Path) -> None:
    shards = _custom(tmp_path / "shards", [3, 5])
    path = Path(shards) / "part-000001.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmember("01-002.png").offset_data + 10
    path.write_bytes(path.read_bytes()[:cut])  # truncated inside the third sample's image
    urls = expand_shards(shards)
    counts = count_shards(urls)
    assert counts == [3, 2]
    read = [sum(1 for _ in pipeline.read_shard(url, lambda exn: None)) for url in urls]
    assert read == counts
    assert pipeline.count_samples(f"pipe:cat {urls[1]}") == counts[1], "remote shards are read through"
    seen = list(ShardStream(urls[1:], IMAGE_SIZE, shuffle=False))
    assert len(seen) == counts[1] and sum(s["skipped"] for s in seen) == 0  # the tail error comes after
    whole = (Path(shards) / "part-000000.tar").read_bytes()
    for cut in range(0, len(whole), 97):  # cut anywhere: in a header, in data, in padding
        path.write_bytes(whole[:cut])
        errors: list[Exception] = []
        read = sum(1 for _ in pipeline.read_shard(str(path), errors.append))
        assert pipeline.count_samples(str(path)) == read, f"cut at byte {cut}"
        assert len(errors) <= 1, "a read error ends the shard: counted once"


def test_skip_tally_survives_a_resume(tmp_path: Path) -> None:
    # Per epoch: a corrupt image, a tar cut short after 2 samples, and a corrupt image last of all, whose
    # skip is reported by the first sample of the next epoch.
    shards = _custom(tmp_path / "shards", [4, 4, 4], corrupt={(0, 1), (2, 3)})
    path = Path(shards) / "part-000001.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmember("01-002.png").offset_data + 10
    path.write_bytes(path.read_bytes()[:cut])
    urls = expand_shards(shards)

    def stream() -> ShardStream:
        return ShardStream(urls, IMAGE_SIZE, shuffle=False)

    def tallies(dataset: ShardStream, epochs: int) -> list[int]:
        return [s["skipped"] for _ in range(epochs) for s in dataset]

    full = tallies(stream(), 2)
    assert full[:9] == [0, 1, 0, 0, 0, 1, 0, 0, 1] and sum(full) == 5, "the last skip awaits a later sample"
    for stop, end_epoch in [(k, False) for k in range(9)] + [(8, True)]:
        first = stream()
        it = iter(first)
        head = [next(it)["skipped"] for _ in range(stop)] + ([s["skipped"] for s in it] if end_epoch else [])
        resumed = stream()
        resumed.load_state_dict(first.state_dict())
        # A state saved after the epoch's loop still names that epoch: its next iter() finds it done.
        assert head + tallies(resumed, 2) == full, f"stopped after {stop} samples"


# ----------------------------------------------------------------------------- through Lightning checkpoints


class _KeyRecorder(pl.LightningModule):
    """Trains nothing of note; records the keys of every batch a training step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.append(list(batch["key"]))
        return (self.weight * batch["image"].mean()).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(shards: str, steps: int, ckpt_dir: Path | None = None, resume: str | None = None) -> list[list[str]]:
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=steps, save_top_k=-1)] if ckpt_dir else []
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, enable_checkpointing=ckpt_dir is not None,
    )
    module = _KeyRecorder()
    trainer.fit(module, ShardDataModule(shards, image_size=IMAGE_SIZE, batch_size=4, num_workers=2, shuffle_buffer=8),
                ckpt_path=resume)
    return module.seen


def test_lightning_checkpoint_resume_continues_the_exact_stream(uneven_shards: str, tmp_path: Path) -> None:
    # Lightning's fetcher holds one batch ahead of the step; the saved position must not count it.
    full = _fit(uneven_shards, 30)
    first = _fit(uneven_shards, 7, ckpt_dir=tmp_path)  # mid epoch 0
    second = _fit(uneven_shards, 25, ckpt_dir=tmp_path, resume=str(next(tmp_path.glob("*step=7.ckpt"))))
    third = _fit(uneven_shards, 30, resume=str(next(tmp_path.glob("*step=25.ckpt"))))  # from mid epoch 1
    assert first + second + third == full
