"""Preemption: the signal sets a flag, the ranks agree at a step boundary, save `last`, requeue, stop cleanly.

The end-to-end check is a real 2-process FSDP2 ``train.py`` run (gloo, CPU) in which rank 1 alone gets SIGUSR1:
both ranks stop after the same step with exit status 0, and ``--ckpt_path last`` resumes to per-step losses
bitwise equal to an uninterrupted run's. The requeue command is checked in one process with a fake ``scontrol``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.environments import SLURMEnvironment
from test_distributed import MAX_STEPS, losses, run, shards, train_args  # noqa: F401  (shards: a fixture)
from train_helpers import SignalAt

from crossflow.checkpoint import is_sharded_checkpoint, read_lightning_meta
from crossflow.errors import CrossFlowError
from crossflow.preemption import Preemption, parse_signal

SIGNAL_STEP = 3


@pytest.fixture(autouse=True)
def restore_sigusr1() -> Iterator[None]:
    """A notice leaves SIGUSR1 ignored (see ``Preemption.teardown``), and an ignored signal is inherited by every
    process this one starts later: bash cannot even trap it then (the torchrun wrapper test would hang)."""
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


@pytest.fixture
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may run inside a SLURM job: never requeue that one."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)


def test_signal_on_one_rank_saves_last_at_the_step_boundary_and_resumes_exactly(
    no_slurm: None, tmp_path: Path, shards: dict[str, str], tiny_text_encoder_dir: str  # noqa: F811
) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    run([sys.executable, "train.py", *train_args(full, shards, tiny_text_encoder_dir)])
    # No Preemption on the command line: crossflow.cli adds it to every run.
    cmd = [sys.executable, "train.py", *train_args(cut, shards, tiny_text_encoder_dir)]
    run([*cmd, "--trainer.callbacks+=train_helpers.SignalAt", f"--trainer.callbacks.step={SIGNAL_STEP}"])  # exit 0
    for rank in (0, 1):  # rank 0 never got the signal, and stopped after the same step
        assert sorted(losses(cut, rank)) == list(range(1, SIGNAL_STEP + 1)), f"rank {rank}"
    last = cut / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and is_sharded_checkpoint(last)
    assert read_lightning_meta(last)["global_step"] == SIGNAL_STEP, "saved at the step the signal arrived"
    assert not list(cut.glob("hpc_ckpt_*")), "Lightning's handler did not save as well"

    run([*cmd, "--ckpt_path", "last"])
    for rank in (0, 1):
        assert sorted(losses(cut, rank)) == list(range(1, MAX_STEPS + 1))
        assert losses(cut, rank) == losses(full, rank), f"rank {rank} diverged after the preemption resume"


# --- one process: the requeue command ------------------------------------------------------------------------


def _fit(root: Path, preemption: Preemption, signal_step: int, **trainer_kwargs: object) -> pl.Trainer:
    """BoringModel for up to 6 steps; SIGUSR1 to this process at the end of ``signal_step``."""
    trainer = pl.Trainer(
        default_root_dir=root, max_steps=6, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpts", save_last=True, every_n_train_steps=100),
                   SignalAt(step=signal_step, rank=0), preemption],
        **trainer_kwargs,
    )
    trainer.fit(BoringModel())
    return trainer


def _step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_requeue_runs_scontrol_after_the_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.argv"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    # The fake also records whether the checkpoint was complete when it ran.
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\n[ -f {tmp_path}/ckpts/last.ckpt ] && echo saved >> {record}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0", "SLURM_JOB_NAME": "crossflow", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    environment = SLURMEnvironment()  # auto_requeue=True: Lightning's own save-in-the-handler, to be kept off
    before = signal.getsignal(signal.SIGUSR1)

    trainer = _fit(tmp_path, Preemption(), signal_step=2, plugins=[environment])

    assert trainer.global_step == 2, "stopped at the step the signal arrived"
    assert record.read_text().split("\n") == ["requeue 4242", "saved", ""], "one requeue, after the save"
    assert _step_of(tmp_path / "ckpts" / "last.ckpt") == 2
    assert not environment.auto_requeue and not list(tmp_path.glob("hpc_ckpt_*"))
    assert before == signal.SIG_DFL, "pytest leaves SIGUSR1 at its default"
    # A duplicate notice (SLURM signals every process; the torchrun wrapper forwards a copy) must not kill the
    # exiting rank, as the default action would.
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN, "after a notice, further ones are ignored"


def test_without_a_notice_the_previous_handler_is_back(tmp_path: Path) -> None:
    def mine(*_: object) -> None:
        pass

    for previous in (signal.SIG_DFL, mine):
        signal.signal(signal.SIGUSR1, previous)
        _fit(tmp_path / str(id(previous)), Preemption(), signal_step=100)  # never signalled
        assert signal.getsignal(signal.SIGUSR1) == previous
    _fit(tmp_path / "again", Preemption(), signal_step=2)  # a handler of the user's own is back even after a notice
    assert signal.getsignal(signal.SIGUSR1) == mine


def test_missing_scontrol_is_logged_and_checks_every_n_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol here
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    with caplog.at_level(logging.ERROR, logger="crossflow.preemption"):
        trainer = _fit(tmp_path, Preemption(check_every_n_steps=2), signal_step=3)
    assert trainer.global_step == 4, "the signal at step 3 is seen at the next check, step 4"
    assert _step_of(tmp_path / "ckpts" / "last.ckpt") == 4
    assert "scontrol not found, SLURM job 7 not requeued" in caplog.text


def test_arguments() -> None:
    assert parse_signal("usr2") == signal.SIGUSR2
    with pytest.raises(CrossFlowError, match="Lightning handles SIGTERM"):
        Preemption(signal="SIGTERM")
    with pytest.raises(CrossFlowError, match="unknown signal"):
        Preemption(signal="SIGNOPE")
    with pytest.raises(CrossFlowError, match="must be >= 1"):
        Preemption(check_every_n_steps=0)


def test_listed_before_a_callback_with_step_end_state_warns(tmp_path: Path) -> None:
    class Averager(pl.Callback):  # like EMA: checkpointed state, updated in on_train_batch_end
        def on_train_batch_end(self, *args: object) -> None:
            pass

        def state_dict(self) -> dict[str, int]:
            return {"n": 0}

    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[Preemption(), Averager()])
    with pytest.warns(UserWarning, match="Preemption is listed before Averager:"):  # not the progress bar
        trainer.fit(BoringModel())
