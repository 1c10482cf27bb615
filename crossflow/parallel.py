"""Apply data parallelism to a CrossFlow model: FSDP2 per block + root, activation checkpointing, compile.

One function, :func:`parallelize`, in the spirit of torchtitan: the model code knows nothing about
sharding, and the LightningModule calls this from ``configure_model`` when the strategy provides a
device mesh (``crossflow.strategies.FSDP2Strategy``). Pure PyTorch: no Lightning here.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from crossflow.models.flow_model import FlowModel


def parallelize(
    model: FlowModel,
    mesh: DeviceMesh | None,
    *,
    param_dtype: torch.dtype | None = None,
    activation_checkpointing: bool = False,
    compile_blocks: bool = False,
    frozen: bool = False,
) -> FlowModel:
    """Shard ``model`` in place over the 1-D data-parallel ``mesh`` (None: no sharding, e.g. DDP).

    FSDP2 units: every transformer block of the model's parts (``blocks`` of each top-level child: VE and
    flow for CrossFlow, text conditioner and flow for the noise baseline), then each top-level child as a
    root holding its remaining parameters (embeddings, final layer, the VE's large output projection, the
    alignment head). The roots are modules whose ``forward`` the training step calls: FSDP2 gathers
    parameters in forward hooks, so a unit must be entered through its forward.

    Args:
        model: The trainable network (or its EMA copy, with ``frozen=True``).
        mesh: The *data-parallel* mesh (``device_mesh["data_parallel"]``; a 2-D mesh would replicate).
        param_dtype: Compute dtype of the all-gathered parameters (bf16 for bf16 training); gradients are
            always reduced in fp32 and the sharded master weights keep their dtype.
        activation_checkpointing: Recompute each flow block's activations in the backward pass.
        compile_blocks: ``torch.compile`` each flow block's forward (FSDP2's hooks stay outside the graph).
        frozen: A model that is never trained (the EMA weights): free everything after each forward.
    """
    model.flow.activation_checkpointing = activation_checkpointing
    if compile_blocks:
        for block in model.flow.blocks:
            # Compile forward, not the module: FSDP2's pre/post-forward hooks run eagerly around it, and
            # parameter names (hence checkpoint keys) stay unchanged.
            block.forward = torch.compile(block.forward)
    if mesh is None:
        return model
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    roots = list(model.children())  # CrossFlow: variational, flow, alignment
    for block in (block for root in roots for block in getattr(root, "blocks", ())):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    for root in roots:
        # Training: keep the roots gathered from forward to backward (they are needed first in backward).
        fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=frozen)
    return model
