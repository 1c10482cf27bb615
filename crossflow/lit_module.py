"""The LightningModule: composes text encoder, codec and the flow model (CrossFlow or the noise baseline,
ModelConfig.kind); training_step reads like the math."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from crossflow import flow
from crossflow.config import ModelConfig, config_diff
from crossflow.data.precomputed import check_prepared
from crossflow.errors import CrossFlowError
from crossflow.finetune import FinetuneConfig, check_resume, lora_spec_of, prepare_for_finetuning
from crossflow.models.codec import build_codec
from crossflow.models.flow_model import FlowModel, TextBlend, build_model
from crossflow.models.text_encoder import FrozenTextEncoder, load_hidden_size
from crossflow.parallel import parallelize
from crossflow.resume import gather_rank_states, restore_rank_state, set_rng_states
from crossflow.strategies import mesh_param_dtype

CHECKPOINT_KEY = "crossflow"


@dataclass
class LossConfig:
    """Weights and sampling of the training objective (paper Eq. 3: L_FM + L_align + λ_KL·KL)."""

    time_sampling: flow.TimeSampling = "uniform"
    """Training-time distribution: ``uniform`` or ``logit_normal`` (the paper's; see flow.sample_time)."""
    time_shift: float = 1.0
    """Timestep shift s applied to the sampled t (flow.sample_time): s > 1 trains more near the image end, s < 1 near
    the text end, where the straight flow settles an image's outline (configs/demo.yaml: 0.25)."""
    align_weight: float = 1.0
    """Weight of the contrastive alignment loss between z_text and image features (CrossFlow only)."""
    kl_weight: float = 1e-3
    """Weight λ_KL of the VE's KL term (mean over elements; CrossFlow only)."""
    edge_weight: float = 0.0
    """Extra flow-loss weight on the target image's outlines (flow.edge_weights: 1 + edge_weight·g); 0 = the
    paper's plain MSE."""
    p_uncond: float = 0.1
    """Probability that a sample is trained as unconditional (indicator = 1) for CFG; the noise baseline also
    drops its text condition for it (condition dropout)."""


@dataclass
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay; no weight decay on norms, biases, embeddings."""

    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas (the paper uses (0.9, 0.9) at scale)."""
    weight_decay: float = 0.01
    """Decoupled weight decay on matrices only."""
    warmup_steps: int = 200
    """Linear warmup from 0 to lr."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor as a fraction of lr (1.0 = constant after warmup)."""


class CrossFlowLitModule(pl.LightningModule):
    """Trains a CrossFlow model. The frozen text encoder is not checkpointed (it reloads from its source)."""

    def __init__(
        self,
        model: ModelConfig = ModelConfig(),  # noqa: B008 (dataclass defaults become CLI defaults)
        loss: LossConfig = LossConfig(),  # noqa: B008
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        compile_blocks: bool = False,
        activation_checkpointing: bool = False,
        finetune: FinetuneConfig | None = None,
    ) -> None:
        """
        Args:
            model: The model (saved with every checkpoint; sampling rebuilds it from there).
            loss: The training objective's weights and time sampling.
            optimizer: AdamW and its schedule.
            compile_blocks: ``torch.compile`` each flow-transformer block (fuses the small element-wise ops
                around the matmuls; costs a one-off compile at the first steps).
            activation_checkpointing: Recompute the flow blocks' activations in backward: less memory for
                ~1/3 more compute (docs/results.md has the memory arithmetic for the xl preset).
            finetune: Start from released weights (``init_from``), fully or with LoRA adapters on the flow
                transformer (configs/finetune.yaml). None: train from scratch.
        """
        super().__init__()
        self.compile_blocks = compile_blocks
        self.activation_checkpointing = activation_checkpointing
        self._parallelized = False
        self._rng_to_restore: dict[str, Any] | None = None
        # Copies: the defaults above are shared objects.
        self.model_config = copy.deepcopy(model)
        self.loss_config = copy.deepcopy(loss)
        self.optim_config = copy.deepcopy(optimizer)
        self._text_encoder: FrozenTextEncoder | None = None  # loaded on first use (see text_encoder)
        self.codec = build_codec(self.model_config.codec)
        self.model = build_model(self.model_config, text_dim=load_hidden_size(self.model_config.text_encoder.pretrained))
        self.finetune_config = copy.deepcopy(finetune)
        if self.finetune_config is not None:
            # Here, not in configure_model: the EMA callback copies the model in its setup, which runs before
            # configure_model, so the copy must already hold the loaded weights and the adapters.
            prepare_for_finetuning(self.model, self.finetune_config)
        # The frozen encoder's weights are stripped from checkpoints, so loading must not demand them.
        self.strict_loading = False

    @property
    def text_encoder(self) -> FrozenTextEncoder:
        """The frozen prompt encoder, loaded on first use: training on shards with precomputed text states
        never loads it. Not a submodule: never checkpointed, sharded or cast by the trainer's precision."""
        if self._text_encoder is None:
            encoder = FrozenTextEncoder(self.model_config.text_encoder).to(self.device)
            object.__setattr__(self, "_text_encoder", encoder)  # bypass nn.Module: not a registered submodule
        return self._text_encoder

    @property
    def sampling_model(self) -> FlowModel:
        """The weights to sample and validate with: the EMA copy when the EMA callback made one."""
        ema = getattr(self, "ema_model", None)
        return ema if ema is not None else self.model

    def configure_model(self) -> None:
        """Shard with FSDP2 when the strategy gives a device mesh (FSDP2Strategy); AC and compile either way."""
        if self._parallelized:  # called again by every trainer.fit / validate
            return
        self._parallelized = True
        mesh = self._device_mesh["data_parallel"] if self._device_mesh is not None else None
        precision = self._trainer.precision if self._trainer is not None else None
        param_dtype = mesh_param_dtype(precision)
        parallelize(self.model, mesh, param_dtype=param_dtype, activation_checkpointing=self.activation_checkpointing,
                    compile_blocks=self.compile_blocks)
        if getattr(self, "ema_model", None) is not None:
            parallelize(self.ema_model, mesh, param_dtype=param_dtype, frozen=True)

    def step_generator(self, step: int) -> torch.Generator:
        """The training step's randomness (t, CFG mask, VE noise) as a function of (seed, rank, step) only:
        a resumed run draws exactly what the uninterrupted one drew, without saving RNG state."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        mixed = (seed * 1_000_003 + self.global_rank) * 1_000_000_007 + step
        return torch.Generator(device=self.device).manual_seed(mixed % (2**63))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # first step after a resume: now, after loaders are rebuilt
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def setup(self, stage: str) -> None:
        """Refuse precomputed shards made with another encoder, length or latent shape, before any step."""
        datamodule = getattr(self.trainer, "datamodule", None)
        first = datamodule.first_train_sample() if stage == "fit" and hasattr(datamodule, "first_train_sample") else None
        if first is not None:
            check_prepared(first[0], self.model_config, source=first[1])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch, generator=self.step_generator(self.global_step))
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"})
        self.log("train/loss", losses["loss"], prog_bar=True)
        if "skipped" in batch:
            self.log("data/corrupt_skipped", batch["skipped"].sum().float(), reduce_fx="sum", on_step=False, on_epoch=True)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # A fixed generator makes the validation loss comparable across evaluations.
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        losses = self.compute_losses(batch, generator=g, net=self.sampling_model)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=len(batch["caption"]))

    def encode_batch(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch -> (text token states, mask, z_image), from precomputed members where the shards hold
        them (crossflow prepare), else by running the frozen text encoder / the codec."""
        if "text_states" in batch:
            tokens, mask = batch["text_states"].float(), batch["text_mask"].bool()
        else:
            tokens, mask = self.text_encoder(batch["caption"])
        if "latent_moments" in batch:
            mean, logvar = batch["latent_moments"].float().unbind(1)
            z_image = self.codec.latents_from_moments(mean, logvar, generator=generator)
        else:
            z_image = self.codec.encode(batch["image"], generator=generator)
        return tokens, mask, z_image

    def encode_blend(self, batch: dict[str, Any]) -> TextBlend | None:
        """The batch's blend samples (``blend.json`` members: crossflow.data.shapes.Blend) -> their second
        prompts' token states; None when no row is a blend."""
        if "blend_alpha" not in batch:
            return None
        alpha = batch["blend_alpha"].float()
        rows = (alpha > 0).nonzero().flatten()
        if rows.numel() == 0:
            return None
        if "text_states" in batch:
            raise CrossFlowError("blend samples need their second caption encoded, but these shards hold precomputed "
                                 "text states (crossflow prepare) and no states for it: use raw captions")
        tokens, mask = self.text_encoder([batch["blend_caption"][i] for i in rows.tolist()])
        return TextBlend(tokens.float(), mask.bool(), rows.to(self.device), alpha[rows].to(self.device))

    def compute_losses(
        self,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        net: FlowModel | None = None,
    ) -> dict[str, torch.Tensor]:
        """The objective for one batch (paper Sec. 3, Eq. 3; DESIGN.md 'What CrossFlow is'): flow matching from
        the model's source x0 (CrossFlow: z_text; the noise baseline: N(0, I)) to z_image, plus the model's own
        terms (CrossFlow: L_align and λ_KL·KL; the baseline: none)."""
        cfg, b = self.loss_config, len(batch["caption"])
        net = self.model if net is None else net
        tokens, mask, z_image = self.encode_batch(batch, generator)
        source = net.source(tokens, mask, generator=generator, blend=self.encode_blend(batch))
        uncond = flow.cfg_unconditional_mask(b, cfg.p_uncond, device=self.device, generator=generator)
        z_target = net.cfg_targets(z_image, uncond)
        t = flow.sample_time(b, cfg.time_sampling, shift=cfg.time_shift, device=self.device, generator=generator)
        x_t = flow.path_sample(source.x0, z_target, t, self.model_config.sigma_min)
        v_target = flow.target_velocity(source.x0, z_target, self.model_config.sigma_min)
        v_pred = net.velocity(x_t, t, uncond, source.cond)
        weight = flow.edge_weights(z_target, cfg.edge_weight) if cfg.edge_weight else None
        loss_fm = flow.flow_matching_loss(v_pred, v_target, weight)
        auxiliary = net.auxiliary_losses(source, z_image)
        weights = {"align": cfg.align_weight, "kl": cfg.kl_weight}
        loss = loss_fm
        for name, value in auxiliary.items():
            loss = loss + weights[name] * value
        return {
            "loss": loss, "flow_mse": loss_fm.detach(), **{k: v.detach() for k, v in auxiliary.items()},
            **net.diagnostics(source),
        }

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_config
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # Matrices decay; biases, norm gains, embeddings, position tables and the temperature do not.
            is_matrix = p.ndim >= 2 and "embed" not in name
            (decay if is_matrix else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas,
            # Multi-tensor kernels instead of a Python loop over parameters. (fused=True would be faster but
            # Lightning cannot clip gradients of a fused optimizer under mixed precision.)
            foreach=True,
        )
        trainer = self._trainer  # None when used outside a Trainer (benchmarks)
        total = trainer.max_steps if trainer is not None and trainer.max_steps > 0 else None

        def lr_lambda(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            if total is None or cfg.min_lr_ratio >= 1.0:
                return 1.0
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        lora = lora_spec_of(self.model)
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.model_config.to_dict(), "format": 2,
            # The adapters a LoRA run's weights carry: the loaders rebuild them, load, and merge.
            "lora": None if lora is None else lora.to_dict(),
            "finetune": None if self.finetune_config is None else self.finetune_config.to_dict(),
        }
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("text_encoder.")}
        if self._trainer is not None:
            gather_rank_states(self.trainer, checkpoint)  # collective: every rank saves through here

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(CHECKPOINT_KEY, {}).get("config")
        if stored is None:
            raise CrossFlowError("checkpoint was not written by CrossFlow (no model config inside)")
        diff = config_diff(ModelConfig.from_dict(stored), self.model_config)
        if diff:
            raise CrossFlowError("checkpoint was trained with another model config: " + "; ".join(diff[:5]))
        check_resume(checkpoint[CHECKPOINT_KEY].get("lora"), self.model)
        if self._trainer is not None:
            self._rng_to_restore = restore_rank_state(self.trainer, checkpoint)
