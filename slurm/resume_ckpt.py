"""Which checkpoint a (re)started SLURM job resumes from: prints ``last`` or the path of the newest checkpoint.

Why this exists. Lightning's SIGUSR1 handler (``SLURMEnvironment(auto_requeue=True)``) saves
``<trainer.default_root_dir>/hpc_ckpt_<N>.ckpt`` and requeues the job. But in Lightning 2.6
(``_CheckpointConnector._parse_ckpt_path``) ``ckpt_path="last"`` only considers ``ModelCheckpoint``'s
``last*.ckpt`` files, and the HPC checkpoint is picked up only when ``ckpt_path`` is *None* — which then never
falls back to ``last.ckpt`` after a crash or a hard preemption. So the sbatch scripts ask this helper before
they launch: the newest *complete* checkpoint of either kind wins (a save cut short by SIGKILL is skipped),
and with none at all it prints ``last``, for which Lightning only warns and starts fresh.

Usage (as the sbatch scripts run it, from the repository root, with the same arguments as ``train.py fit``)::

    python slurm/resume_ckpt.py --config configs/t2i_256px_xl.yaml --trainer configs/trainer/fsdp2.yaml
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

HPC_PATTERN = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")  # lightning: _CheckpointConnector.hpc_save_path
LAST_PATTERN = re.compile(r"^last.*\.ckpt$")  # lightning: ModelCheckpoint._find_last_checkpoints (stem starts with "last")
SHARDED_META = "meta.pt"  # lightning: a sharded (DCP) checkpoint folder holds meta.pt, written last by rank 0


def is_complete(path: Path) -> bool:
    """True if ``path`` is a checkpoint whose save ran to the end.

    A single-file checkpoint is a zip (``torch.save``) whose central directory is written last, so a truncated
    file fails ``is_zipfile``. A sharded one is a folder with DCP's ``.metadata`` and Lightning's ``meta.pt``.
    """
    path = path.resolve()  # save_last="link" makes last.ckpt a symlink
    if path.is_dir():
        return (path / ".metadata").is_file() and zipfile.is_zipfile(path / SHARDED_META)
    return path.is_file() and zipfile.is_zipfile(path)


def saved_at(path: Path) -> float:
    """Modification time of the file written last by the save (``meta.pt`` for a sharded folder)."""
    path = path.resolve()
    return (path / SHARDED_META).stat().st_mtime if path.is_dir() else path.stat().st_mtime


def candidates(root_dir: Path, checkpoint_dirs: list[Path]) -> list[Path]:
    """HPC checkpoints in ``root_dir`` and ``last*.ckpt`` in each ModelCheckpoint folder."""
    found = [p for p in root_dir.glob("hpc_ckpt_*.ckpt") if HPC_PATTERN.match(p.name)] if root_dir.is_dir() else []
    for folder in checkpoint_dirs:
        if folder.is_dir():
            found += [p for p in folder.iterdir() if LAST_PATTERN.match(p.name)]
    return found


def newest_checkpoint(root_dir: Path, checkpoint_dirs: list[Path]) -> Path | None:
    """The most recently saved complete checkpoint, or None."""
    complete = [p for p in candidates(root_dir, checkpoint_dirs) if is_complete(p)]
    return max(complete, key=saved_at, default=None)


def resolved_config(args: list[str]) -> dict[str, Any]:
    """The ``fit`` config these arguments resolve to, through the real CLI (``--print_config``: nothing is built)."""
    out = io.StringIO()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given both args and a command line
    try:
        # Everything printed, imports included, goes to the buffer: stdout carries only the answer.
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            from crossflow.cli import main as train_main

            train_main(["fit", *args, "--print_config"])
    finally:
        sys.argv = argv
    config = yaml.safe_load(out.getvalue())
    if not isinstance(config, dict) or "trainer" not in config:
        raise RuntimeError(f"could not resolve the training config from {args}")
    return config


def checkpoint_locations(config: dict[str, Any]) -> tuple[Path, list[Path]]:
    """(trainer.default_root_dir, the dirpath of every ModelCheckpoint callback) of a resolved config."""
    trainer = config["trainer"]
    root = Path(trainer.get("default_root_dir") or os.getcwd())
    dirs = []
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            dirpath = (callback.get("init_args") or {}).get("dirpath")
            if dirpath:  # without one, the folder depends on the logger's version: not stable across restarts
                dirs.append(Path(dirpath))
    return root, dirs


def main(args: list[str]) -> str:
    """The ``--ckpt_path`` value for ``train.py fit`` with ``args``."""
    root, dirs = checkpoint_locations(resolved_config(args))
    if not dirs:
        print("resume_ckpt: no ModelCheckpoint with a dirpath: periodic checkpoints cannot be found again",
              file=sys.stderr)
    newest = newest_checkpoint(root, dirs)
    return "last" if newest is None else str(newest)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
