"""Training callbacks: EMA weights, shapes evaluation with sample grids, throughput."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from crossflow.inference import CrossFlowPipeline, make_grid

EMA_KEY = "ema_state_dict"


class EMA(pl.Callback):
    """Exponential moving average of the trainable model (``pl_module.model``), used for sampling.

    Only the trainable network is averaged (not the frozen text encoder). The averaged weights are
    swapped in for validation and evaluation, and saved under ``ema_state_dict`` in checkpoints, which
    ``CrossFlowPipeline.from_pretrained`` prefers.
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
        self.ema: dict[str, torch.Tensor] | None = None
        self._num_updates = 0
        self._loaded: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._last_step = -1

    def _params(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {k: p for k, p in pl_module.model.named_parameters()}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._params(pl_module)
        source = self._loaded if self._loaded is not None else params
        self.ema = {k: source[k].detach().clone().to(p.device, p.dtype) for k, p in params.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.ema is None or trainer.global_step == self._last_step:  # no optimizer step (accumulation)
            return
        self._last_step = trainer.global_step
        self._num_updates += 1
        n = self._num_updates
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        params = self._params(pl_module)
        keys = list(self.ema)
        torch._foreach_lerp_([self.ema[k] for k in keys], [params[k].detach() for k in keys], 1.0 - decay)

    @torch.no_grad()
    def _swap(self, pl_module: pl.LightningModule) -> None:
        if self.ema is None:
            return
        for k, p in self._params(pl_module).items():
            tmp = p.detach().clone()
            p.copy_(self.ema[k])
            self.ema[k].copy_(tmp)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap(pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint[EMA_KEY] = {k: v.detach().cpu().clone() for k, v in self.ema.items()}
            checkpoint["ema_updates"] = self._num_updates

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if EMA_KEY in checkpoint:
            self._loaded = checkpoint[EMA_KEY]
            self._num_updates = int(checkpoint.get("ema_updates", 0))


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
    return CrossFlowPipeline(pl_module.model_config, pl_module.model, pl_module.text_encoder, pl_module.codec)


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
        if trainer.sanity_checking or not trainer.is_global_zero or not self.prompts:
            return
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = _pipeline(pl_module)(self.prompts, num_steps=self.num_steps, guidance_scale=self.guidance_scale, generator=g)
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
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        from crossflow.data.shapes import make_prompts
        from crossflow.eval.shapes import format_scores, score

        image_size = pl_module.model_config.codec.image_size
        samples = make_prompts(self.num_prompts, seed=self.seed, phrasing=self.phrasing, image_size=image_size)
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = _pipeline(pl_module)(
            [s.caption for s in samples], num_steps=self.num_steps, guidance_scale=self.guidance_scale, generator=g
        )
        scores = score(images, [s.attributes for s in samples])
        self.last_scores = scores
        pl_module.log_dict({f"eval/{k}": float(v) for k, v in scores.items() if k != "n"}, rank_zero_only=True)
        rank_zero_info(f"step {trainer.global_step}: shapes eval ({self.num_prompts} prompts) {format_scores(scores)}")
        log_sample_grid(trainer, images[: self.grid_size], [s.caption for s in samples[: self.grid_size]])


class Throughput(pl.Callback):
    """Logs training samples/s and step time, and prints a progress line for non-interactive logs."""

    def __init__(self, window: int = 50, print_every: int = 250) -> None:
        """
        Args:
            window: Steps averaged per throughput measurement.
            print_every: Print ``step, loss, samples/s`` every this many steps (0 = never); progress bars
                do not show in SLURM logs or redirected output.
        """
        super().__init__()
        self.window = window
        self.print_every = print_every
        self._t0: float | None = None
        self._samples = 0
        self._steps = 0
        self._rate = float("nan")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        step = trainer.global_step
        if self.print_every and step % self.print_every == 0 and trainer.is_global_zero:
            loss = outputs["loss"].item() if isinstance(outputs, dict) else float("nan")
            rank_zero_info(f"step {step}/{trainer.max_steps}: loss {loss:.4f}, {self._rate:.1f} samples/s")
        if self._t0 is None:
            self._t0 = now  # the first step includes warm-up: start timing after it
            return
        self._samples += len(batch["caption"])
        self._steps += 1
        if self._steps >= self.window:
            dt = now - self._t0
            self._rate = self._samples / dt * trainer.world_size
            pl_module.log_dict({"perf/samples_per_s": self._rate, "perf/step_time_s": dt / self._steps}, rank_zero_only=True)
            self._t0, self._samples, self._steps = now, 0, 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._samples, self._steps = None, 0, 0  # do not count evaluation time as training time
