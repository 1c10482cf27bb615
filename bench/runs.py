"""Training runs for bench scripts: one call per run through the real CLI (crossflow.cli), skipped when done.

A run is finished when ``RUN/checkpoints/last.ckpt`` and ``RUN/train_seconds.txt`` exist, so an interrupted bench
resumes where it stopped and its numbers always come from complete runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from crossflow.cli import main as train_main


def checkpoint_callbacks(run_dir: Path, ema_decay: float, lora: bool = False) -> list[str]:
    """CLI overrides: EMA, a last.ckpt in ``run_dir``/checkpoints, and the LoRA adapter file when asked."""
    out = [
        "--trainer.callbacks=crossflow.callbacks.EMA", f"--trainer.callbacks.decay={ema_decay}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={run_dir}/checkpoints", "--trainer.callbacks.save_last=true",
    ]
    return out + ["--trainer.callbacks+=crossflow.callbacks.SaveLoRA"] if lora else out


def train(configs: list[str], run_dir: Path, train_shards: Path, val_shards: Path, steps: int,
          extra: list[str]) -> Path:
    """Train ``steps`` steps from ``configs`` (later ones override) on the given shards; returns last.ckpt."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    seconds = run_dir / "train_seconds.txt"
    if ckpt.exists() and seconds.exists():
        return ckpt
    start = time.time()
    train_main([
        "fit", *(arg for c in configs for arg in ("--config", c)), f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
        "--trainer.enable_progress_bar=false", f"--data.train_shards={train_shards}",
        f"--data.val_shards={val_shards}", "--data.generate_shapes=null", *extra,
    ])
    seconds.write_text(f"{time.time() - start:.0f}\n")
    return ckpt


def train_seconds(ckpt: Path) -> int:
    """Wall-clock training seconds recorded by :func:`train` for the run holding ``ckpt``."""
    return int((ckpt.parent.parent / "train_seconds.txt").read_text())
