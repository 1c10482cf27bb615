"""Lightning strategy and checkpoint IO for scale-out: FSDP2 data parallelism with atomic, safe checkpoints.

``configs/trainer/fsdp2.yaml`` selects :class:`FSDP2Strategy`; DDP and single-device runs use Lightning's
own strategies with :class:`AtomicCheckpointIO` (set by ``crossflow.cli``). Sharding itself is applied by
``crossflow.parallel.parallelize`` from the LightningModule's ``configure_model``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from crossflow.checkpoint import (
    SafeFileSystemReader,
    atomic_write_file,
    commit_directory,
    is_sharded_checkpoint,
    read_lightning_meta,
    remove_checkpoint,
    sharded_keys,
)
from crossflow.errors import CrossFlowError

# Tensors a checkpoint may lack: the frozen text encoder (never saved, it reloads from its source) and
# the EMA copy (re-initialised from the weights by the EMA callback when absent).
OPTIONAL_PREFIXES = ("text_encoder.", "ema_model.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<path>.partial``, fsync, rename: a crash mid-save keeps the previous file whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_file(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))

    def remove_checkpoint(self, path: Any) -> None:
        remove_checkpoint(path)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure data parallelism: one FSDP2 mesh over every rank.

    Fixes the traps of the base class for our use (DESIGN.md): the data-parallel size is the world size
    on any number of nodes (``"auto"`` would make it the node count and replicate within a node), tensor
    parallelism is off; sharded (DCP) checkpoints are written to ``<path>.partial`` and published
    atomically (``crossflow.checkpoint.commit_directory``), and read back without unpickling code.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        """
        Args:
            save_distributed_checkpoint: Each rank writes its shard (DCP folder). False gathers full weights
                and optimizer state on rank 0 into one file (slow and memory-hungry at scale).
            process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPU (default: chosen by device).
            timeout: Collective timeout.
        """
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend, timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(path.name + ".partial")
        if self.is_global_zero and (partial.exists() or partial.is_symlink()):
            remove_checkpoint(partial)  # left by a crash during an earlier save
        self.barrier("checkpoint-clean")
        super().save_checkpoint(checkpoint, partial)  # every rank writes its shard, rank 0 the metadata
        self.barrier("checkpoint-written")
        if self.is_global_zero:
            commit_directory(partial, path)
        self.barrier("checkpoint-committed")

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            remove_checkpoint(filepath)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=True)
        # As Lightning's loader, but DCP's pickled metadata goes through our allow-list reader.
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        module = self.lightning_module
        assert module is not None and self.model is not None
        stored = sharded_keys(path)
        wanted = get_model_state_dict(self.model)
        # Request only what was saved (the frozen text encoder never is); anything else missing is an error.
        missing = [k for k in wanted if f"state_dict.{k}" not in stored and not k.startswith(OPTIONAL_PREFIXES)]
        if missing:
            raise CrossFlowError(f"checkpoint {path} lacks {len(missing)} model tensors, e.g. {missing[0]}")
        model_state = {"state_dict": {k: v for k, v in wanted.items() if f"state_dict.{k}" in stored}}
        dcp.load(model_state, storage_reader=SafeFileSystemReader(str(path)))
        self.model.load_state_dict(model_state["state_dict"], strict=False)
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optim_state = {key: get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(optim_state, storage_reader=SafeFileSystemReader(str(path)))
            set_optimizer_state_dict(
                self.model, optimizer, optim_state_dict=optim_state[key], options=StateDictOptions(cpu_offload=True)
            )
        return read_lightning_meta(path)


def mesh_param_dtype(precision: str | None) -> torch.dtype | None:
    """FSDP2's compute dtype for a Lightning precision flag: bf16 for ``bf16-mixed`` / ``bf16-true``."""
    return torch.bfloat16 if precision is not None and "bf16" in str(precision) else None
