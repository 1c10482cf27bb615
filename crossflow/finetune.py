"""Fine-tuning a released CrossFlow checkpoint: initial weights, full or LoRA training, adapter files.

    cfg = FinetuneConfig(init_from="runs/demo/checkpoints/last.ckpt", mode="lora", lora_rank=8)
    prepare_for_finetuning(model, cfg)        # load the weights (EMA preferred), add adapters, freeze the rest
    ...train...
    save_lora(model, "lora.safetensors")       # the adapters alone (+ the VE when it was fine-tuned too)
    merge_lora(model)                          # fold them into the base weights: a plain CrossFlowModel again

LoRA (Hu et al. 2021) goes through the ``peft`` library, on the Linear layers of the flow transformer's
blocks only: the flow network is where the image prior lives, while the VE defines the text-latent space
that sampling, interpolation and editing start from (kept frozen by default in LoRA mode). Pure PyTorch +
peft: no Lightning here (the training-time callback is ``crossflow.callbacks.SaveLoRA``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor

from crossflow.checkpoint import read_tagged_safetensors
from crossflow.config import ModelConfig, config_diff
from crossflow.errors import CrossFlowError

# peft (with transformers and accelerate: ~2 s) is imported only where adapters are made or read, so that
# sampling a plain checkpoint does not pay for it.
if TYPE_CHECKING:
    from peft import LoraConfig

log = logging.getLogger(__name__)

LoraTarget = Literal["qkv", "proj", "fc1", "fc2", "ada"]
# Module paths inside one flow-transformer block (models/layers.py AdaLNBlock).
LORA_TARGET_PATHS: dict[str, str] = {
    "qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2", "ada": "ada.1",
}
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
ADAPTER_NAME = "default"  # peft's adapter slot; one adapter per model here
# Safetensors metadata of an adapter file. Never "crossflow_config": that key marks a whole model for the
# loaders in inference.py.
LORA_META_KEY = "crossflow_lora"  # the LoraSpec
LORA_BASE_KEY = "crossflow_base_config"  # the model config of the base it was trained on
LORA_FULL_KEY = "crossflow_full_modules"  # parts saved whole beside the adapters (a VE trained in LoRA mode)
_SPEC_ATTR = "crossflow_lora_spec"  # set on a model that carries adapters
FULL_MODULES = ("variational", "alignment")  # the parts besides the flow transformer that LoRA mode may train


@dataclass(frozen=True)
class LoraSpec:
    """What adapters a model carries: enough to rebuild them before loading their weights."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        unknown = sorted(set(self.targets) - set(LORA_TARGET_PATHS))
        if unknown or not self.targets:
            raise CrossFlowError(f"LoRA targets must be a non-empty subset of {sorted(LORA_TARGET_PATHS)}, got {list(self.targets)}")
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise CrossFlowError(f"invalid LoRA setup: rank {self.rank} (>= 1), alpha {self.alpha} (> 0), dropout {self.dropout} ([0, 1))")

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": float(self.alpha), "targets": list(self.targets), "dropout": float(self.dropout)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSpec:
        try:
            return cls(**data)
        except TypeError as err:
            raise CrossFlowError(f"invalid LoRA config: {err}") from err

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        # A regex is matched against the full module name: only the flow transformer's blocks are adapted.
        paths = "|".join(re.escape(LORA_TARGET_PATHS[t]) for t in self.targets)
        # init_lora_weights=True: A random, B zero, so the adapted model starts exactly at the base model.
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=rf"flow\.blocks\.\d+\.({paths})", bias="none", init_lora_weights=True)


@dataclass
class FinetuneConfig:
    """Fine-tuning from released weights: full (every weight trains) or LoRA (adapters on the flow transformer)."""

    init_from: str | None = None
    """Initial weights: a Lightning .ckpt, a sharded (DCP) checkpoint folder, an exported .safetensors file or a
    saved pipeline folder. Only the model config's shapes must match (a mismatch names the tensors). None keeps
    the random init."""
    init_ema: bool = True
    """Start from the source's EMA weights when it has them (the weights its samples came from)."""
    mode: Literal["full", "lora"] = "full"
    """``full``: every trainable weight; ``lora``: low-rank adapters on the flow transformer, the rest frozen."""
    lora_rank: int = 8
    """Rank r of each adapter (LoRA mode)."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the update B·A is multiplied by alpha / r."""
    lora_targets: list[LoraTarget] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """Linear layers of every flow-transformer block that get adapters: ``qkv``, ``proj`` (attention), ``fc1``,
    ``fc2`` (MLP), ``ada`` (the adaLN time modulation)."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input (LoRA mode)."""
    freeze_variational: bool | None = None
    """Keep the Variational Encoder (text -> z_text) frozen. None: frozen in LoRA mode, trained in full mode.
    A VE trained in LoRA mode is saved whole beside the adapters (adapter files grow by its size)."""
    freeze_alignment: bool | None = None
    """Keep the alignment head (only used by the training loss) frozen. None: as the VE."""

    def lora_spec(self) -> LoraSpec | None:
        """The adapters this config asks for (None in full mode)."""
        if self.mode != "lora":
            return None
        return LoraSpec(self.lora_rank, self.lora_alpha, tuple(self.lora_targets), self.lora_dropout)

    def frozen_modules(self) -> list[str]:
        """Top-level parts of CrossFlowModel besides the flow transformer that stay frozen."""
        variational = self.freeze_variational if self.freeze_variational is not None else self.mode == "lora"
        alignment = self.freeze_alignment if self.freeze_alignment is not None else variational
        return [name for name, frozen in (("variational", variational), ("alignment", alignment)) if frozen]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- Initial weights ---

def _listing(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor], limit: int = 5) -> str | None:
    """What keeps ``loaded`` from loading strictly into a model whose state dict is ``expected``, or None.

    Names the tensors whose shapes differ (``name: checkpoint (..) vs model (..)``), then missing and
    unexpected keys; each list shows ``limit`` entries and counts the rest.
    """
    differ = [f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in loaded and tuple(loaded[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    parts = []
    if differ:
        parts.append(f"{len(differ)} tensor(s) differ in shape: {_listing(differ, limit)}")
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint: {_listing(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected in the checkpoint: {_listing(unexpected, limit)}")
    return "; ".join(parts) or None


def load_init_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = True) -> ModelConfig:
    """Load any CrossFlow checkpoint's weights (EMA preferred; a LoRA checkpoint merged) into ``model``.

    Returns the checkpoint's model config. Shapes must match exactly; a mismatch raises one
    :class:`CrossFlowError` naming the differing tensors. Config fields that differ without changing any
    shape (e.g. the text encoder's path) are logged as a warning.
    """
    from crossflow.inference import read_model_weights  # inference imports this module

    if has_lora(model):
        raise CrossFlowError("load initial weights before adding LoRA adapters (prepare_for_finetuning does)")
    config, state = read_model_weights(path, use_ema=use_ema)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        hint = config_diff(config, model.config) if isinstance(getattr(model, "config", None), ModelConfig) else []
        raise CrossFlowError(f"cannot initialise from {path}: its weights do not fit this model: {problem}"
                             + (f" (configs differ in {_listing(hint, 5)})" if hint else ""))
    model.load_state_dict(state, strict=True)
    if isinstance(getattr(model, "config", None), ModelConfig) and (diff := config_diff(config, model.config)):
        log.warning("initialised from %s, whose model config differs (checkpoint vs this run): %s", path, "; ".join(diff))
    return config


# --- LoRA ---

def _tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every peft adapter layer in ``model``."""
    if "peft" not in sys.modules:  # no adapter can exist before peft was imported (and it need not be)
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def has_lora(model: nn.Module) -> bool:
    """True when ``model`` carries (unmerged) LoRA adapters."""
    return bool(_tuner_layers(model))


def lora_spec_of(model: nn.Module) -> LoraSpec | None:
    """The spec of the adapters on ``model`` (None without adapters)."""
    return getattr(model, _SPEC_ATTR, None) if has_lora(model) else None


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject zero-initialised LoRA adapters (peft) into the flow transformer's blocks of ``model``, in place.

    Afterwards only the adapters are trainable (peft freezes every other parameter of ``model``);
    :func:`set_trainable` unfreezes the VE or alignment head. Module and parameter names of the adapted
    layers change (``...qkv.base_layer.weight``, ``...qkv.lora_A.default.weight``) until :func:`merge_lora`.
    """
    from peft import inject_adapter_in_model

    if has_lora(model):
        raise CrossFlowError("the model already carries LoRA adapters (merge_lora them first)")
    inject_adapter_in_model(spec.peft_config(), model, adapter_name=ADAPTER_NAME)
    setattr(model, _SPEC_ATTR, spec)
    return model


def set_trainable(model: nn.Module, frozen_modules: Sequence[str], lora: bool) -> None:
    """requires_grad per part: LoRA mode trains only the adapters and the unfrozen VE / alignment head;
    full mode trains everything except ``frozen_modules``."""
    for name, child in model.named_children():
        if name in frozen_modules:
            child.requires_grad_(False)
        elif not lora or name in FULL_MODULES:
            child.requires_grad_(True)
    if lora:
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)


def prepare_for_finetuning(model: nn.Module, cfg: FinetuneConfig) -> None:
    """Initial weights, then adapters, then freezing, in place (before any copy of the model is made)."""
    if cfg.init_from:
        load_init_weights(model, cfg.init_from, use_ema=cfg.init_ema)
    spec = cfg.lora_spec()
    if spec is not None:
        apply_lora(model, spec)
    set_trainable(model, cfg.frozen_modules(), lora=spec is not None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("fine-tuning (%s): %s of %s parameters trainable", cfg.mode, f"{trainable:,}", f"{total:,}")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A whole CPU tensor (an FSDP2 DTensor is gathered: a collective, so every rank must call this)."""
    t = t.full_tensor() if isinstance(t, DTensor) else t
    return t.detach().contiguous().cpu()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, named without peft's adapter slot (``flow.blocks.0.attn.qkv.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    if not has_lora(model):
        raise CrossFlowError("the model carries no LoRA adapters")
    return {k: _full(v) for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME).items()}


def trained_full_modules(model: nn.Module) -> list[str]:
    """Parts besides the flow transformer with trainable parameters (saved whole beside the adapters)."""
    return [name for name in FULL_MODULES
            if hasattr(model, name) and any(p.requires_grad for p in getattr(model, name).parameters())]


def lora_file_state(model: nn.Module, full_modules: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors of an adapter file: the adapters + the whole weights of ``full_modules`` (collective under FSDP2)."""
    state = lora_state_dict(model)
    for name in full_modules:
        state.update({f"{name}.{k}": _full(v) for k, v in getattr(model, name).state_dict().items()})
    return state


def write_lora_file(state: Mapping[str, torch.Tensor], spec: LoraSpec, base_config: ModelConfig | None,
                    full_modules: Sequence[str], path: str | os.PathLike) -> Path:
    """Write an adapter file (the spec, base config and full modules in its metadata), atomically."""
    from crossflow.checkpoint import atomic_write_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {LORA_META_KEY: json.dumps(spec.to_dict()), LORA_FULL_KEY: json.dumps(list(full_modules))}
    if base_config is not None:
        metadata[LORA_BASE_KEY] = json.dumps(base_config.to_dict())
    atomic_write_file(path, lambda tmp: save_file(dict(state), str(tmp), metadata=metadata))
    return path


def save_lora(model: nn.Module, path: str | os.PathLike, full_modules: Sequence[str] | None = None) -> Path:
    """Write ``model``'s adapters to a small ``.safetensors`` file, the LoRA config in its metadata.

    ``full_modules``: parts saved whole beside the adapters (default: those with trainable parameters,
    i.e. a VE fine-tuned in LoRA mode), so that the file alone reproduces the fine-tune on its base.
    """
    spec = lora_spec_of(model)
    if spec is None:
        raise CrossFlowError("the model carries no LoRA adapters to save")
    modules = trained_full_modules(model) if full_modules is None else list(full_modules)
    config = getattr(model, "config", None)
    return write_lora_file(lora_file_state(model, modules), spec, config if isinstance(config, ModelConfig) else None,
                           modules, path)


def read_lora_file(path: str | os.PathLike) -> tuple[LoraSpec, dict[str, torch.Tensor], list[str], ModelConfig | None]:
    """(spec, tensors, full modules, base config) of an adapter file written by :func:`save_lora`."""
    meta, tensors = read_tagged_safetensors(path, LORA_META_KEY, "LoRA file", "LoRA file")
    spec = LoraSpec.from_dict(json.loads(meta[LORA_META_KEY]))
    base = ModelConfig.from_dict(json.loads(meta[LORA_BASE_KEY])) if LORA_BASE_KEY in meta else None
    return spec, tensors, json.loads(meta.get(LORA_FULL_KEY, "[]")), base


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an adapter file into ``model`` (adding the adapters first if it has none), in place.

    Shapes are checked first: a file made for another base model raises :class:`CrossFlowError` naming
    the differing tensors.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    spec, state, full_modules, base = read_lora_file(path)
    if not has_lora(model):
        apply_lora(model, spec)
    elif lora_spec_of(model) != spec:
        raise CrossFlowError(f"{path} holds LoRA {spec.to_dict()}, the model carries {lora_spec_of(model)}")
    expected = dict(get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME))
    for name in full_modules:
        expected.update({f"{name}.{k}": v for k, v in getattr(model, name).state_dict().items()})
    problem = state_dict_mismatch(expected, state)
    if problem:
        config = getattr(model, "config", None)
        hint = config_diff(base, config) if base is not None and isinstance(config, ModelConfig) else []
        raise CrossFlowError(f"LoRA file {path} does not fit this model: {problem}"
                             + (f" (it was made for a base that differs in {_listing(hint, 5)})" if hint else ""))
    adapters = {k: v for k, v in state.items() if k.split(".")[0] not in full_modules}
    set_peft_model_state_dict(model, adapters, adapter_name=ADAPTER_NAME)
    for name in full_modules:
        prefix = f"{name}."
        getattr(model, name).load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return model


def merge_lora(model: nn.Module, scale: float = 1.0) -> nn.Module:
    """Fold the adapters into the base weights (W += scale·(alpha/r)·B·A, peft's merge) and remove them.

    Leaves the plain model: the original module classes and state-dict keys, loadable without peft.
    """
    for name, module in _tuner_layers(model):
        if scale != 1.0:
            module.set_scale(ADAPTER_NAME, scale)
        module.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    for attr in ("peft_config", _SPEC_ATTR):
        if attr in vars(model):
            delattr(model, attr)
    return model


def check_resume(stored_lora: Mapping[str, Any] | None, model: nn.Module) -> None:
    """Refuse to resume a checkpoint whose adapters differ from the model's (state dicts load non-strictly)."""
    current = lora_spec_of(model)
    stored = LoraSpec.from_dict(stored_lora) if stored_lora else None
    if stored != current:
        describe = lambda s: "no LoRA" if s is None else f"LoRA {s.to_dict()}"  # noqa: E731
        raise CrossFlowError(f"checkpoint was trained with {describe(stored)}, this run has {describe(current)}: "
                             "set model.finetune to match it (or start a new fine-tune with finetune.init_from)")
