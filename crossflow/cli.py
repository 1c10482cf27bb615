"""``python train.py fit --config configs/demo.yaml``: LightningCLI over the CrossFlow module and shard data."""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance, set_parsing_settings
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

from crossflow.datamodule import ShardDataModule
from crossflow.errors import exit_on_user_error
from crossflow.lit_module import CrossFlowLitModule
from crossflow.preemption import Preemption
from crossflow.provenance import git_sha
from crossflow.strategies import AtomicCheckpointIO


class RunInfo(pl.Callback):
    """Writes ``run_info.json`` (git SHA, command line, versions) next to the resolved config."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_dir = trainer.log_dir or trainer.default_root_dir  # a collective on some strategies: every rank asks
        if not trainer.is_global_zero:
            return
        os.makedirs(run_dir, exist_ok=True)
        info: dict[str, Any] = {
            "git_sha": git_sha(), "argv": sys.argv, "python": platform.python_version(),
            "torch": torch.__version__, "lightning": pl.__version__, "world_size": trainer.world_size,
        }
        with open(os.path.join(run_dir, "run_info.json"), "w") as f:
            json.dump(info, f, indent=2)


KEEP_CPU_BF16 = "CROSSFLOW_CPU_BF16"
"""Set to 1 to train in bf16 on a CPU without native bf16 anyway (see :func:`cpu_bf16_is_emulated`)."""


def cpu_bf16_is_emulated() -> bool:
    """True when this CPU has no native bf16 matmul (no AVX512-BF16 / AMX): oneDNN then emulates it, and a bf16
    step runs tens of times slower than fp32 (measured 65x for a 512² matmul on an AVX2-only EPYC)."""
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a torch without the probe: assume the config knows best
        return False


class CrossFlowCLI(LightningCLI):
    """LightningCLI with CrossFlow's links: sizes derived from the model config are never repeated."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("model.model.codec.image_size", "data.image_size", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        """bf16 on a CPU that only emulates it becomes fp32, with one warning (the CPU configs ask for bf16, which
        is the fast choice where the CPU has it)."""
        trainer = self.config[self.subcommand].trainer if self.subcommand else self.config.trainer
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        if (on_cpu and "bf16" in str(trainer.precision) and os.environ.get(KEEP_CPU_BF16) != "1"
                and cpu_bf16_is_emulated()):
            print(f"warning: this CPU has no native bf16 (torch CPU capability "
                  f"{torch.backends.cpu.get_cpu_capability()}): training in fp32 instead of {trainer.precision}, "
                  f"which would run tens of times slower here; {KEEP_CPU_BF16}=1 keeps bf16", file=sys.stderr)
            trainer.precision = "32-true"


def main(args: list[str] | None = None) -> None:
    """Entry point of train.py; user errors become one line on stderr and exit status 2."""
    torch.set_float32_matmul_precision("high")
    # Dataclass attribute docstrings become --help text.
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    with exit_on_user_error():
        CrossFlowCLI(
            CrossFlowLitModule,
            ShardDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            # wandb is the default logger, offline (no network, no account): `wandb sync` uploads later;
            # --trainer.logger.init_args.offline=false logs online.
            trainer_defaults={
                # Preemption: SIGUSR1 -> save `last` at the next step boundary on all ranks, requeue under SLURM.
                "callbacks": [RunInfo(), Preemption()],
                # Checkpoint files are written to <path>.partial and renamed: a crash never leaves a torn one.
                "plugins": [AtomicCheckpointIO()],
                "logger": lazy_instance(WandbLogger, project="crossflow", offline=True, save_dir="runs"),
            },
        )
