"""Callbacks that tests add to real ``train.py`` runs (importable by subprocesses via PYTHONPATH=tests)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import lightning.pytorch as pl


class RecordLosses(pl.Callback):
    """Append every rank's training loss per step to ``<path>.rank<R>.jsonl``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "loss": float(loss.detach().float())}) + "\n")


class KillAt(pl.Callback):
    """SIGKILL this process (every rank) at the end of step ``step`` — no clean shutdown, no final save."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SampleAtEnd(pl.Callback):
    """After training, sample fixed prompts with the live (EMA) model on every rank; rank 0 saves them."""

    def __init__(self, path: str, prompts: list[str], num_steps: int = 3) -> None:
        super().__init__()
        self.path, self.prompts, self.num_steps = path, prompts, num_steps

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch

        from crossflow.inference import CrossFlowPipeline

        pipe = CrossFlowPipeline(pl_module.model_config, pl_module.sampling_model, pl_module.text_encoder, pl_module.codec)
        images = pipe(self.prompts, num_steps=self.num_steps, guidance_scale=2.0, output_type="pt",
                      generator=torch.Generator().manual_seed(0))
        if trainer.is_global_zero:
            torch.save(images.cpu(), self.path)


class SignalAt(pl.Callback):
    """Send ``signal`` to this process on rank ``rank`` only, at the end of step ``step`` (a preemption notice)."""

    def __init__(self, step: int, rank: int = 1, signal: str = "SIGUSR1") -> None:
        super().__init__()
        self.step, self.rank, self.signal = step, rank, signal

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.Signals[self.signal])
