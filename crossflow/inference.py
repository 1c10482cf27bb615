"""CrossFlowPipeline: prompts -> images from a checkpoint or a saved folder.

    pipe = CrossFlowPipeline.from_pretrained("runs/demo/checkpoints/last.ckpt")
    images = pipe(["a small red circle in the top left"], num_steps=50, generator=torch.Generator().manual_seed(0))
    pipe.save_pretrained("exported/demo")      # config.json + model.safetensors

Used by sample.py, the training callbacks, evaluation and the latent-editing tools.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from crossflow.config import ModelConfig
from crossflow.errors import CrossFlowError
from crossflow.finetune import (
    LORA_META_KEY,
    LoraSpec,
    apply_lora,
    load_lora,
    merge_lora,
    state_dict_mismatch,
)
from crossflow.models.alignment import upgrade_legacy_state
from crossflow.models.codec import Codec, build_codec
from crossflow.models.flow_model import FlowModel, FlowSource, TextCondition, build_model
from crossflow.models.text_encoder import FrozenTextEncoder, load_hidden_size
from crossflow.sampling import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    SOLVERS,
    Solver,
    SolveResult,
    classifier_free_guidance,
    integrate,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Chosen by a guidance sweep of the demo checkpoint (256 prompts: all-correct .74 / .81 / .79 at w = 1 / 2.5 / 4);
# bench/guidance_sweep.py re-measures it on any checkpoint (docs/results.md).
DEFAULT_GUIDANCE_SCALE = 2.5
DEFAULT_NUM_STEPS = 50


EMA_PREFIX = "ema_model."  # the EMA callback's averaged copy of the network inside the LightningModule
MODEL_PREFIX = "model."


def _pick_weights(keys: set[str], use_ema: bool) -> str:
    """The state-dict prefix to sample from: the EMA copy when present (and wanted), else the raw weights."""
    return EMA_PREFIX if use_ema and any(k.startswith(EMA_PREFIX) for k in keys) else MODEL_PREFIX


def _lora_of(meta: dict[str, Any]) -> LoraSpec | None:
    """The adapters a (LoRA fine-tuning) checkpoint's weights carry, from its ``crossflow`` entry."""
    return LoraSpec.from_dict(meta["lora"]) if meta.get("lora") else None


def _read_sharded_checkpoint(path: Path, use_ema: bool) -> tuple[ModelConfig, dict[str, torch.Tensor], LoraSpec | None]:
    """(config, weights, LoRA spec) from an FSDP2 run's DCP folder, read in this process (any number of shards)."""
    from crossflow.checkpoint import read_lightning_meta, read_sharded, sharded_keys

    meta = read_lightning_meta(path).get("crossflow")
    if not meta or "config" not in meta:
        raise CrossFlowError(f"{path} is not a CrossFlow checkpoint (no model config inside)")
    config, lora = ModelConfig.from_dict(meta["config"]), _lora_of(meta)
    keys = {k[len("state_dict."):] for k in sharded_keys(path) if k.startswith("state_dict.")}
    prefix = _pick_weights(keys, use_ema)
    with torch.device("meta"):  # shapes only: the tensors are allocated empty below and filled from disk
        template_model = build_model(config, text_dim=load_hidden_size(config.text_encoder.pretrained))
        if lora is not None:  # a LoRA run's weights: base layers renamed, adapters beside them
            apply_lora(template_model, lora)
        template = template_model.state_dict()
    missing = sorted(prefix + k for k in template if prefix + k not in keys)
    if missing:
        raise CrossFlowError(f"checkpoint {path} does not match its model config: missing {missing[0]}"
                             + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    state = {"state_dict": {prefix + k: torch.empty_like(v, device="cpu") for k, v in template.items()}}
    read_sharded(path, state)
    return config, {k[len(prefix):]: v for k, v in state["state_dict"].items()}, lora


def _read_checkpoint(path: Path, use_ema: bool) -> tuple[ModelConfig, dict[str, torch.Tensor], LoraSpec | None]:
    """(config, state dict of the flow model, LoRA spec of its adapters or None) from a folder, a .safetensors
    file or a Lightning checkpoint. The state dict of a LoRA run carries its (unmerged) adapters. Tensors saved
    in an older layout are brought to the current one here, before any shape check compares them."""
    config, state, spec = _read_checkpoint_as_saved(path, use_ema)
    return config, upgrade_legacy_state(state), spec


def _read_checkpoint_as_saved(path: Path, use_ema: bool) -> tuple[ModelConfig, dict[str, torch.Tensor], LoraSpec | None]:
    from crossflow.checkpoint import is_sharded_checkpoint

    if path.is_dir() and is_sharded_checkpoint(path):
        return _read_sharded_checkpoint(path, use_ema)
    if path.is_dir():
        config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not config_file.exists() or not weights_file.exists():
            raise CrossFlowError(
                f"{path} is neither a saved CrossFlow model ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a sharded checkpoint"
            )
        return ModelConfig.from_dict(json.loads(config_file.read_text())), load_file(str(weights_file)), None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if LORA_META_KEY in meta:
            raise CrossFlowError(f"{path} is a LoRA adapter, not a model: load it on top of its base checkpoint "
                                 "(--lora / from_pretrained(base, lora=...))")
        if "crossflow_config" in meta:
            config = ModelConfig.from_dict(json.loads(meta["crossflow_config"]))
        elif (path.parent / CONFIG_NAME).exists():
            config = ModelConfig.from_dict(json.loads((path.parent / CONFIG_NAME).read_text()))
        else:
            raise CrossFlowError(f"{path} has no CrossFlow config (metadata or {CONFIG_NAME} beside it)")
        return config, load_file(str(path)), None
    try:
        # weights_only: loading a checkpoint must never execute pickled code.
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CrossFlowError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from err
    meta = ckpt.get("crossflow") if isinstance(ckpt, dict) else None
    if not meta or "config" not in meta:
        raise CrossFlowError(f"{path} is not a CrossFlow checkpoint (no model config inside)")
    if use_ema and "ema_state_dict" in ckpt:  # checkpoints written before the EMA became a module
        return ModelConfig.from_dict(meta["config"]), ckpt["ema_state_dict"], None
    prefix = _pick_weights(set(ckpt["state_dict"]), use_ema)
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return ModelConfig.from_dict(meta["config"]), state, _lora_of(meta)


def load_model(
    path: str | os.PathLike, use_ema: bool = True, lora: str | os.PathLike | None = None, lora_scale: float = 1.0,
) -> tuple[ModelConfig, FlowModel]:
    """The plain flow model (CrossFlow or the noise baseline, as its config says) of any checkpoint (see :meth:`CrossFlowPipeline.from_pretrained`), in eval mode.

    Adapters are merged into the weights: a LoRA run's own (rebuilt from the spec stored in the checkpoint),
    then those of a separate adapter file ``lora``. ``lora_scale`` scales the merged update: the file's, or
    without one the checkpoint's own (0 = the base model, 1 = the fine-tune as trained).
    """
    path = Path(path)
    if not path.exists():
        raise CrossFlowError(f"checkpoint not found: {path}")
    config, state, spec = _read_checkpoint(path, use_ema)
    return config, _build_model(path, config, state, spec, lora, lora_scale)


def _build_model(
    path: Path, config: ModelConfig, state: dict[str, torch.Tensor], spec: LoraSpec | None,
    lora: str | os.PathLike | None = None, lora_scale: float = 1.0,
) -> FlowModel:
    model = build_model(config, text_dim=load_hidden_size(config.text_encoder.pretrained))
    if spec is not None:
        apply_lora(model, spec)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise CrossFlowError(f"checkpoint {path} does not match its model config: {problem}")
    model.load_state_dict(state, strict=True)
    if spec is not None:
        merge_lora(model, scale=1.0 if lora is not None else lora_scale)
    if lora is not None:
        merge_lora(load_lora(model, lora), scale=lora_scale)
    if spec is not None or lora is not None:
        model.requires_grad_(True)  # peft froze the base weights: leave them as a plain checkpoint's load
    return model.eval()


def read_model_weights(path: str | os.PathLike, use_ema: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, plain state dict of the flow model) of any checkpoint; a LoRA run's adapters are merged."""
    path = Path(path)
    if not path.exists():
        raise CrossFlowError(f"checkpoint not found: {path}")
    config, state, spec = _read_checkpoint(path, use_ema)
    if spec is None:  # the common case: no model to build, the text encoder's config is not even looked up
        return config, state
    return config, _build_model(path, config, state, spec).state_dict()


class CrossFlowPipeline:
    """Text encoder + flow model (VE + flow transformer, or the noise baseline) + codec, ready to sample."""

    def __init__(
        self,
        config: ModelConfig,
        model: FlowModel,
        text_encoder: FrozenTextEncoder,
        codec: Codec | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.text_encoder = text_encoder
        # On the model's device: a VAE codec decodes where the codec sits.
        self.codec = (codec if codec is not None else build_codec(config.codec)).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        use_ema: bool = True,
        lora: str | os.PathLike | None = None,
        lora_scale: float = 1.0,
    ) -> CrossFlowPipeline:
        """Load a Lightning checkpoint (file or sharded folder; EMA weights by default), a saved folder or a
        .safetensors file. A LoRA fine-tune's checkpoint samples with its adapters merged; ``lora`` merges a
        separate adapter file (``lora.safetensors``) onto the base ``path``, its update scaled by ``lora_scale``."""
        config, model = load_model(path, use_ema, lora=lora, lora_scale=lora_scale)
        text_encoder = FrozenTextEncoder(config.text_encoder)
        return cls(config, model.to(device), text_encoder.to(device))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (config also in the safetensors metadata)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config_json = json.dumps(self.config.to_dict(), indent=2)
        (directory / CONFIG_NAME).write_text(config_json + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"crossflow_config": config_json})
        return directory

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """The model in eval mode (no dropout) for the block, then back to the mode it was in: sampling from a
        model that is being trained must not switch it out of training."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def prepare_source(
        self, prompts: Sequence[str], generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> FlowSource:
        """Prompts -> where the flow starts: CrossFlow's z_text = μ + τ·σ·ε from the VE, or the noise baseline's
        x0 ~ N(0, I) with the prompts' text condition (``FlowSource.cond``; τ must stay 1 there)."""
        tokens, mask = self.text_encoder(list(prompts))
        if generator is not None and generator.device != self.device:
            raise CrossFlowError(f"generator is on {generator.device}, model on {self.device}")
        return self.model.source(tokens.to(self.device), mask.to(self.device), generator=generator, temperature=temperature)

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Prompts -> z_text (B, C, H, W) = μ + τ·σ·ε from the VE (τ = 0: μ itself, the same image for every seed).

        CrossFlow only: the noise baseline has no text latent (use :meth:`prepare_source`)."""
        source = self.prepare_source(prompts, generator=generator, temperature=temperature)
        if source.cond is not None:
            raise CrossFlowError("this model (kind noise_baseline) has no text latent: it flows from noise with the "
                                 "text as a condition; use prepare_source() or call the pipeline")
        return source.x0

    def velocity_fn(
        self, guidance_scale: float, cond: TextCondition | None = None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The (guided) velocity callable the solvers integrate. ``cond``: the text condition of a model that
        takes one (``FlowSource.cond``), tiled to the batch the CFG wrapper evaluates ([x; x], same x_t)."""
        if cond is None:
            return classifier_free_guidance(self.model.velocity, guidance_scale)

        def conditioned(x: torch.Tensor, t: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
            return self.model.velocity(x, t, unconditional, cond.tile(x.shape[0]))

        return classifier_free_guidance(conditioned, guidance_scale)

    @torch.no_grad()
    def generate_latents(
        self,
        z_text: torch.Tensor,
        num_steps: int = DEFAULT_NUM_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        solver: Solver = "euler",
        return_trajectory: bool = False,
        progress: Callable[[int], None] | None = None,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
        return_result: bool = False,
        cond: TextCondition | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]] | SolveResult:
        """Integrate the flow from z_text (t = 0) to an image latent (t = 1).

        ``solver`` is one of ``crossflow.sampling.SOLVERS``; ``rtol``/``atol`` steer dopri5 only (which ignores
        ``num_steps`` except as the trajectory's grid). ``return_result`` returns the whole
        :class:`~crossflow.sampling.SolveResult` (latent, NFE, steps, trajectory) instead of the latent
        (and trajectory). ``cond``: the text condition of a model that takes one (the noise baseline: ``z_text``
        is then its noise, both from :meth:`prepare_source`).
        """
        _check_sampling_args(num_steps, guidance_scale, solver=solver, rtol=rtol, atol=atol)
        result = integrate(
            self.velocity_fn(guidance_scale, cond), z_text, num_steps=num_steps, solver=solver,
            return_trajectory=return_trajectory, progress=progress, rtol=rtol, atol=atol,
        )
        if return_result:
            return result
        return (result.x, result.trajectory) if return_trajectory else result.x  # type: ignore[return-value]

    @torch.no_grad()
    def __call__(
        self,
        prompts: str | Sequence[str],
        num_steps: int = DEFAULT_NUM_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        solver: Solver = "euler",
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        output_type: str = "pil",
        progress: Callable[[int], None] | None = None,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
    ) -> list[Image.Image] | torch.Tensor:
        """Prompts -> images (PIL by default, or a (B, C, S, S) tensor in [0, 1] with ``output_type="pt"``).

        ``temperature`` τ scales the VE's σ when drawing z_text (1 = the trained distribution, 0 = μ only).
        ``solver``, ``rtol``, ``atol``: as in :meth:`generate_latents`.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or any(not p or not p.strip() for p in prompts):
            raise CrossFlowError("prompts must be non-empty strings")
        _check_sampling_args(num_steps, guidance_scale, temperature, solver=solver, rtol=rtol, atol=atol)
        with self.eval_mode():
            source = self.prepare_source(prompts, generator=generator, temperature=temperature)
            z_image = self.generate_latents(
                source.x0, num_steps, guidance_scale, solver, progress=progress, rtol=rtol, atol=atol, cond=source.cond
            )
        images = self.codec.decode(z_image).float().cpu()
        if output_type == "pt":
            return images
        return to_pil(images)


def check_temperature(temperature: float, name: str = "temperature",
                      meaning: str = "1 = the VE's own σ, 0 = μ only") -> None:
    """Raise a one-line :class:`CrossFlowError` unless ``temperature`` is a finite number >= 0.

    Every entry point that scales a σ (the z_text draws', or a weight space's PC coefficients') checks with this, so
    a NaN or an infinity is refused too: ``temperature < 0`` lets a NaN through, and the draws then come out NaN.
    """
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(temperature, bool) or not (math.isfinite(value) and value >= 0):
        raise CrossFlowError(f"{name} must be a finite number >= 0 ({meaning}), got {temperature!r}")


def _check_sampling_args(
    num_steps: int,
    guidance_scale: float,
    temperature: float = 1.0,
    solver: str = "euler",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> None:
    if solver not in SOLVERS:
        raise CrossFlowError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    if not (rtol > 0 and atol > 0):
        raise CrossFlowError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    check_temperature(temperature)
    if num_steps <= 0:
        raise CrossFlowError(f"num_steps must be positive, got {num_steps}")
    if guidance_scale < 1.0:
        raise CrossFlowError(
            f"guidance scale must be >= 1 (1 = no guidance; below 1 mixes in the unconditional model), got {guidance_scale}"
        )


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, S, S) in [0, 1] -> PIL images."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def make_grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Tile images into one grid image (no torchvision here)."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    w, h = images[0].size
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (40, 40, 40))
    for i, img in enumerate(images):
        grid.paste(img, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return grid


def describe(pipe: CrossFlowPipeline) -> dict[str, Any]:
    """Parameter counts of the pipeline's parts (for logs and bench): the model's top-level parts (CrossFlow:
    variational, flow, alignment; the noise baseline: text_conditioner, flow) and the frozen text encoder."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {**{name: count(part) for name, part in pipe.model.named_children()}, "text_encoder": count(pipe.text_encoder)}
