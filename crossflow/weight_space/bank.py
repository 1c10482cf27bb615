"""Many instance fine-tunes in one model: banked LoRA on the flow's attention q/v, and banked text-latent offsets.

weights2weights (Dravid et al. 2024, "Interpreting the Weight Space of Customized Diffusion Models", arXiv
2406.09413) trains one LoRA per identity. Trained one by one, 300 identities cost 300 runs; here they train in one:
every ``attn.qkv`` of the flow transformer is wrapped in a :class:`BankedLoRALinear` that holds the factors of all
K instances, and each sample of a batch adds only its own instance's update,

    qkv(x)_b = W x_b + bias + scatter_{q, v rows}( B[i_b] A[i_b] x_b )          i_b = the instance id of sample b,

so a sample's flow-matching loss reaches its instance's A, B and nothing else (the base weights are frozen).

    bank = LoraBank.attach(model, num_instances=300, rank=2)    # k rows untouched, B = 0: the model is unchanged
    with bank.instances(ids):                                     # ids: (B,) long, -1 = no instance
        v = model.velocity(x_t, t)
    deltas = bank.deltas()                                        # (K, L, P, D, D): ΔW of q and v in every block
    with bank.dense(deltas[3]):                                   # one explicit ΔW for every sample (sampling, edits)
        v = model.velocity(x_t, t)

:class:`TextOffsetBank` is the same idea in the text latent: one offset of the prompt's VE mean per instance (the
comparison the weight-space study makes: what can a text latent alone carry?). Both share :meth:`flow_loss` (the
objective of crossflow.weight_space.objective) and :meth:`vectors` (one flat-able tensor per instance, the point of
that instance in its space). Files: :func:`save_bank` / :func:`load_bank` (safetensors + JSON metadata). Pure
PyTorch, no Lightning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from crossflow.checkpoint import read_tagged_safetensors
from crossflow.data.shapes import Instance
from crossflow.errors import CrossFlowError
from crossflow.models.flow_model import FlowModel
from crossflow.weight_space.objective import PromptLatent, instance_flow_loss

BankKind = Literal["lora", "text"]
ROW_BLOCKS: dict[str, int] = {"q": 0, "k": 1, "v": 2}
"""Row block of each projection in the fused ``attn.qkv`` weight (models/layers.py: q, k, v in that order)."""
DEFAULT_TARGETS: tuple[str, ...] = ("q", "v")
"""LoRA on the query and value projections (issue 7's choice); keys untouched."""
BANK_META_KEY = "crossflow_bank"


def _check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    targets = tuple(targets)
    if not targets or len(set(targets)) != len(targets) or set(targets) - set(ROW_BLOCKS):
        raise CrossFlowError(f"targets must be distinct names from {list(ROW_BLOCKS)}, got {list(targets)}")
    return targets


def _tile_rows(values: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Per-sample values (n, ...) tiled to a forward's batch: CFG evaluates [x; x] (a multiple of n)."""
    n = values.shape[0]
    if n == batch:
        return values
    if n == 0 or batch % n:
        raise CrossFlowError(f"{what} holds {n} entries for a batch of {batch} (must equal it or divide it)")
    return values.repeat(batch // n, *([1] * (values.dim() - 1)))


class BankedLoRALinear(nn.Module):
    """A frozen fused ``qkv`` Linear(D, 3D) plus K instances' rank-r updates of chosen row blocks (q and v).

    ``A`` (K, P, r, D_in) and ``B`` (K, P, D, r) hold one factor pair per instance and target block (P targets):
    separate factors for q and v, as separate LoRAs on the two projections. B starts at zero (the model starts
    unchanged), A small and random (Hu et al. 2021): one draw per instance, or with ``shared_init`` one draw that
    every instance starts from, so that the instances' ΔW = B A begin in one row space. (On the shapes bank, 300
    instances and 10000 steps, that changed little: 23.5% of the variance in 20 PCs against 21%;
    docs/experiments.md.) Three modes, set by :class:`LoraBank`'s context managers:

    - nothing set: the base layer, bit for bit (one check);
    - instance ids (B,): sample b adds B[i_b] A[i_b] x_b on its target rows (id -1: nothing);
    - a dense ΔW (P, D, D_in): every sample uses W + ΔW on the target rows (differentiable in ΔW).
    """

    def __init__(self, base: nn.Linear, num_instances: int, rank: int, targets: Sequence[str] = DEFAULT_TARGETS,
                 generator: torch.Generator | None = None, shared_init: bool = False) -> None:
        super().__init__()
        if base.out_features % 3:
            raise CrossFlowError(f"expected a fused qkv Linear with 3·D outputs, got {base.out_features}")
        if num_instances < 0 or rank < 1:
            raise CrossFlowError(f"need num_instances >= 0 and rank >= 1, got {num_instances} and {rank}")
        self.base = base
        self.targets = _check_targets(targets)
        self.width = base.out_features // 3
        self.rank = rank
        p, d_in = len(self.targets), base.in_features
        device, dtype = base.weight.device, base.weight.dtype
        a = torch.rand(1 if shared_init else num_instances, p, rank, d_in, generator=generator, dtype=torch.float32)
        a = a.expand(num_instances, -1, -1, -1).clone()
        bound = 1.0 / math.sqrt(d_in)  # peft's default A: kaiming_uniform(a=√5) = U(±1/√fan_in)
        self.A = nn.Parameter(((2 * a - 1) * bound).to(device, dtype))
        self.B = nn.Parameter(torch.zeros(num_instances, p, self.width, rank, device=device, dtype=dtype))
        self._ids: torch.Tensor | None = None
        self._delta: torch.Tensor | None = None

    @property
    def num_instances(self) -> int:
        return self.A.shape[0]

    def row_index(self, device: torch.device) -> torch.Tensor:
        """Rows of the fused weight the targets occupy, in target order ((P·D,))."""
        return torch.cat([torch.arange(self.width, device=device) + ROW_BLOCKS[name] * self.width
                          for name in self.targets])

    def instance_deltas(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW = B A of instances ``ids`` (all by default): (n, P, D, D_in)."""
        a, b = (self.A, self.B) if ids is None else (self.A[ids], self.B[ids])
        return b @ a

    def merged_weight(self, delta: torch.Tensor) -> torch.Tensor:
        """W with ``delta`` (P, D, D_in) added on the target rows (what merging the update would store)."""
        weight = self.base.weight
        flat = delta.to(weight.dtype).reshape(-1, weight.shape[1])
        return weight.index_add(0, self.row_index(weight.device), flat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._delta is not None:
            return F.linear(x, self.merged_weight(self._delta), self.base.bias)
        y = self.base(x)
        if self._ids is None:
            return y
        ids = _tile_rows(self._ids.to(x.device), x.shape[0], "the instance ids")
        known = (ids >= 0).to(x.dtype)
        safe = ids.clamp_min(0)
        a, b = self.A[safe].to(x.dtype), self.B[safe].to(x.dtype)  # (B, P, r, D_in), (B, P, D, r)
        low = torch.einsum("bni,bpri->bnpr", x, a)
        update = torch.einsum("bnpr,bpor->bnpo", low, b) * known[:, None, None, None]  # (B, N, P, D)
        rows = torch.tensor([ROW_BLOCKS[name] for name in self.targets], device=x.device)
        return y.unflatten(-1, (3, self.width)).index_add(-2, rows, update.to(y.dtype)).flatten(-2)


def _qkv_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every flow block's fused ``attn.qkv``, in block order."""
    flow = getattr(model, "flow", None)
    blocks = getattr(flow, "blocks", None)
    if blocks is None:
        raise CrossFlowError(f"expected a flow model with .flow.blocks (a CrossFlow model), got {type(model).__name__}")
    return [(block.attn, "qkv") for block in blocks]


class LoraBank:
    """The :class:`BankedLoRALinear` layers attached to one model's flow blocks, handled together.

    Not an nn.Module: the layers (and their A, B) are the model's own submodules; this object only reaches them.
    """

    kind: BankKind = "lora"

    def __init__(self, layers: Sequence[BankedLoRALinear]) -> None:
        if not layers:
            raise CrossFlowError("a LoRA bank needs at least one layer")
        self.layers = list(layers)

    # ------------------------------------------------------------------------------------------- surgery

    @classmethod
    def attach(cls, model: FlowModel, num_instances: int, rank: int = 2, targets: Sequence[str] = DEFAULT_TARGETS,
               generator: torch.Generator | None = None, freeze: bool = True, shared_init: bool = False) -> LoraBank:
        """Wrap every flow block's ``attn.qkv`` of ``model`` (in place); with ``freeze``, everything in ``model`` but
        the bank's A, B stops requiring grad. ``shared_init``: every instance's A starts from the same draw
        (:class:`BankedLoRALinear`)."""
        if cls.of(model) is not None:
            raise CrossFlowError("this model already carries a LoRA bank (detach it first)")
        if freeze:
            model.requires_grad_(False)
        layers = []
        for parent, name in _qkv_layers(model):
            base = getattr(parent, name)
            if not isinstance(base, nn.Linear):
                raise CrossFlowError(f"expected attn.qkv to be an nn.Linear, got {type(base).__name__}")
            layer = BankedLoRALinear(base, num_instances, rank, targets, generator=generator, shared_init=shared_init)
            setattr(parent, name, layer)
            layers.append(layer)
        return cls(layers)

    @classmethod
    def attach_dense(cls, model: FlowModel, targets: Sequence[str] = DEFAULT_TARGETS) -> LoraBank:
        """The model's bank if it has one, else layers with no instances, attached for good: dense-ΔW mode only
        (sampling from a space). They cost one check per forward while no ΔW is set, and freeze nothing."""
        existing = cls.of(model)
        if existing is not None:
            if existing.targets != _check_targets(targets):
                raise CrossFlowError(f"the model's bank adapts {list(existing.targets)}, not {list(targets)}")
            return existing
        return cls.attach(model, 0, 1, targets, freeze=False)

    @classmethod
    def of(cls, model: nn.Module) -> LoraBank | None:
        """The bank attached to ``model``, or None."""
        layers = [getattr(parent, name) for parent, name in _qkv_layers(model)]
        if not any(isinstance(layer, BankedLoRALinear) for layer in layers):
            return None
        return cls(layers)

    def detach(self, model: FlowModel) -> None:
        """Put the plain Linear layers back (the bank's weights are dropped from the model)."""
        for (parent, name), layer in zip(_qkv_layers(model), self.layers, strict=True):
            setattr(parent, name, layer.base)

    # ---------------------------------------------------------------------------------------- properties

    @property
    def num_instances(self) -> int:
        return self.layers[0].num_instances

    @property
    def rank(self) -> int:
        return self.layers[0].rank

    @property
    def targets(self) -> tuple[str, ...]:
        return self.layers[0].targets

    @property
    def vector_shape(self) -> tuple[int, ...]:
        """Shape of one instance's dense ΔW: (L blocks, P targets, D out, D in)."""
        layer = self.layers[0]
        return (len(self.layers), len(layer.targets), layer.width, layer.base.in_features)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable factors A, B of every layer."""
        for layer in self.layers:
            yield layer.A
            yield layer.B

    # -------------------------------------------------------------------------------------------- modes

    @contextmanager
    def instances(self, ids: torch.Tensor | Sequence[int]) -> Iterator[LoraBank]:
        """Within the block, sample b of every forward adds instance ``ids[b]``'s update (-1: none). A batch that is a
        multiple of len(ids) (CFG's [x; x]) repeats the ids."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1 or (ids.numel() and int(ids.max()) >= self.num_instances) or (ids.numel() and int(ids.min()) < -1):
            raise CrossFlowError(f"instance ids must be a 1-D list in [-1, {self.num_instances - 1}], got {ids.tolist()}")
        with self._set(ids=ids):
            yield self

    @contextmanager
    def dense(self, delta: torch.Tensor | None) -> Iterator[LoraBank]:
        """Within the block every sample uses W + ΔW: ``delta`` (L, P, D, D_in), e.g. one row of :meth:`deltas` or a
        decoded weight-space point. None: the base model (no cost). Differentiable in ``delta``."""
        if delta is not None and tuple(delta.shape) != self.vector_shape:
            raise CrossFlowError(f"a dense ΔW must have shape {self.vector_shape}, got {tuple(delta.shape)}")
        with self._set(delta=delta):
            yield self

    @contextmanager
    def _set(self, ids: torch.Tensor | None = None, delta: torch.Tensor | None = None) -> Iterator[None]:
        if any(layer._ids is not None or layer._delta is not None for layer in self.layers):
            raise CrossFlowError("a bank mode is already set (instances / dense do not nest)")
        try:
            for index, layer in enumerate(self.layers):
                layer._ids = ids
                layer._delta = None if delta is None else delta[index]
            yield
        finally:
            for layer in self.layers:
                layer._ids = layer._delta = None

    # ------------------------------------------------------------------------------------------ vectors

    @torch.no_grad()
    def deltas(self, ids: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Dense ΔW of instances ``ids`` (all by default): (n, L, P, D, D_in), float32 on the CPU."""
        index = None if ids is None else torch.as_tensor(ids, dtype=torch.long)
        return torch.stack([layer.instance_deltas(index).float().cpu() for layer in self.layers], dim=1)

    def vectors(self) -> torch.Tensor:
        """One point per instance for its space: the dense ΔW (:meth:`deltas`)."""
        return self.deltas()

    def flow_loss(self, model: FlowModel, prompt: PromptLatent, z_image: torch.Tensor, ids: torch.Tensor,
                  generator: torch.Generator | None = None, time_sampling: str = "uniform",
                  time_shift: float = 1.0) -> torch.Tensor:
        """The instance objective (objective.instance_flow_loss) with sample b under instance ids[b]'s update."""
        with self.instances(ids):
            return instance_flow_loss(model, prompt, z_image, generator, time_sampling, time_shift=time_shift)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A (L, K, P, r, D_in) and B (L, K, P, D, r), float32 on the CPU."""
        return {"A": torch.stack([layer.A.detach().float().cpu() for layer in self.layers]),
                "B": torch.stack([layer.B.detach().float().cpu() for layer in self.layers])}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        for key in ("A", "B"):
            if key not in state or tuple(state[key].shape) != tuple(expected[key].shape):
                got = tuple(state[key].shape) if key in state else "nothing"
                raise CrossFlowError(f"bank tensor {key}: expected {tuple(expected[key].shape)}, got {got}")
        for index, layer in enumerate(self.layers):
            layer.A.copy_(state["A"][index])
            layer.B.copy_(state["B"][index])


class TextOffsetBank(nn.Module):
    """One learned offset of the prompt's VE mean per instance: z_text = μ + offset[i] + σ·ε (the text-latent
    counterpart of :class:`LoraBank`; the flow's weights stay the base's)."""

    kind: BankKind = "text"

    def __init__(self, num_instances: int, grid_shape: Sequence[int]) -> None:
        super().__init__()
        if num_instances < 1:
            raise CrossFlowError(f"need at least one instance, got {num_instances}")
        self.offsets = nn.Parameter(torch.zeros(num_instances, *grid_shape))

    @property
    def num_instances(self) -> int:
        return self.offsets.shape[0]

    @property
    def vector_shape(self) -> tuple[int, ...]:
        """Shape of one offset: the VE's grid (C, h, w)."""
        return tuple(self.offsets.shape[1:])

    def vectors(self) -> torch.Tensor:
        """One point per instance: its offset (K, C, h, w), float32 on the CPU."""
        return self.offsets.detach().float().cpu()

    def flow_loss(self, model: FlowModel, prompt: PromptLatent, z_image: torch.Tensor, ids: torch.Tensor,
                  generator: torch.Generator | None = None, time_sampling: str = "uniform",
                  time_shift: float = 1.0) -> torch.Tensor:
        """The instance objective with sample b's text latent moved by offset[ids[b]]."""
        return instance_flow_loss(model, prompt, z_image, generator, time_sampling, text_offset=self.offsets[ids],
                                  time_shift=time_shift)

    def load_offsets(self, offsets: torch.Tensor) -> None:
        if tuple(offsets.shape) != tuple(self.offsets.shape):
            raise CrossFlowError(f"bank offsets: expected {tuple(self.offsets.shape)}, got {tuple(offsets.shape)}")
        with torch.no_grad():
            self.offsets.copy_(offsets)


# ------------------------------------------------------------------------------------------------ files


@dataclass
class BankRecord:
    """What a bank file says about itself besides its tensors."""

    kind: BankKind
    instances: list[Instance]
    token: str
    prompt: str
    base_config: dict[str, Any]
    """The base model's ModelConfig (to_dict): a bank only fits the model it was trained on."""
    base_checkpoint: str | None = None
    rank: int | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    training: dict[str, Any] = field(default_factory=dict)
    """Steps, batch size, learning rate, wall-clock seconds, final loss (see training.BankTrainConfig)."""

    def to_json(self) -> str:
        data = asdict(self)
        data["instances"] = [inst.to_dict() for inst in self.instances]
        data["targets"] = list(self.targets)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> BankRecord:
        data = json.loads(text)
        data["instances"] = [Instance.from_dict(d) for d in data["instances"]]
        data["targets"] = tuple(data.get("targets", DEFAULT_TARGETS))
        return cls(**data)


def save_bank(bank: LoraBank | TextOffsetBank, record: BankRecord, path: str | os.PathLike) -> Path:
    """Write the bank's tensors (LoRA: A, B; text: offsets) and ``record`` (JSON metadata) to one safetensors file."""
    from crossflow.checkpoint import atomic_write_file

    if record.kind != bank.kind or len(record.instances) != bank.num_instances:
        raise CrossFlowError(f"record ({record.kind}, {len(record.instances)} instances) does not describe this bank "
                             f"({bank.kind}, {bank.num_instances})")
    tensors = bank.state_dict() if isinstance(bank, LoraBank) else {"offsets": bank.vectors()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata={BANK_META_KEY: record.to_json()}))
    return path


def read_bank(path: str | os.PathLike) -> tuple[BankRecord, dict[str, torch.Tensor]]:
    """(record, tensors) of a bank file written by :func:`save_bank`."""
    meta, tensors = read_tagged_safetensors(path, BANK_META_KEY, "bank file", "instance bank")
    return BankRecord.from_json(meta[BANK_META_KEY]), tensors


def vectors_from_file(record: BankRecord, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The instance vectors of a bank file without building a model: LoRA ΔW = B·A (K, L, P, D, D_in), or the
    text offsets (K, C, h, w)."""
    if record.kind == "text":
        return tensors["offsets"].float()
    return (tensors["B"].float() @ tensors["A"].float()).transpose(0, 1).contiguous()


def check_base(base_config: dict[str, Any] | None, model: nn.Module, what: str) -> None:
    """Refuse a bank or space trained on another base model than ``model`` (compared by model config)."""
    from crossflow.config import ModelConfig, config_diff

    config = getattr(model, "config", None)
    if base_config is None or not isinstance(config, ModelConfig):
        return
    diff = config_diff(ModelConfig.from_dict(base_config), config)
    if diff:
        raise CrossFlowError(f"{what} was trained on another base model: {'; '.join(diff[:3])}")


def load_bank(path: str | os.PathLike, model: FlowModel) -> tuple[LoraBank | TextOffsetBank, BankRecord]:
    """Rebuild a saved bank on ``model`` (its base): a LoRA bank is attached to it, a text bank stands beside it."""
    record, tensors = read_bank(path)
    check_base(record.base_config, model, f"bank {path}")
    if record.kind == "text":
        bank: LoraBank | TextOffsetBank = TextOffsetBank(len(record.instances), tensors["offsets"].shape[1:])
        bank.load_offsets(tensors["offsets"])
        return bank.to(next(model.parameters()).device), record
    if record.rank is None or "A" not in tensors:
        raise CrossFlowError(f"bank {path} says kind 'lora' but holds no rank / A, B")
    bank = LoraBank.attach(model, len(record.instances), record.rank, record.targets)
    bank.load_state_dict(tensors)
    return bank, record
