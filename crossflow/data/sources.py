"""Users' own image + caption data, indexed up front into a flat list of :class:`Item` s (``crossflow prepare``).

Four inputs, told apart by :func:`detect_format`:

* ``folder``: images (png/jpg/jpeg/webp, recursive) with captions in sidecar ``.txt`` files of the same stem;
* ``jsonl`` / ``csv``: one record per sample, an image path (relative to the table's folder) and a caption
  (columns ``image``/``caption``, or Hugging Face's imagefolder names ``file_name``/``text``); a folder
  holding ``metadata.jsonl`` or ``metadata.csv`` is read as that table;
* ``webdataset``: ``NNNNN.tar`` shards of ``key.jpg`` / ``key.txt`` / ``key.json`` members, indexed from the
  tar headers alone: an item records each member's byte range, so whoever writes it reads just those bytes.

Indexing never fails on bad data: what cannot become an item is counted in :class:`Skips` with its reason
(missing caption, missing image, truncated tar, ...). Problems only reading can find (a corrupt image, an
empty caption) raise :class:`Skip` from :func:`load_item`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from webdataset.tariterators import base_plus_ext

from crossflow.data.decode import IMAGE_KEYS
from crossflow.data.pipeline import expand_shards, is_local
from crossflow.errors import CrossFlowError

Format = Literal["auto", "folder", "jsonl", "csv", "webdataset"]
IMAGE_EXTENSIONS = tuple(f".{ext}" for ext in IMAGE_KEYS)
IMAGE_COLUMNS = ("image", "file_name")  # ours, then Hugging Face imagefolder's
CAPTION_COLUMNS = ("caption", "text")
EXAMPLES_PER_REASON = 5
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's own meta members (never sample data)

# Why an input sample was left out: the keys of every skip count (summaries print them with spaces).
CORRUPT_IMAGE = "corrupt_image"
EMPTY_CAPTION = "empty_caption"
MISSING_CAPTION = "missing_caption"
MISSING_IMAGE = "missing_image"
TRUNCATED_TAR = "truncated_tar"
UNREADABLE_TAR = "unreadable_tar"
BAD_RECORD = "bad_record"


class Skip(Exception):
    """An input sample that cannot be used; ``reason`` is one of the skip keys above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Skips:
    """Skipped samples counted by reason, with the first few sources of each so users can find them."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, source: str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(source)

    def update(self, other: Skips) -> None:
        for reason, count in sorted(other.counts.items()):
            self.counts[reason] += count
            room = EXAMPLES_PER_REASON - len(self.examples.setdefault(reason, []))
            self.examples[reason] += other.examples.get(reason, [])[:max(room, 0)]

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": dict(sorted(self.examples.items()))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Skips:
        return cls(Counter(data["counts"]), {k: list(v) for k, v in data["examples"].items()})


@dataclass(frozen=True)
class Blob:
    """The bytes ``[offset, offset + size)`` of a file (a tar member), or the whole file when ``size`` < 0."""

    path: str
    offset: int = 0
    size: int = -1


@dataclass(frozen=True)
class Item:
    """One planned input sample: where its image, caption and source json come from."""

    source: str
    """Shown to users and stored in the output json: a path relative to the input, or ``shard.tar/key``."""
    image: Blob
    caption: str | Blob | None = None
    """The caption itself, where to read it, or None: the ``caption`` field of ``meta``."""
    meta: dict[str, Any] | Blob | None = None
    """The source's json object (a table row), or where to read it (a tar's ``key.json``)."""


@dataclass
class Index:
    """What indexing found: the items in order, and what it had to leave out."""

    items: list[Item] = field(default_factory=list)
    skips: Skips = field(default_factory=Skips)

    def extend(self, other: Index) -> None:
        self.items += other.items
        self.skips.update(other.skips)


# ------------------------------------------------------------------------------------------------ detection


def detect_format(path: str, fmt: Format = "auto") -> tuple[Format, str | list[str]]:
    """(format, what to index): a folder, a table file, or the list of tar shards; one-line errors on a
    missing, unknown or empty input."""
    is_pattern = any(ch in path for ch in "*?[{")
    if not is_pattern and not os.path.exists(path):
        raise CrossFlowError(f"input {path!r} does not exist")
    if fmt == "auto":
        fmt = _guess_format(path, is_pattern)
    if fmt == "webdataset":
        shards = expand_shards(path)
        if not all(is_local(url) for url in shards):
            raise CrossFlowError("prepare reads local tar shards only (they are indexed by seeking)")
        return fmt, shards
    if fmt in ("jsonl", "csv") and os.path.isdir(path):
        path = os.path.join(path, f"metadata.{fmt}")
    if fmt == "folder" and not os.path.isdir(path):
        raise CrossFlowError(f"input {path!r} is not a folder (format folder)")
    if fmt in ("jsonl", "csv") and not os.path.isfile(path):
        raise CrossFlowError(f"input {path!r} is not a {fmt} file")
    return fmt, path


def _guess_format(path: str, is_pattern: bool) -> Format:
    """The format a path's name and contents say; a folder of tars is webdataset, a folder holding
    ``metadata.jsonl``/``.csv`` is that table, any other folder holds images and sidecar captions."""
    if is_pattern or path.endswith(".tar"):
        return "webdataset"
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in (".jsonl", ".csv"):
            return ext[1:]  # type: ignore[return-value]
        raise CrossFlowError(f"unknown input format for {path!r}: expected a folder, .jsonl, .csv or .tar shards "
                             "(or pass --format)")
    names = os.listdir(path)
    if any(name.endswith(".tar") for name in names):
        return "webdataset"
    for table in ("jsonl", "csv"):
        if f"metadata.{table}" in names:
            return table  # type: ignore[return-value]
    return "folder"


# ------------------------------------------------------------------------------------------------- indexing


def index_folder(root: str) -> Index:
    """Images under ``root`` (sorted, recursive, hidden folders left out), captioned by ``stem.txt`` beside
    each; an image without one is a missing caption, a ``.txt`` without an image a missing image."""
    index = Index()
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        stems = {stem for stem, ext in map(os.path.splitext, files) if ext.lower() in IMAGE_EXTENSIONS}
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            rel = os.path.relpath(os.path.join(directory, name), root)
            if ext.lower() == ".txt" and stem not in stems:
                index.skips.add(MISSING_IMAGE, rel)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            sidecar = os.path.join(directory, stem + ".txt")
            if stem + ".txt" not in files:
                index.skips.add(MISSING_CAPTION, rel)
                continue
            index.items.append(Item(rel, Blob(os.path.join(directory, name)), caption=Blob(sidecar)))
    return index


def index_table(path: str, fmt: Literal["jsonl", "csv"], image_column: str, caption_column: str) -> Index:
    """Rows of a jsonl/csv table; image paths are relative to the table's folder (absolute ones work too)."""
    index = Index()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        rows = list(_rows(path, fmt))
    except (UnicodeDecodeError, csv.Error) as err:
        raise CrossFlowError(f"cannot read {path!r} as UTF-8 {fmt}: {err}") from err
    for where, row in rows:
        if row is None:
            index.skips.add(BAD_RECORD, where)
            continue
        image = _column(row, image_column, IMAGE_COLUMNS)
        caption = _column(row, caption_column, CAPTION_COLUMNS)
        if not image:
            index.skips.add(MISSING_IMAGE, where)
        elif caption is None:
            index.skips.add(MISSING_CAPTION, str(image))
        elif not os.path.isfile(os.path.join(folder, str(image))):
            index.skips.add(MISSING_IMAGE, str(image))
        else:
            index.items.append(Item(str(image), Blob(os.path.join(folder, str(image))), str(caption), row))
    return index


def _rows(path: str, fmt: str) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(``file:line``, row or None when unparseable) for each record of the table."""
    name = os.path.basename(path)
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: tolerate the BOM spreadsheets write
        if fmt == "csv":
            rows = csv.DictReader(f)
            for row in rows:
                yield f"{name}:{rows.line_num}", row
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            yield f"{name}:{number}", row if isinstance(row, dict) else None


def _column(row: dict[str, Any], name: str, defaults: tuple[str, ...]) -> Any:
    """``row[name]``; for a default column name, the other conventional name as a fallback."""
    names = (name, *(d for d in defaults if d != name)) if name in defaults else (name,)
    return next((row[n] for n in names if row.get(n) is not None), None)


def index_tar(path: str) -> Index:
    """A tar's samples from its headers (members grouped by key as webdataset does). A tar cut short (or with
    garbage after its members) keeps its complete samples; the sample it ended in is one truncated skip."""
    index, name, size = Index(), os.path.basename(path), os.path.getsize(path)
    groups: list[tuple[str, dict[str, Blob]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:  # tarfile stops silently at a cut or garbled header: checked below
                key, ext = base_plus_ext(info.name)
                if not info.isreg() or _META_MEMBER.match(info.name) or key is None:
                    continue
                if not groups or groups[-1][0] != key:
                    groups.append((key, {}))
                groups[-1][1][ext.lower()] = Blob(path, info.offset_data, info.size)
                if info.offset_data + info.size > size:
                    break
            complete = _ends_cleanly(path, tar.offset, groups, size)
    except (tarfile.TarError, OSError):
        complete = False
        if not groups:  # not a tar at all, or nothing readable in it
            index.skips.add(UNREADABLE_TAR, name)
            return index
    if not complete:
        key = groups.pop()[0] if groups else "?"
        index.skips.add(TRUNCATED_TAR, f"{name}/{key}")
    for key, members in groups:
        _add_tar_sample(index, f"{name}/{key}", members)
    return index


def _ends_cleanly(path: str, offset: int, groups: list[tuple[str, dict[str, Blob]]], size: int) -> bool:
    """Whether every member's data is there and the archive's end-of-archive block follows the last one."""
    if groups and any(b.offset + b.size > size for b in groups[-1][1].values()):
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(512) == bytes(512)


def _add_tar_sample(index: Index, source: str, members: dict[str, Blob]) -> None:
    image = next((members[ext] for ext in IMAGE_KEYS if ext in members), None)
    caption = members.get("txt", members.get("caption"))
    if image is None:
        index.skips.add(MISSING_IMAGE, source)
    elif caption is None and "json" not in members:
        index.skips.add(MISSING_CAPTION, source)
    else:
        index.items.append(Item(source, image, caption, members.get("json")))


# -------------------------------------------------------------------------------------------------- reading


class BlobReader:
    """Reads blobs, keeping the tar files of one output shard open (a shard reads mostly from one or two)."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def read(self, blob: Blob) -> bytes:
        if blob.size < 0:
            with open(blob.path, "rb") as f:
                return f.read()
        if blob.path not in self._files:
            self._files[blob.path] = open(blob.path, "rb")  # noqa: SIM115 (closed in close())
        f = self._files[blob.path]
        f.seek(blob.offset)
        data = f.read(blob.size)
        if len(data) != blob.size:
            raise Skip(TRUNCATED_TAR, "member cut short")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_item(item: Item, reader: BlobReader) -> tuple[str, dict[str, Any] | None, bytes]:
    """(stripped caption, source json or None, image bytes); raises :class:`Skip` for a missing or
    unreadable caption or image. The caption comes first: reading it is the cheap part."""
    meta = item.meta
    if isinstance(meta, Blob):
        try:
            meta = json.loads(reader.read(meta))
        except (ValueError, OSError):  # a broken json member is no reason to lose a captioned sample
            meta = None
        meta = meta if isinstance(meta, dict) else None
    caption = _read_caption(item, meta, reader).strip()
    if not caption:
        raise Skip(EMPTY_CAPTION)
    try:
        image = reader.read(item.image)
    except FileNotFoundError as err:  # removed since indexing
        raise Skip(MISSING_IMAGE, str(err)) from err
    return caption, meta, image


def _read_caption(item: Item, meta: dict[str, Any] | None, reader: BlobReader) -> str:
    if isinstance(item.caption, str):
        return item.caption
    if isinstance(item.caption, Blob):
        try:
            return reader.read(item.caption).decode("utf-8")
        except FileNotFoundError as err:
            raise Skip(MISSING_CAPTION, str(err)) from err
        except UnicodeDecodeError as err:
            raise Skip(MISSING_CAPTION, f"caption is not UTF-8: {err}") from err
    if meta is None or meta.get("caption") is None:
        raise Skip(MISSING_CAPTION, "no txt member and no json 'caption'")
    return str(meta["caption"])
