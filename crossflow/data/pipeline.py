"""Read image + caption samples from any webdataset shards, split exactly over ranks × workers (no Lightning here).

Samples are read with webdataset's own tar iterators (``url_opener`` -> ``tar_file_expander`` ->
``group_by_keys``) and shuffled with its ``shuffle`` filter; we plan which reader reads what, and when.
Traps of webdataset 1.0.2 handled here (DESIGN.md, "Environment facts"):

* Its default node splitter raises with world size > 1. We shard ourselves: every epoch the shard order
  is shuffled from (seed, epoch) — the same on every rank — and strided over the *global* reader slots
  ``rank * num_workers + worker``, so each sample of an epoch is read by exactly one worker of one rank.
* Fewer shards than ranks × workers hangs DDP: refused at set-up (``ShardDataModule``) unless resampled.
* Uneven batch counts hang DDP. Each slot gets a *quota* of whole batches such that every rank yields
  the same number of batches (the minimum over ranks); the surplus is dropped. A slot that falls short
  (corrupt samples) re-reads its shards until its quota is met.
* Its default handler re-raises on a corrupt sample. Ours skips *and counts*: every yielded sample
  carries how many were skipped before it in its worker, so a batch's sum is an exact running tally.
  A read error ends its shard (the next tar header would only fail again) and is counted once the
  shard's samples are out: ``group_by_keys`` holds a sample until it sees the next member, so the error
  that cuts a tar short arrives *before* the last good sample. ``url_opener`` never closes its streams;
  ``read_shard`` does.
* Resampled shards are only reproducible with ``deterministic=True``. Ours draw from a ``random.Random``
  seeded with (seed, epoch, rank, worker).
* It has no data-position resume. A slot's stream is a pure function of (seed, epoch, rank, worker):
  the shuffle buffer's rng is seeded from them and the pass. ``state_dict()`` is (epoch, samples taken
  from the stream, samples yielded); ``load_state_dict()`` replays the stream up to that point without
  decoding an image (re-reading tar bytes is cheap next to decoding and training).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch.distributed as dist
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import filters
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander, url_opener

from crossflow.data import decode
from crossflow.data.plan import Slot, dist_rank_world, equalise, seeded_rng, shard_assignment, split_quota
from crossflow.errors import CrossFlowError

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10_000  # a reader that must fill a quota gives up after this many corrupt samples
_META = re.compile(r"__[^/]*__($|/)")  # tar_file_iterator's skip_meta: members webdataset never yields


# ----------------------------------------------------------------------------------------------- shards


def expand_shards(pattern: str | list[str]) -> list[str]:
    """Brace patterns (``data/shapes-{000000..000009}.tar``), globs or lists -> existing shard paths, sorted.

    Raises a one-line :class:`CrossFlowError` when nothing matches: the usual cause of a DDP job that
    hangs or of an "empty epoch" long after start-up.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    urls: list[str] = []
    for p in patterns:
        for expanded in braceexpand(p):
            if not is_local(expanded):
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


def is_local(url: str) -> bool:
    """A plain file path (seekable, countable up front), as opposed to ``http://`` or ``pipe:`` shards."""
    return "://" not in url and not url.startswith("pipe:")


def read_shard(url: str, on_error: Callable[[Exception], None]) -> Iterator[dict[str, Any]]:
    """One shard's raw samples ({"__key__", "__url__", extension: bytes}) through webdataset's tar
    iterators; each error goes to ``on_error`` after the shard's last sample (see module docstring)."""
    errors: list[Exception] = []

    def stop(exn: Exception) -> bool:  # an unreadable tar or member: the rest of the shard is lost
        errors.append(exn)
        return False

    def skip(exn: Exception) -> bool:  # a duplicate member name: that member is dropped
        errors.append(exn)
        return True

    sources = list(url_opener([{"url": url}], handler=stop))  # the opened stream, or none
    try:
        yield from group_by_keys(tar_file_expander(sources, handler=stop), handler=skip)
    finally:
        for source in sources:  # url_opener leaves streams open
            with contextlib.suppress(Exception):
                source["stream"].close()
    for exn in errors:
        on_error(exn)


def count_samples(url: str) -> int:
    """Samples ``read_shard`` yields from a shard: a local one from its tar headers alone (data is seeked
    over, much cheaper on big shards), a remote one read through.

    Members are grouped by webdataset's ``base_plus_ext``; a member whose data is cut short ends the
    count as it ends the reader, so counts and reads agree on truncated tars too.
    """
    if not is_local(url):
        return sum(1 for _ in read_shard(url, lambda exn: log.warning("shard %s: %s", url, exn)))
    count, last = 0, None
    try:
        with tarfile.open(url, "r:*") as tar:
            for info in tar:
                key, _ = base_plus_ext(info.name)
                if not info.isreg() or _META.match(info.name) or key is None:
                    continue
                tar.fileobj.seek(info.offset_data + info.size - 1)  # type: ignore[union-attr]
                if info.size and not tar.fileobj.read(1):  # type: ignore[union-attr]
                    raise tarfile.ReadError(f"{info.name}: unexpected end of data")
                count, last = count + (key != last), key
    except Exception as exn:  # the reader stops at the same place
        log.warning("shard %s is unreadable after %d samples: %s", url, count, exn)
    return count


def count_shards(urls: Sequence[str]) -> list[int]:
    """Samples per shard; with torch.distributed up, every rank counts its share and all share the result."""
    rank, world = dist_rank_world()
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [count_samples(url) for url in urls]
    mine = {i: count_samples(urls[i]) for i in range(rank, len(urls), world)}
    gathered: list[dict[int, int] | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    counts: dict[int, int] = {}
    for part in gathered:
        counts.update(part or {})
    return [counts[i] for i in range(len(urls))]


# ------------------------------------------------------------------------------------------------ dataset

Split = Literal["shards", "samples"]


class ShardStream(IterableDataset):
    """{"image": (3, S, S) float, "caption": str, "key": str, "skipped": int} from webdataset shards.

    ``split="shards"`` (training) gives each slot whole shards (see module docstring); ``"samples"``
    (validation) has every slot read all shards and keep every ``num_slots``-th sample, so any number of
    shards works and the order is fixed. A *quota* (per slot) is set by ``equalise`` (needs ``counts``;
    whole batches per slot for shards, equal samples per slot for samples) or ``samples_per_epoch`` (per
    rank); without one each slot yields everything it reads, once.

    Epochs are counted by the dataset itself: every ``iter()`` starts the next one (``set_epoch`` sets it).
    In DataLoader workers that needs ``persistent_workers=True`` — fresh workers would start from the
    main process's copy. ``state_dict``/``load_state_dict`` describe one worker's position (what
    ``torchdata``'s ``StatefulDataLoader`` stores per worker).
    """

    def __init__(
        self,
        urls: Sequence[str],
        image_size: int,
        *,
        counts: Sequence[int] | None = None,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        split: Split = "shards",
        batch_size: int = 1,
        num_workers: int = 0,
        equalise: bool = False,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.image_size = image_size
        self.counts = None if counts is None else list(counts)
        self.shuffle = shuffle
        self.buffer_size = shuffle_buffer if shuffle else 0
        self.seed = seed
        self.split = split
        self.batch_size = batch_size
        self.num_workers = max(1, num_workers)
        self.equalise = equalise
        self.resampled = resampled
        self.samples_per_epoch = samples_per_epoch
        # Resolved here, in the main process: workers may not see torch.distributed.
        default_rank, default_world = dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if resampled and samples_per_epoch is None:
            raise CrossFlowError("resampled shards are an infinite stream: set samples_per_epoch")
        if equalise and counts is None and samples_per_epoch is None:
            raise CrossFlowError("equalised epochs need per-shard sample counts or samples_per_epoch")
        self._skips = 0  # samples skipped as corrupt that no yielded sample has reported yet
        self._replaying = False
        self._epoch, self._consumed, self._yielded = -1, 0, 0
        self._slot_index = -1
        self._pending: dict[str, int] | None = None

    # ----------------------------------------------------------------------------------------- plan

    def quotas(self, epoch: int) -> list[int] | None:
        """Samples each slot yields in ``epoch`` (None: everything it reads, once)."""
        num_slots = self.world_size * self.num_workers
        if self.samples_per_epoch is not None:
            return split_quota(self.samples_per_epoch, self.num_workers, self.batch_size) * self.world_size
        if not self.equalise:
            return None
        assert self.counts is not None
        if self.split == "samples":
            # Every slot the same number of samples (at most num_slots - 1 dropped): with partial last
            # batches kept, every rank still yields the same number of batches.
            return [sum(self.counts) // num_slots] * num_slots
        shards = shard_assignment(len(self.urls), num_slots, self.seed, epoch, self.shuffle)
        return equalise([sum(self.counts[i] for i in slot) for slot in shards], self.num_workers, self.batch_size)

    def samples_per_rank(self, epoch: int = 0) -> int | None:
        """Samples every rank yields in ``epoch`` (None when not fixed)."""
        quotas = self.quotas(epoch)
        return None if quotas is None else sum(quotas[: self.num_workers])

    def _pass_shards(self, epoch: int, slot: Slot, p: int) -> Iterator[int]:
        """Shard indices of pass ``p`` of a slot's epoch (passes after the first only top up a quota)."""
        if self.resampled:  # one infinite pass, drawn with replacement
            rng = seeded_rng(self.seed, "resample", epoch, slot.rank, slot.worker)
            return (rng.randrange(len(self.urls)) for _ in itertools.count())
        if self.split == "samples":
            return iter(range(len(self.urls)))
        shards = shard_assignment(len(self.urls), slot.count, self.seed, epoch, self.shuffle)[slot.index]
        if p > 0 and self.shuffle:
            seeded_rng(self.seed, "pass", epoch, slot.rank, slot.worker, p).shuffle(shards)
        return iter(shards)

    # -------------------------------------------------------------------------------------- reading

    def _read(self, shards: Iterator[int], slot: Slot) -> Iterator[dict]:
        """Raw samples of ``shards`` in order; raises after many shards in a row without a sample, for
        resampling unreadable shards would draw forever."""
        empty = 0
        for shard in shards:
            empty += 1
            for sample in read_shard(self.urls[shard], self._skip):
                empty = 0
                yield sample
            if empty > 10 * len(self.urls):
                raise CrossFlowError(f"reader slot {slot.index}: {empty} shards in a row without a readable sample")

    def _pass_outputs(self, epoch: int, slot: Slot, p: int) -> Iterator[dict]:
        """Raw samples of pass ``p`` (every ``slot.count``-th for ``split="samples"``) through webdataset's
        shuffle buffer, its rng seeded from (seed, epoch, rank, worker, pass) so that a replay is exact."""
        samples = self._read(self._pass_shards(epoch, slot, p), slot)
        if self.split == "samples":
            samples = itertools.islice(samples, slot.index, None, slot.count)
        if self.buffer_size <= 1:
            return samples
        rng = seeded_rng(self.seed, "buffer", epoch, slot.rank, slot.worker, p)
        return filters.shuffle(self.buffer_size, self.buffer_size, rng=rng)(samples)

    def _epoch_outputs(self, epoch: int, slot: Slot, repeat: bool) -> Iterator[dict]:
        """The slot's raw samples of ``epoch``: one pass, or pass after pass while ``repeat`` — a pass after
        the first tops up a quota that corrupt samples left short, so every rank keeps its batch count."""
        for p in itertools.count():
            raw = 0
            for sample in self._pass_outputs(epoch, slot, p):
                raw += 1
                yield sample
            if not repeat:
                return
            if raw == 0:  # an empty pass would repeat forever
                raise CrossFlowError(f"reader slot {slot.index} (rank {slot.rank}, worker {slot.worker}) has no "
                                     "readable sample in its shards")
            log.warning("reader slot %d re-reads its shards to fill its quota (corrupt samples, or "
                        "samples_per_epoch above its share)", slot.index)

    # ------------------------------------------------------------------------------------ iteration

    def _current_slot(self) -> Slot:
        """The slot this process reads for; a loader with another worker count than planned is refused."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if num_workers != self.num_workers:
            raise CrossFlowError(f"dataset planned for {self.num_workers} workers runs in a loader with {num_workers}")
        return Slot(self.rank, self.world_size, worker, num_workers)

    def _begin_epoch(self, slot: Slot) -> None:
        """The next epoch from its start, or the loaded state's epoch from its position."""
        state, self._pending = self._pending, None
        if state is not None and (state["slot"], state["num_slots"]) != (slot.index, slot.count):
            log.warning("data state of slot %d/%d loaded into slot %d/%d: restarting epoch %d from its start",
                        state["slot"], state["num_slots"], slot.index, slot.count, state["epoch"])
            state = {**state, "consumed": 0, "yielded": 0}
        if state is None:
            self._epoch, self._consumed, self._yielded = self._epoch + 1, 0, 0
        else:
            self._epoch, self._consumed, self._yielded = state["epoch"], state["consumed"], state["yielded"]
            self._skips = state.get("skipped", 0)
        self._slot_index = slot.index

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Not a generator itself: the epoch starts (and state_dict reflects it) as soon as iter() is called.
        slot = self._current_slot()
        self._begin_epoch(slot)
        quotas = self.quotas(self._epoch)
        return self._samples(slot, None if quotas is None else quotas[slot.index])

    def _samples(self, slot: Slot, quota: int | None) -> Iterator[dict[str, Any]]:
        """Decoded samples until the quota is met, after replaying, undecoded, the ``consumed`` already taken."""
        outputs = self._epoch_outputs(self._epoch, slot, repeat=quota is not None)
        self._replaying = True
        for _ in itertools.islice(outputs, self._consumed):
            pass
        self._replaying = False
        failures = 0
        while quota is None or self._yielded < quota:
            raw = next(outputs, None)
            if raw is None:
                return
            self._consumed += 1
            sample = self._decode(raw)
            if sample is None:
                failures += 1
                if failures == MAX_CONSECUTIVE_FAILURES and quota is not None:  # re-reading would never end
                    raise CrossFlowError(f"reader slot {slot.index}: {failures} corrupt samples in a row in its "
                                         "shards; check the data")
                continue
            failures = 0
            self._yielded += 1
            yield sample

    def _decode(self, raw: dict) -> dict[str, Any] | None:
        """The decoded sample with its ``skipped`` tally, or None (counted) when it is unusable."""
        try:
            sample = decode.decode_sample(raw, self.image_size)
        except Exception as exn:  # a corrupt sample must never stop training
            self._skip(ValueError(f"{raw.get('__key__', '?')} in {raw.get('__url__', '?')}: {exn}"))
            return None
        sample["skipped"], self._skips = self._skips, 0
        return sample

    def _skip(self, exn: Exception) -> None:
        """Count a corrupt sample or unreadable shard, for the next yielded sample to report."""
        if not self._replaying:  # a replay's skips were counted before the checkpoint
            self._skips += 1
            log.warning("skipping corrupt webdataset data: %s", exn)

    # ------------------------------------------------------------------------------------ resumption

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` starts ``epoch`` from its beginning."""
        self._epoch, self._pending = epoch - 1, None

    def state_dict(self) -> dict[str, int]:
        """This worker's position: epoch, raw samples taken from its stream, samples yielded, skips not yet
        reported by a sample."""
        return {"epoch": self._epoch, "consumed": self._consumed, "yielded": self._yielded,
                "skipped": self._skips, "slot": self._slot_index,
                "num_slots": self.world_size * self.num_workers}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next ``iter()`` continues the saved epoch where ``state`` left it."""
        if state["epoch"] < 0:  # saved before the first iteration
            self._epoch, self._pending = -1, None
        else:
            self._pending = dict(state)


def image_text_dataset(
    shards: str | list[str],
    image_size: int,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    shuffle: bool = True,
    **options: Any,
) -> ShardStream:
    """An iterable of {"image": (3, S, S) float, "caption": str, "key": str, "skipped": int} from shards.

    ``options`` are :class:`ShardStream`'s (counts, split, batch_size, num_workers, equalise, ...).
    """
    return ShardStream(expand_shards(shards), image_size, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                       seed=seed, **options)
