"""Training callbacks: EMA weights, shapes evaluation with sample grids, throughput."""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.tensor import DTensor

from crossflow import perf
from crossflow.finetune import has_lora, lora_file_state, lora_spec_of, trained_full_modules, write_lora_file
from crossflow.inference import CrossFlowPipeline, make_grid


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor parameter (FSDP2), or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


class EMA(pl.Callback):
    """Exponential moving average of the trainable network, used for validation and sampling.

    The average lives in ``pl_module.ema_model``, a frozen copy of ``pl_module.model`` made before the
    model is sharded, so FSDP2 shards it exactly like the weights (``crossflow.parallel``): each rank
    averages its own shard with no communication, and the copy is saved in the model state dict, i.e.
    inside sharded (DCP) checkpoints too. (Lightning's own EMA callback does not support sharded models.)
    ``CrossFlowPipeline.from_pretrained`` samples from it by default.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        """
        Args:
            decay: EMA decay per optimizer step.
            warmup: Use min(decay, (1 + n) / (10 + n)) so early averages are not dominated by the init.
        """
        super().__init__()
        self.decay = decay
        self.warmup = warmup
        self._num_updates = 0
        self._restored = False
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before configure_model: the copy is then sharded (and compiled) along with the model.
        if getattr(pl_module, "ema_model", None) is None:
            pl_module.ema_model = copy.deepcopy(pl_module.model).requires_grad_(False)

    def _pairs(self, pl_module: pl.LightningModule, trainable_only: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ema = dict(pl_module.ema_model.named_parameters())
        pairs = [(_local(ema[k]), _local(p)) for k, p in pl_module.model.named_parameters()
                 if p.requires_grad or not trainable_only]
        return [e for e, _ in pairs], [p.detach() for _, p in pairs]

    @torch.no_grad()
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._restored:  # a fresh run, or a checkpoint without EMA: start the average at the weights
            ema, params = self._pairs(pl_module)
            torch._foreach_copy_(ema, params)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._last_step:  # no optimizer step (gradient accumulation)
            return
        self._last_step = trainer.global_step
        self._num_updates += 1
        n = self._num_updates
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        # Frozen weights (a LoRA run's whole base model) never move: averaging them is wasted work.
        ema, params = self._pairs(pl_module, trainable_only=True)
        torch._foreach_lerp_(ema, params, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self._num_updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called only when the checkpoint holds this callback's state, i.e. its EMA weights were saved too.
        self._num_updates = int(state_dict["num_updates"])
        self._restored = True


class SaveLoRA(pl.Callback):
    """Writes a LoRA run's adapters alone (``lora.safetensors``, a few MB at most) next to its checkpoints.

    Whenever a checkpoint is saved and at the end of training, from the EMA weights when the EMA callback
    runs. A VE fine-tuned alongside the adapters is saved whole in the same file (see
    :func:`crossflow.finetune.save_lora`). Sample with ``sample.py --ckpt BASE --lora lora.safetensors``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "lora.safetensors", use_ema: bool = True) -> None:
        """
        Args:
            dirpath: Output folder (None: the ModelCheckpoint's folder, else ``<default_root_dir>/checkpoints``).
            filename: Name of the adapter file (overwritten at every save).
            use_ema: Save the EMA copy's adapters when there is one (what sampling uses).
        """
        super().__init__()
        self.dirpath, self.filename, self.use_ema = dirpath, filename, use_ema
        self.last_path: str | None = None

    def _path(self, trainer: pl.Trainer) -> str:
        directory = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        return os.path.join(directory or os.path.join(trainer.default_root_dir, "checkpoints"), self.filename)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not has_lora(pl_module.model):
            return  # a full fine-tune: the checkpoint is the result
        source = pl_module.sampling_model if self.use_ema else pl_module.model
        modules = trained_full_modules(pl_module.model)  # the EMA copy is all frozen: ask the trained model
        state = lora_file_state(source, modules)  # every rank: gathers FSDP2 shards
        if trainer.is_global_zero:
            path = self._path(trainer)
            write_lora_file(state, lora_spec_of(pl_module.model), pl_module.model_config, modules, path)
            self.last_path = path

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._write(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module)


def log_sample_grid(trainer: pl.Trainer, images: list, captions: list[str], name: str = "samples") -> None:
    """Send a grid of samples to the logger (wandb: an image panel) and save it as a PNG in the run dir."""
    grid = make_grid(images)
    log_image = getattr(trainer.logger, "log_image", None)
    if callable(log_image):
        log_image(key=name, images=[grid], caption=["; ".join(captions)], step=trainer.global_step)
    if trainer.log_dir:
        scale = max(1, 128 // images[0].width)  # small images are unreadable at 1:1
        grid.resize((grid.width * scale, grid.height * scale), 0).save(
            f"{trainer.log_dir}/{name}_step{trainer.global_step:06d}.png"
        )


def _pipeline(pl_module: pl.LightningModule) -> CrossFlowPipeline:
    return CrossFlowPipeline(pl_module.model_config, pl_module.sampling_model, pl_module.text_encoder, pl_module.codec)


def _is_sharded(pl_module: pl.LightningModule) -> bool:
    """FSDP2: sampling needs every rank (parameters are all-gathered in forward), not rank 0 alone."""
    return pl_module.device_mesh is not None


class SampleGrid(pl.Callback):
    """At each validation: sample fixed prompts with the (EMA) model and log the grid (any dataset)."""

    def __init__(self, prompts: list[str], num_steps: int = 25, guidance_scale: float = 1.0, seed: int = 0) -> None:
        """
        Args:
            prompts: Prompts to sample at every validation.
            num_steps: Euler steps per sample.
            guidance_scale: CFG scale.
            seed: Sampling seed (fixed, so grids are comparable across steps).
        """
        super().__init__()
        self.prompts, self.num_steps, self.guidance_scale, self.seed = prompts, num_steps, guidance_scale, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts or not (trainer.is_global_zero or _is_sharded(pl_module)):
            return
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = _pipeline(pl_module)(self.prompts, num_steps=self.num_steps, guidance_scale=self.guidance_scale, generator=g)
        if trainer.is_global_zero:
            log_sample_grid(trainer, images, self.prompts)


class ShapesEvaluation(pl.Callback):
    """At each validation: sample fresh shapes prompts with the (EMA) model, score them, log a grid.

    Runs inside the validation loop, after the EMA callback has swapped the averaged weights in.
    """

    def __init__(
        self,
        num_prompts: int = 64,
        seed: int = 1234,
        num_steps: int = 25,
        guidance_scale: float = 1.0,
        grid_size: int = 16,
        phrasing: str = "train",
    ) -> None:
        """
        Args:
            num_prompts: Prompts sampled and scored per evaluation.
            seed: Seed of the prompt generator (keep it apart from the training-data seed).
            num_steps: Euler steps per sample (fewer than at test time, to keep evaluation cheap).
            guidance_scale: CFG scale for evaluation samples.
            grid_size: Images in the logged sample grid.
            phrasing: Caption phrasing of the prompts: ``train`` templates or ``heldout`` ones.
        """
        super().__init__()
        self.num_prompts = num_prompts
        self.seed = seed
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.grid_size = grid_size
        self.phrasing = phrasing
        self.last_scores: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Under FSDP2 every rank must run the sampler's forwards (same prompts and seed); rank 0 scores.
        if trainer.sanity_checking or not (trainer.is_global_zero or _is_sharded(pl_module)):
            return
        from crossflow.data.shapes import make_prompts
        from crossflow.eval.shapes import format_scores, score

        image_size = pl_module.model_config.codec.image_size
        samples = make_prompts(self.num_prompts, seed=self.seed, phrasing=self.phrasing, image_size=image_size)
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = _pipeline(pl_module)(
            [s.caption for s in samples], num_steps=self.num_steps, guidance_scale=self.guidance_scale, generator=g
        )
        if not trainer.is_global_zero:
            return
        scores = score(images, [s.attributes for s in samples])
        self.last_scores = scores
        pl_module.log_dict({f"eval/{k}": float(v) for k, v in scores.items() if k != "n"}, rank_zero_only=True)
        rank_zero_info(f"step {trainer.global_step}: shapes eval ({self.num_prompts} prompts) {format_scores(scores)}")
        log_sample_grid(trainer, images[: self.grid_size], [s.caption for s in samples[: self.grid_size]])


def _batch_len(batch: Any) -> int:
    """Samples in a batch: its captions, else the leading dimension of its first tensor (e.g. a weight-space
    bank's image batches, which carry no captions)."""
    if isinstance(batch, dict):
        if "caption" in batch:
            return len(batch["caption"])
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
    raise ValueError("Throughput cannot count the samples of a batch without captions or tensors")


class Throughput(pl.Callback):
    """Logs speed, peak memory and MFU under ``perf/``; prints a progress line for non-interactive logs.

    Every ``window`` training batches (validation time excluded), on rank 0:

    - ``perf/samples_per_s``: all ranks together (rank 0's rate × world size);
    - ``perf/tokens_per_s``: samples/s × the flow transformer's tokens per sample (patches + indicator);
    - ``perf/step_time_s``: wall time per training batch;
    - ``perf/peak_memory_gb`` on a GPU (CUDA peak allocated) or ``perf/peak_rss_gb`` elsewhere (peak process
      RSS), in GiB, since the process started;
    - ``perf/mfu``: model FLOPs utilisation per device, when the device's peak FLOP/s is known.

    Token and FLOP counts come from ``pl_module.model_config.transformer_config()``; without it they are
    skipped. What the FLOPs count (the flow transformer, 3 × forward) and the peak table are documented in
    :mod:`crossflow.perf`.
    """

    def __init__(self, window: int = 50, print_every: int = 250, peak_flops: float = 0.0) -> None:
        """
        Args:
            window: Steps averaged per throughput measurement.
            print_every: Print ``step, loss, samples/s, MFU`` every this many steps (0 = never); progress bars
                do not show in SLURM logs or redirected output.
            peak_flops: Peak FLOP/s of one device, the MFU denominator (0 = look the GPU model up in the dense
                bf16 table of crossflow.perf; no MFU on CPUs and GPUs not in it).
        """
        super().__init__()
        self.window = window
        self.print_every = print_every
        self.peak_flops = peak_flops
        self._t0: float | None = None
        self._samples = 0
        self._steps = 0
        self._rate = float("nan")
        self._mfu: float | None = None
        self._tokens_per_sample: int | None = None
        self._train_flops: int | None = None
        self._peak: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model_config = getattr(pl_module, "model_config", None)
        if callable(getattr(model_config, "transformer_config", None)):
            cfg = model_config.transformer_config()
            self._tokens_per_sample = perf.flow_tokens_per_sample(cfg)
            self._train_flops = perf.train_flops_per_sample(cfg)
        # After the strategy's setup, so the module is on its device.
        self._peak = self.peak_flops if self.peak_flops > 0 else perf.peak_flops_per_s(pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        step = trainer.global_step
        if self.print_every and step % self.print_every == 0 and trainer.is_global_zero:
            loss = outputs["loss"].item() if isinstance(outputs, dict) else float("nan")
            mfu = "" if self._mfu is None else f", MFU {self._mfu:.1%}"
            rank_zero_info(f"step {step}/{trainer.max_steps}: loss {loss:.4f}, {self._rate:.1f} samples/s{mfu}")
        if self._t0 is None:
            self._t0 = now  # the first step includes warm-up: start timing after it
            return
        self._samples += _batch_len(batch)
        self._steps += 1
        if self._steps >= self.window:
            dt = now - self._t0
            rate_per_device = self._samples / dt
            self._rate = rate_per_device * trainer.world_size
            metrics = {"perf/samples_per_s": self._rate, "perf/step_time_s": dt / self._steps}
            if self._tokens_per_sample is not None:
                metrics["perf/tokens_per_s"] = self._rate * self._tokens_per_sample
            if self._train_flops is not None and self._peak:
                self._mfu = perf.mfu(rate_per_device, self._train_flops, self._peak)
                metrics["perf/mfu"] = self._mfu
            memory = perf.peak_memory_gib(pl_module.device)
            if memory is not None:
                metrics[f"perf/{memory[0]}"] = memory[1]
            pl_module.log_dict(metrics, rank_zero_only=True)
            self._t0, self._samples, self._steps = now, 0, 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._samples, self._steps = None, 0, 0  # do not count evaluation time as training time
