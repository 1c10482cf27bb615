"""Training a bank of instance fine-tunes — K LoRAs (or K text-latent offsets) — in one Lightning run.

    bank, record = train_bank(pipe, sample_instances(300, seed=0), BankTrainConfig(rank=2, steps=3000))
    save_bank(bank, record, "runs/w2w/bank.safetensors")

Each batch holds ``batch_size / images_per_instance`` instances (a fresh permutation of all K every pass, so every
instance is visited equally), ``images_per_instance`` renders of each at random positions
(crossflow.data.shapes.render_instance), every image under the one rare-token caption. The base model is frozen;
the bank's own loss (bank.flow_loss) routes each sample to its instance's parameters only. The LightningModule is
thin: its training_step is that one call. Lightning lives here, not in bank / objective / space.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from crossflow.callbacks import Throughput
from crossflow.data.shapes import INSTANCE_TOKEN, POSITIONS, Instance, instance_caption, render_instance
from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline
from crossflow.weight_space.bank import DEFAULT_TARGETS, BankRecord, LoraBank, TextOffsetBank
from crossflow.weight_space.objective import PromptLatent, encode_prompt

DEFAULT_LR = {"lora": 3e-3, "text": 1e-2}


@dataclass
class BankTrainConfig:
    """One run that trains every instance of a bank."""

    kind: Literal["lora", "text"] = "lora"
    """``lora``: rank-r updates of the flow's attention q/v per instance; ``text``: an offset of the prompt's VE mean
    per instance (the text-latent comparison)."""
    rank: int = 2
    """LoRA rank r (1–4 in issue 7)."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """Row blocks of the fused qkv that get updates."""
    shared_init: bool = False
    """Start every instance's LoRA A from one random draw instead of one draw each, so that the instances' ΔW
    start in one row space (see BankedLoRALinear; measured on the shapes bank it changed little)."""
    steps: int = 3000
    """Optimizer steps of the whole bank."""
    batch_size: int = 64
    images_per_instance: int = 4
    """Renders of one instance per batch (several per instance: a steadier gradient for each instance it visits)."""
    lr: float | None = None
    """AdamW learning rate (no weight decay); None: 3e-3 for LoRA, 1e-2 for text offsets."""
    time_sampling: str = "uniform"
    """Training t distribution (flow.sample_time): the demo model's own."""
    time_shift: float = 1.0
    """Shift of the training t (flow.sample_time's ``shift``; < 1 moves samples towards the text end t = 0). The
    demo recipe trains its base at 0.25 because a shape's outline is settled in the first tenth of t
    (docs/experiments.md, round 5); a bank that fine-tunes that base draws its outlines there too."""
    token: str = INSTANCE_TOKEN
    caption: str | None = None
    """The caption every image carries; None: ``instance_caption(token)`` ("a photo of sks"). A caption the base
    model draws cleanly (e.g. "a white circle") gives every LoRA a clean start: the demo model turns words it never
    saw ("sks") into scattered pixels, not an object."""
    position: str | None = None
    """Where every instance image sits (one of the dataset's positions, jittered); None: the five at random. The
    demo model draws cleanly only from captions that state a position, so a fixed one pairs with such a caption."""
    seed: int = 0
    precision: str = "32-true"
    """Lightning precision of the run."""

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_LR:
            raise CrossFlowError(f"bank kind must be 'lora' or 'text', got {self.kind!r}")
        if self.time_shift <= 0:
            raise CrossFlowError(f"time_shift must be positive, got {self.time_shift}")
        if self.steps < 1 or self.rank < 1 or self.images_per_instance < 1:
            raise CrossFlowError(f"need steps, rank, images_per_instance >= 1; got {self.steps}, {self.rank}, "
                                 f"{self.images_per_instance}")
        if self.batch_size < self.images_per_instance or self.batch_size % self.images_per_instance:
            raise CrossFlowError(f"batch_size {self.batch_size} must be a multiple of images_per_instance "
                                 f"{self.images_per_instance}")
        self.targets = tuple(self.targets)
        if self.position is not None and self.position not in POSITIONS:
            raise CrossFlowError(f"unknown position {self.position!r}; expected one of {list(POSITIONS)}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.kind]


class InstanceBatches(IterableDataset):
    """Endless batches {"image": (B, 3, S, S) in [0, 1], "ids": (B,)} of instance renders, seed-deterministic."""

    def __init__(self, instances: Sequence[Instance], image_size: int, batch_size: int, images_per_instance: int,
                 seed: int = 0, position: str | None = None) -> None:
        super().__init__()
        if not instances:
            raise CrossFlowError("no instances to train on")
        self.instances = list(instances)
        self.position = position
        self.image_size, self.batch_size, self.per_instance, self.seed = image_size, batch_size, images_per_instance, seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng(self.seed)
        groups = self.batch_size // self.per_instance
        queue: list[int] = []
        while True:
            while len(queue) < groups:  # whole permutations: every instance is visited once per pass
                queue.extend(rng.permutation(len(self.instances)).tolist())
            ids, queue = np.repeat(queue[:groups], self.per_instance), queue[groups:]
            images = np.stack([np.asarray(render_instance(self.instances[i], self.image_size, rng, self.position))
                               for i in ids])
            yield {"image": torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0),
                   "ids": torch.from_numpy(ids).long()}


class BankLitModule(pl.LightningModule):
    """Trains a bank's parameters on a frozen CrossFlow model: loss = bank.flow_loss(batch)."""

    def __init__(self, pipe: CrossFlowPipeline, bank: LoraBank | TextOffsetBank, prompt: PromptLatent,
                 config: BankTrainConfig) -> None:
        super().__init__()
        self.model = pipe.model
        self.codec = pipe.codec
        # A text bank is an nn.Module and registers as a submodule (moved with the model); a LoRA bank's layers
        # already are the model's submodules, and the LoraBank object only reaches them.
        self.bank = bank
        self.config = config
        self.register_buffer("prompt_mu", prompt.mu.detach().clone())
        self.register_buffer("prompt_logvar", prompt.logvar.detach().clone())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed * 1_000_003 + self.global_step)
        z_image = self.codec.encode(batch["image"])
        loss = self.bank.flow_loss(self.model, PromptLatent(self.prompt_mu, self.prompt_logvar), z_image,
                                   batch["ids"], generator, self.config.time_sampling, self.config.time_shift)
        self.log("train/flow_mse", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(list(self.bank.parameters()), lr=self.config.learning_rate, weight_decay=0.0)


def train_bank(
    pipe: CrossFlowPipeline,
    instances: Sequence[Instance],
    config: BankTrainConfig | None = None,
    base_checkpoint: str | None = None,
    progress: bool = True,
) -> tuple[LoraBank | TextOffsetBank, BankRecord]:
    """Train one bank of ``len(instances)`` instance fine-tunes on ``pipe``'s frozen model (in place: a LoRA bank
    stays attached to ``pipe.model``). Returns the bank and its record (wall-clock time included)."""
    config = config or BankTrainConfig()
    prompt_text = config.caption or instance_caption(config.token)
    prompt = encode_prompt(pipe, prompt_text)
    if config.kind == "lora":
        generator = torch.Generator().manual_seed(config.seed)
        bank: LoraBank | TextOffsetBank = LoraBank.attach(pipe.model, len(instances), config.rank, config.targets,
                                                          generator=generator, shared_init=config.shared_init)
    else:
        pipe.model.requires_grad_(False)
        bank = TextOffsetBank(len(instances), pipe.model.variational.grid_shape).to(pipe.device)
    module = BankLitModule(pipe, bank, prompt, config)
    data = InstanceBatches(instances, pipe.config.codec.image_size, config.batch_size, config.images_per_instance,
                           config.seed, config.position)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    if not progress:  # also the Trainer's own start-up lines (accelerator, tips)
        lightning_log.setLevel(logging.WARNING)
    try:
        trainer = pl.Trainer(
            max_steps=config.steps, accelerator="gpu" if pipe.device.type == "cuda" else "cpu", devices=1,
            precision=config.precision, logger=False, enable_checkpointing=False,  # type: ignore[arg-type]
            enable_model_summary=False, enable_progress_bar=progress, num_sanity_val_steps=0, limit_val_batches=0,
            # Progress lines that also reach a redirected log (the bar does not), about 20 per run.
            callbacks=[Throughput(print_every=max(1, config.steps // 20))] if progress else None,
        )
        start = time.perf_counter()
        with warnings.catch_warnings():
            # One in-process loader is right here: rendering is cheap, and the batches are seeded in one stream.
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            # The frozen base stays in eval mode on purpose (nothing in it may train or behave as in training).
            warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")
            trainer.fit(module, DataLoader(data, batch_size=None, num_workers=0))
    finally:
        lightning_log.setLevel(level)
    seconds = time.perf_counter() - start
    pipe.model.eval()
    final = trainer.callback_metrics.get("train/flow_mse")
    training: dict[str, Any] = {
        **asdict(config), "targets": list(config.targets), "lr": config.learning_rate, "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / config.steps, 4),
        "final_flow_mse": None if final is None else float(final), "device": str(pipe.device),
    }
    record = BankRecord(
        kind=config.kind, instances=list(instances), token=config.token, prompt=prompt_text,
        base_config=pipe.config.to_dict(), base_checkpoint=base_checkpoint,
        rank=config.rank if config.kind == "lora" else None, targets=config.targets, training=training,
    )
    return bank, record
