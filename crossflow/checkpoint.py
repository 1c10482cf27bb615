"""Checkpoint files: atomic commits, safe reading of sharded (DCP) checkpoints, and the export command.

``python -m crossflow.checkpoint export --ckpt runs/demo/checkpoints/last.ckpt --out exported/demo`` writes
``config.json`` + ``model.safetensors`` (EMA weights by default). The input may be a Lightning ``.ckpt``, a
sharded FSDP2 checkpoint folder (DCP), a ``.safetensors`` file or a saved folder; loading never executes
pickled code: tensors load with ``weights_only=True`` and DCP's pickled ``.metadata`` goes through an
unpickler that only admits DCP's own metadata classes. No Lightning here.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.filesystem import _StorageInfo

from crossflow.errors import CrossFlowError, exit_on_user_error

DCP_METADATA = ".metadata"
LIGHTNING_META = "meta.pt"  # what Lightning's ModelParallelStrategy writes next to the shards (rank 0's rest)


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """A DCP folder (as written by FSDP2 runs): ``.metadata`` + one ``.distcp`` file per rank."""
    return (Path(path) / DCP_METADATA).is_file()


# --- Atomic commits: a crash mid-save never leaves something that looks like a whole checkpoint. ---

def atomic_write_file(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it over ``path`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit_directory(partial: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Publish the finished folder ``partial`` as ``path`` in one atomic step.

    A non-empty folder cannot be renamed over another, so ``path`` is a symlink: the data moves to a
    unique sibling ``<name>.data-<ns>``, a new link is made beside ``path`` and renamed over it (atomic),
    and only then is the previous data folder deleted. At every instant ``path`` is the old whole
    checkpoint or the new whole one.
    """
    partial, path = Path(partial), Path(path)
    target = path.with_name(f"{path.name}.data-{time.time_ns()}")
    os.rename(partial, target)
    previous = path.parent / os.readlink(path) if path.is_symlink() else None
    if path.exists() and not path.is_symlink():  # a plain folder or file from an older save: no atomicity to keep
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    link = path.with_name(path.name + ".link-partial")
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target.name, link)  # relative: the run folder can be moved
    os.replace(link, path)
    if previous is not None and previous.resolve() != target.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    return target


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint file, folder, or committed link together with its data folder."""
    path = Path(path)
    if path.is_symlink():
        target = path.parent / os.readlink(path)
        path.unlink()
        shutil.rmtree(target, ignore_errors=True)
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --- Reading DCP folders without unpickling arbitrary code. ---

_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}
_ALLOWED_GLOBALS = {
    **{("torch.distributed.checkpoint.metadata", n): getattr(dcp_metadata, n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")},
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # layout by name, e.g. "torch.strided"
    **{("torch", n): getattr(torch, n) for n in _TORCH_DTYPES},
    **{("pathlib", n): getattr(__import__("pathlib"), n) for n in ("Path", "PosixPath", "PurePosixPath", "WindowsPath")},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits only the classes DCP's metadata is made of; anything else is refused, never called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from checkpoint metadata") from None


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, but its pickled ``.metadata`` is read with an allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")
        with self.fs.create_stream(self._get_metadata_path(rank), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def sharded_keys(path: str | os.PathLike) -> set[str]:
    """Flattened keys stored in a DCP folder (``state_dict.model.flow...``, ``optimizer_0...``)."""
    return set(SafeFileSystemReader(str(path)).read_metadata().state_dict_metadata)


def read_sharded(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Fill the (nested) ``state`` of tensors in place from a DCP folder, in this one process."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), no_dist=True)


def read_lightning_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The non-tensor part of a sharded Lightning checkpoint (loops, callbacks, our config), weights only."""
    meta = Path(path) / LIGHTNING_META
    if not meta.is_file():
        raise CrossFlowError(f"{path} is a sharded checkpoint without {LIGHTNING_META}: not written by Lightning")
    return torch.load(meta, map_location="cpu", weights_only=True)


def read_tagged_safetensors(path: str | os.PathLike, key: str, what: str, kind: str
                            ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file that must carry metadata ``key`` (no pickled code runs). One-line
    errors name the file as ``what`` ("LoRA file") when missing or unreadable, and say it is not a CrossFlow
    ``kind`` ("LoRA file", "instance bank") when the key is absent."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CrossFlowError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise CrossFlowError(f"cannot read {what} {path}: {str(err).splitlines()[0]}") from err
    if key not in meta:
        raise CrossFlowError(f"{path} is not a CrossFlow {kind} (no {key} in its metadata)")
    return meta, load_file(str(path))


def export(ckpt: str, out: str, no_ema: bool = False, lora: str | None = None, lora_scale: float = 1.0) -> Path:
    """Write ``out/config.json`` and ``out/model.safetensors`` from any checkpoint ``ckpt`` (LoRA adapters merged:
    a LoRA fine-tune's own, or the file ``lora`` onto the base ``ckpt``)."""
    from crossflow.inference import CrossFlowPipeline

    pipe = CrossFlowPipeline.from_pretrained(ckpt, use_ema=not no_ema, lora=lora, lora_scale=lora_scale)
    directory = pipe.save_pretrained(out)
    merged = f" + LoRA {lora} (scale {lora_scale})" if lora else ""
    print(f"exported {ckpt}{merged} ({'raw' if no_ema else 'EMA where present'} weights) to {directory}/")
    return directory


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crossflow.checkpoint", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("export", help="checkpoint -> config.json + model.safetensors")
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt, sharded (DCP) checkpoint folder, .safetensors file or saved folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-ema", action="store_true", help="export the raw training weights instead of the EMA")
    p.add_argument("--lora", default=None, help="a LoRA adapter file to merge onto --ckpt (its base model)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="strength of the merged LoRA update (default 1)")
    ns = parser.parse_args(args)
    with exit_on_user_error():
        export(ns.ckpt, ns.out, ns.no_ema, ns.lora, ns.lora_scale)


if __name__ == "__main__":
    main()
