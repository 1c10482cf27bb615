"""Preemption that is safe on many ranks: the signal only sets a flag; the ranks agree at a step boundary.

Lightning's SLURM auto-requeue calls ``trainer.save_checkpoint`` *inside* its SIGUSR1 handler, at whatever
bytecode each rank has reached. Under FSDP2 or DDP that save is collective (DCP, the per-rank gather of
``crossflow/resume.py``, barriers), so ranks can enter mismatched collectives: a hang or a torn checkpoint
(Lightning issue #21406). :class:`Preemption` replaces it:

1. the signal handler only sets a flag (no I/O, no collectives);
2. right after an optimizer step (every ``check_every_n_steps``), all ranks agree whether any rank got the
   signal: one all-reduce of a 0/1 flag (Lightning's loop already broadcasts its SIGTERM flag every step, so
   this adds no new synchronisation point);
3. if one did, every rank saves the ``last`` checkpoint of the ``ModelCheckpoint`` callback at this step
   boundary, where ``--ckpt_path last`` finds it;
4. rank 0 runs ``scontrol requeue <job>`` when under SLURM;
5. ``trainer.should_stop``: the run ends cleanly (exit status 0) and the requeued job resumes with
   ``--ckpt_path last``; from the end of fit on, further copies of the signal are ignored, so that a duplicate
   cannot kill the exiting rank.

SIGTERM is not handled, on purpose: SLURM also sends it for ``scancel`` (a requeue would resurrect a cancelled
job), it comes only KillWait (30 s by default) or GraceTime before SIGKILL, often too short for a sharded save,
and Lightning handles it already (it stops at the next step boundary). For notice before preemption, sites set
``PreemptParameters=send_user_signal`` in slurm.conf, which sends the job's ``--signal`` at preemption time.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from crossflow.errors import CrossFlowError

log = logging.getLogger(__name__)

# Owned by Lightning (SIGTERM, SIGINT) or impossible to catch.
_REFUSED = {"SIGTERM", "SIGINT", "SIGKILL", "SIGSTOP"}


def parse_signal(name: str) -> signal.Signals:
    """``"SIGUSR1"``, ``"USR1"`` or ``"sigusr1"`` -> ``signal.SIGUSR1``."""
    key = name.strip().upper()
    key = key if key.startswith("SIG") else f"SIG{key}"
    if key in _REFUSED:
        raise CrossFlowError(
            f"Preemption(signal={name!r}) is not supported: use SIGUSR1 (sbatch --signal=SIGUSR1@120), "
            "Lightning handles SIGTERM and SIGINT itself"
        )
    try:
        return signal.Signals[key]
    except KeyError:
        raise CrossFlowError(f"Preemption(signal={name!r}): unknown signal name") from None


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes (``<array job>_<task>`` for an array task); None outside SLURM."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue <job_id>``; a failure is logged (the checkpoint is saved: resubmit by hand)."""
    cmd = ["scontrol", "requeue", job_id]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        log.error(f"Preemption: scontrol not found, SLURM job {job_id} not requeued: resubmit it with --ckpt_path last")
        return False
    except (OSError, subprocess.SubprocessError) as err:
        log.error(f"Preemption: `{' '.join(cmd)}` failed ({err}): resubmit the job with --ckpt_path last")
        return False
    if result.returncode != 0:
        log.error(f"Preemption: `{' '.join(cmd)}` exited with {result.returncode}: {result.stderr.strip()}")
        return False
    rank_zero_info(f"Preemption: requeued SLURM job {job_id}")
    return True


def _saves_step_end_state(callback: pl.Callback) -> bool:
    """A callback whose checkpointed state may change in ``on_train_batch_end`` (EMA does)."""
    hook = is_overridden("on_train_batch_end", callback, parent=pl.Callback)
    state = any(is_overridden(name, callback, parent=pl.Callback) for name in ("state_dict", "on_save_checkpoint"))
    return hook and state and not isinstance(callback, (Checkpoint, ProgressBar))


class Preemption(pl.Callback):
    """On ``signal``: save ``last`` at the next step boundary on all ranks, requeue the SLURM job, stop.

    ``crossflow.cli`` adds it to every ``train.py`` run; one listed in the config replaces that default.
    """

    def __init__(self, signal: str = "SIGUSR1", requeue: bool = True, check_every_n_steps: int = 1) -> None:
        """
        Args:
            signal: The notice signal (``sbatch --signal=SIGUSR1@<seconds>``); not SIGTERM (see the module doc).
            requeue: Under SLURM, rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` after the save.
            check_every_n_steps: Agree on the flag every n optimizer steps (one tiny all-reduce each time).
        """
        super().__init__()
        if check_every_n_steps < 1:
            raise CrossFlowError(f"Preemption(check_every_n_steps={check_every_n_steps}): must be >= 1")
        self.signum = parse_signal(signal)
        self.requeue = requeue
        self.check_every_n_steps = check_every_n_steps
        self.received = False
        self._installed = False
        self._previous_handler: Any = None
        self._last_checked_step = -1

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of whatever this rank is doing: only set the flag.
        self.received = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before Lightning's register_signal_handlers (Trainer._run): it then finds our handler and adds none.
        if stage != "fit" or self._installed:
            return
        if next(c for c in trainer.callbacks if isinstance(c, Preemption)) is not self:
            return  # one Preemption per run: the first (a configured one precedes crossflow.cli's default)
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("Preemption: fit does not run in the main thread, no signal handler: preemption is ignored")
            return
        environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # Lightning's requeue handler saves inside the signal handler: unsafe with collectives (module doc).
            environment.auto_requeue = False
        self.received = False
        self._previous_handler = signal.signal(self.signum, self._on_signal)
        self._installed = True
        # The save holds what stateful callbacks do at the end of a step (EMA's update) only if it runs after
        # them; crossflow.cli's default is listed after every configured callback.
        later = trainer.callbacks[trainer.callbacks.index(self) + 1:]
        behind = [type(c).__name__ for c in later if _saves_step_end_state(c)]
        if behind:
            rank_zero_warn(f"Preemption is listed before {', '.join(behind)}: list it after them, or their "
                           "state at the end of a step is saved one step behind")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            previous = self._previous_handler  # None: a handler not set from Python, which cannot be restored
            if previous is None or previous == signal.SIG_DFL:
                # After a notice the process is on its way out, and a duplicate may still come (SLURM signals every
                # process of the step, the torchrun node wrapper forwards its copy): with the default action it
                # would kill this rank with SIGUSR1 while it exits, which torchrun reports as a failed worker.
                previous = signal.SIG_IGN if self.received else signal.SIG_DFL
            signal.signal(self.signum, previous)
        self._installed = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_checked_step = trainer.global_step  # after a resume: the restored step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self._installed:
            return
        step = trainer.global_step
        # Right after an optimizer step only (never between accumulated micro-batches, whose gradients a
        # checkpoint does not hold); every rank takes the same branch, so the collective below always matches.
        if step == self._last_checked_step or step % self.check_every_n_steps:
            return
        self._last_checked_step = step
        stop = self.received
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)  # any rank got it
        if stop:
            self._save_requeue_stop(trainer, step)

    @staticmethod
    def model_checkpoint(trainer: pl.Trainer) -> ModelCheckpoint | None:
        """The first ModelCheckpoint: the one whose ``last`` Lightning's ``--ckpt_path last`` considers."""
        return next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)

    def checkpoint_path(self, trainer: pl.Trainer) -> str:
        """Where ``last`` goes: the ModelCheckpoint's current ``last`` file, or the name it would give one."""
        callback = self.model_checkpoint(trainer)
        if callback is None:  # `--ckpt_path last` cannot find it then: the log line says so
            return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
        if callback.last_model_path:
            return callback.last_model_path
        metrics = {**trainer.callback_metrics, "epoch": torch.tensor(trainer.current_epoch),
                   "step": torch.tensor(trainer.global_step)}
        return callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST)

    def _save_requeue_stop(self, trainer: pl.Trainer, step: int) -> None:
        path = self.checkpoint_path(trainer)
        callback = self.model_checkpoint(trainer)
        resume = "--ckpt_path last" if callback is not None else f"--ckpt_path {path} (no ModelCheckpoint)"
        rank_zero_info(f"Preemption: {self.signum.name} received, saving {path} at step {step}; resume with {resume}")
        if callback is not None:
            callback.last_model_path = path  # before the save: it is part of the saved callback state
        trainer.save_checkpoint(path)  # on every rank, at the same step boundary
        if callback is not None:
            # ModelCheckpoint's own bookkeeping, so that it does not save this step again at epoch or train end.
            callback._last_global_step_saved = step
            callback._last_checkpoint_saved = path
        trainer.should_stop = True
        # Lightning validates when a run stops early; the notice time is for the save, not for a validation.
        trainer.limit_val_batches = 0
        done = trainer.max_steps != -1 and step >= trainer.max_steps
        job_id = slurm_job_id()
        if self.requeue and job_id is not None and not done and trainer.is_global_zero:
            requeue_slurm_job(job_id)  # after the save: SLURM stops the job right away
