"""Checkpoint IO: atomic commits survive a crash mid-save; DCP metadata never unpickles foreign code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from crossflow.checkpoint import (
    SafeFileSystemReader,
    commit_directory,
    is_sharded_checkpoint,
    read_sharded,
    remove_checkpoint,
    sharded_keys,
)
from crossflow.strategies import AtomicCheckpointIO


def _save_dcp(directory: Path, value: float) -> None:
    dcp.save({"state_dict": {"w": torch.full((3,), value)}}, checkpoint_id=str(directory), no_dist=True)


def _read_w(path: Path) -> torch.Tensor:
    state = {"state_dict": {"w": torch.empty(3)}}
    read_sharded(path, state)
    return state["state_dict"]["w"]


def test_commit_directory_swaps_the_link_and_deletes_the_old_data(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    for value in (1.0, 2.0):
        partial = tmp_path / "last.ckpt.partial"
        _save_dcp(partial, value)
        commit_directory(partial, last)
        assert last.is_symlink() and is_sharded_checkpoint(last)
        assert torch.equal(_read_w(last), torch.full((3,), value))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink())[0].startswith("last.ckpt.data-")
    assert len([p for p in tmp_path.iterdir() if not p.is_symlink()]) == 1, "the previous data folder is gone"
    remove_checkpoint(last)
    assert list(tmp_path.iterdir()) == []


def test_crash_during_a_sharded_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    _save_dcp(tmp_path / "p", 1.0)
    commit_directory(tmp_path / "p", last)
    partial = tmp_path / "last.ckpt.partial"  # FSDP2Strategy writes here first; the process dies mid-save
    _save_dcp(partial, 2.0)
    (partial / ".metadata").unlink()
    assert torch.equal(_read_w(last), torch.full((3,), 1.0)), "`last` still points at the whole old checkpoint"
    # Lightning's `ckpt_path="last"` only considers names ending in .ckpt: the torn folder is never a candidate.
    assert partial.suffix != ".ckpt" and not is_sharded_checkpoint(partial)


def test_atomic_checkpoint_io_never_leaves_a_torn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def dying_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full")  # the process dies after writing some bytes

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True) == {"step": 1}


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def test_dcp_metadata_with_foreign_code_is_refused_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _save_dcp(tmp_path / "ckpt", 1.0)
    assert sharded_keys(tmp_path / "ckpt") == {"state_dict.w"}, "genuine metadata loads"
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        SafeFileSystemReader(str(tmp_path / "ckpt")).read_metadata()
    assert not (tmp_path / "PWNED").exists()
