"""Fine-tuning: initial weights from any checkpoint, LoRA adapters (peft), adapter files, and a tiny LoRA run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from crossflow.cli import main as train_main
from crossflow.config import ModelConfig
from crossflow.data.shards import write_shapes_shards
from crossflow.errors import CrossFlowError
from crossflow.finetune import (
    FinetuneConfig,
    LoraSpec,
    apply_lora,
    check_resume,
    has_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    prepare_for_finetuning,
    save_lora,
)
from crossflow.inference import CrossFlowPipeline
from crossflow.models.crossflow import CrossFlowModel
from crossflow.models.text_encoder import load_hidden_size

SPEC = LoraSpec(rank=4, alpha=8.0)


def build(config: ModelConfig, seed: int = 0) -> CrossFlowModel:
    """A tiny model moved off its zero init (adaLN-zero, final layer) so every part shapes the output."""
    torch.manual_seed(seed)
    model = CrossFlowModel(config, text_dim=load_hidden_size(config.text_encoder.pretrained))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def velocity(model: CrossFlowModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    c, h, w = model.config.latent_shape
    x_t, t = torch.randn(4, c, h, w, generator=g), torch.rand(4, generator=g)
    with torch.no_grad():
        return model.velocity(x_t, t, torch.tensor([False, True, False, True]))


def lightning_checkpoint(path: Path, config: ModelConfig, raw: CrossFlowModel, ema: CrossFlowModel | None = None,
                         lora: LoraSpec | None = None) -> Path:
    """A .ckpt shaped like the ones train.py writes (model config, raw and EMA weights)."""
    state = {f"model.{k}": v for k, v in raw.state_dict().items()}
    if ema is not None:
        state.update({f"ema_model.{k}": v for k, v in ema.state_dict().items()})
    meta = {"config": config.to_dict(), "format": 2, "lora": None if lora is None else lora.to_dict()}
    torch.save({"crossflow": meta, "state_dict": state}, path)
    return path


def train_adapters(model: CrossFlowModel, steps: int = 5) -> None:
    """A few AdamW steps on the trainable parameters towards a random velocity field."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    c, h, w = model.config.latent_shape
    g = torch.Generator().manual_seed(2)
    x_t, t, target = torch.randn(8, c, h, w, generator=g), torch.rand(8, generator=g), torch.randn(8, c, h, w, generator=g)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model.velocity(x_t, t), target).backward()
        opt.step()


# --- initial weights ---

@pytest.mark.parametrize("source", ["ckpt", "folder", "safetensors"])
def test_init_from_a_checkpoint_reproduces_its_weights(source: str, tiny_model_config: ModelConfig, tmp_path: Path) -> None:
    raw, ema = build(tiny_model_config, seed=1), build(tiny_model_config, seed=2)
    if source == "ckpt":
        path = lightning_checkpoint(tmp_path / "base.ckpt", tiny_model_config, raw, ema)
    else:
        path = tmp_path / "base.safetensors"
        state = {k: v.contiguous() for k, v in ema.state_dict().items()}
        save_file(state, str(path), metadata={"crossflow_config": json.dumps(tiny_model_config.to_dict())})
        if source == "folder":
            (tmp_path / "folder").mkdir()
            path = path.rename(tmp_path / "folder" / "model.safetensors").parent
            (path / "config.json").write_text(json.dumps(tiny_model_config.to_dict()))
    model = build(tiny_model_config, seed=3)
    prepare_for_finetuning(model, FinetuneConfig(init_from=str(path)))
    for k, v in ema.state_dict().items():  # the EMA weights are preferred
        assert torch.equal(model.state_dict()[k], v), k
    if source == "ckpt":
        prepare_for_finetuning(model, FinetuneConfig(init_from=str(path), init_ema=False))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in raw.state_dict().items())


def test_init_with_mismatched_shapes_names_the_tensors(tiny_model_config: ModelConfig, tmp_path: Path) -> None:
    path = lightning_checkpoint(tmp_path / "base.ckpt", tiny_model_config, build(tiny_model_config))
    other = copy.deepcopy(tiny_model_config)
    other.variational.token_dim = 16  # VE token projection and the flatten -> latent linear change shape
    other.alignment_dim = 16
    with pytest.raises(CrossFlowError) as info:
        prepare_for_finetuning(build(other), FinetuneConfig(init_from=str(path)))
    message = str(info.value)
    assert "\n" not in message and "differ in shape" in message
    assert "variational." in message and "checkpoint (" in message and "vs model (" in message
    assert "more" in message  # a long list is cut short with a count
    assert "variational.token_dim" in message  # and the config fields that explain it


# --- LoRA ---

def test_lora_mode_trains_only_adapters_unless_the_ve_is_unfrozen(tiny_model_config: ModelConfig) -> None:
    model = build(tiny_model_config)
    prepare_for_finetuning(model, FinetuneConfig(mode="lora", lora_targets=["qkv", "fc2"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and n.startswith("flow.blocks.") for n in trainable)
    assert {n.split(".")[3] + "." + n.split(".")[4] for n in trainable} == {"attn.qkv", "mlp.fc2"}
    assert len(trainable) == 2 * 2 * tiny_model_config.transformer_config().depth  # A and B per target per block

    model = build(tiny_model_config)
    prepare_for_finetuning(model, FinetuneConfig(mode="lora", freeze_variational=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, _ in model.variational.named_parameters(prefix="variational")} <= trainable
    assert {n for n, _ in model.alignment.named_parameters(prefix="alignment")} <= trainable  # follows the VE
    assert not any(n.startswith("flow.") and "lora_" not in n for n in trainable)

    model = build(tiny_model_config)
    prepare_for_finetuning(model, FinetuneConfig(mode="full", freeze_variational=True))
    assert not any(p.requires_grad for p in model.variational.parameters())
    assert all(p.requires_grad for p in model.flow.parameters())


def test_zero_init_adapters_leave_outputs_unchanged_and_training_changes_them(tiny_model_config: ModelConfig) -> None:
    model = build(tiny_model_config)
    base_v, base_state = velocity(model), copy.deepcopy(model.state_dict())
    apply_lora(model, SPEC)
    assert torch.equal(velocity(model), base_v)
    train_adapters(model)
    adapted_v = velocity(model)
    assert not torch.allclose(adapted_v, base_v, atol=1e-4)
    # Base weights never moved (peft renames adapted layers' weights to ...base_layer.weight).
    for k, v in model.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, base_state[k.replace(".base_layer", "")]), k


def test_merge_lora_gives_the_adapted_outputs_with_plain_keys(tiny_model_config: ModelConfig) -> None:
    model = build(tiny_model_config)
    plain_keys = set(model.state_dict())
    apply_lora(model, SPEC)
    train_adapters(model)
    adapted_v = velocity(model)
    merge_lora(model)
    assert not has_lora(model) and set(model.state_dict()) == plain_keys
    torch.testing.assert_close(velocity(model), adapted_v, rtol=1e-4, atol=1e-5)
    fresh = CrossFlowModel(tiny_model_config, text_dim=load_hidden_size(tiny_model_config.text_encoder.pretrained))
    fresh.load_state_dict(model.state_dict(), strict=True)  # loadable without peft


def test_save_load_lora_round_trip_and_file_is_small(tiny_model_config: ModelConfig, tmp_path: Path) -> None:
    model = build(tiny_model_config)
    apply_lora(model, SPEC)
    train_adapters(model)
    path = save_lora(model, tmp_path / "lora.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["crossflow_lora"]) == SPEC.to_dict()
        keys = set(f.keys())
    assert keys == set(lora_state_dict(model)) and all(".lora_" in k for k in keys)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert path.stat().st_size < model_bytes / 10

    restored = load_lora(build(tiny_model_config), path)  # same base weights (seed 0), adapters from the file
    torch.testing.assert_close(velocity(restored), velocity(model))

    other = copy.deepcopy(tiny_model_config)
    other.preset = "small"  # a wider flow transformer: every adapter's shape differs
    with pytest.raises(CrossFlowError, match=r"does not fit this model: \d+ tensor\(s\) differ in shape: flow\.blocks"):
        load_lora(CrossFlowModel(other, text_dim=32), path)


def test_a_lora_run_with_a_trained_ve_saves_it_in_the_adapter_file(tiny_model_config: ModelConfig, tmp_path: Path) -> None:
    model = build(tiny_model_config)
    prepare_for_finetuning(model, FinetuneConfig(mode="lora", lora_rank=4, freeze_variational=False, freeze_alignment=True))
    train_adapters(model)
    with torch.no_grad():  # stands in for VE training (the velocity loss above gives the VE no gradient)
        for p in model.variational.parameters():
            p.add_(1.0)
    restored = load_lora(build(tiny_model_config), save_lora(model, tmp_path / "lora.safetensors"))
    for k, v in model.variational.state_dict().items():
        assert torch.equal(restored.variational.state_dict()[k], v), k


def test_lora_parameters_are_decayed_and_frozen_ones_left_out(tiny_model_config: ModelConfig) -> None:
    from crossflow.lit_module import CrossFlowLitModule

    module = CrossFlowLitModule(model=tiny_model_config, finetune=FinetuneConfig(mode="lora", lora_rank=4))
    groups = module.configure_optimizers()["optimizer"].param_groups
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert {names[i] for i in decay | no_decay} == {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert decay and all("lora_" in names[i] for i in decay) and not no_decay  # adapters are matrices, no biases


def test_resuming_with_other_adapters_is_refused(tiny_model_config: ModelConfig) -> None:
    model = apply_lora(build(tiny_model_config), SPEC)
    check_resume(SPEC.to_dict(), model)
    with pytest.raises(CrossFlowError, match="trained with LoRA .* this run has LoRA"):
        check_resume(LoraSpec(rank=8).to_dict(), model)
    with pytest.raises(CrossFlowError, match="trained with no LoRA"):
        check_resume(None, model)


def test_sharded_lora_checkpoint_samples_merged(tiny_model_config: ModelConfig, tmp_path: Path) -> None:
    """An FSDP2 run's DCP folder of a LoRA fine-tune: the reader rebuilds the adapters for its template."""
    import torch.distributed.checkpoint as dcp

    model = apply_lora(build(tiny_model_config), SPEC)
    train_adapters(model)
    folder = tmp_path / "last.ckpt"
    dcp.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, checkpoint_id=str(folder), no_dist=True)
    torch.save({"crossflow": {"config": tiny_model_config.to_dict(), "format": 2, "lora": SPEC.to_dict()}}, folder / "meta.pt")
    pipe = CrossFlowPipeline.from_pretrained(folder)
    assert not has_lora(pipe.model)
    torch.testing.assert_close(velocity(pipe.model), velocity(model), rtol=1e-4, atol=1e-5)


# --- end to end: train.py fit with LoRA on a base model, then sampling both ways ---

IMAGE_SIZE = 16


def finetune_args(run: Path, root: Path, encoder: str, config: ModelConfig, trainer: list[str] = ()) -> list[str]:
    """configs/finetune.yaml on a tiny model: LoRA rank 4 from ``root/base.safetensors``, 4 steps, EMA + SaveLoRA."""
    return [
        "fit", "--config", "configs/finetune.yaml", *trainer,
        "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={run}", "--trainer.logger=false",
        "--trainer.callbacks=crossflow.callbacks.EMA",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={run}/checkpoints", "--trainer.callbacks.save_last=true",
        "--trainer.callbacks+=crossflow.callbacks.SaveLoRA",
        f"--model.model.text_encoder.pretrained={encoder}",
        f"--model.model.text_encoder.max_length={config.text_encoder.max_length}",
        f"--model.model.codec.image_size={IMAGE_SIZE}",
        f"--model.model.variational.width={config.variational.width}",
        f"--model.model.variational.depth={config.variational.depth}",
        f"--model.model.variational.num_heads={config.variational.num_heads}",
        f"--model.model.variational.token_dim={config.variational.token_dim}",
        f"--model.model.alignment_dim={config.alignment_dim}",
        f"--model.finetune.init_from={root / 'base.safetensors'}", "--model.finetune.lora_rank=4",
        "--model.optimizer.warmup_steps=2", "--model.optimizer.lr=0.01",
        f"--data.train_shards={root / 'train'}", f"--data.val_shards={root / 'val'}",
        "--data.batch_size=4", "--data.num_workers=0", "--data.shuffle_buffer=16",
    ]


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory: pytest.TempPathFactory, tiny_model_config_session: ModelConfig) -> tuple[Path, ModelConfig]:
    """Shards (2 per split, enough for 2 ranks) and a base model exported as the released checkpoint."""
    root = tmp_path_factory.mktemp("finetune")
    write_shapes_shards(root / "train", 48, seed=0, samples_per_shard=24, image_size=IMAGE_SIZE, progress=False)
    write_shapes_shards(root / "val", 8, seed=1, samples_per_shard=4, image_size=IMAGE_SIZE, progress=False)
    config = copy.deepcopy(tiny_model_config_session)
    config.codec.image_size = IMAGE_SIZE
    save_file({k: v.contiguous() for k, v in build(config).state_dict().items()}, str(root / "base.safetensors"),
              metadata={"crossflow_config": json.dumps(config.to_dict())})
    return root, config


@pytest.fixture(scope="module")
def lora_run(finetune_data: tuple[Path, ModelConfig], tiny_text_encoder_dir: str) -> dict[str, Path]:
    root, config = finetune_data
    run = root / "run"
    train_main(finetune_args(run, root, tiny_text_encoder_dir, config))
    return {"base": root / "base.safetensors", "ckpt": run / "checkpoints" / "last.ckpt",
            "lora": run / "checkpoints" / "lora.safetensors"}


def _sample(pipe: CrossFlowPipeline) -> torch.Tensor:
    return pipe(["a small red circle in the top left"], num_steps=3, guidance_scale=2.0, output_type="pt",
                generator=torch.Generator().manual_seed(0))


def test_lora_fit_writes_a_checkpoint_and_an_adapter_file(lora_run: dict[str, Path]) -> None:
    state = torch.load(lora_run["ckpt"], map_location="cpu", weights_only=True)
    assert state["crossflow"]["lora"] == LoraSpec(rank=4, alpha=16.0).to_dict()
    assert state["crossflow"]["finetune"]["init_from"] == str(lora_run["base"])
    weights = state["state_dict"]
    raw, ema = "model.flow.blocks.0.attn.qkv.lora_B.default.weight", "ema_model.flow.blocks.0.attn.qkv.lora_B.default.weight"
    assert weights[raw].abs().sum() > 0 and not torch.equal(weights[raw], weights[ema])  # trained, and averaged
    base_qkv = "flow.blocks.0.attn.qkv.weight"
    with safe_open(str(lora_run["base"]), framework="pt") as f:  # the frozen base stays the released one
        assert torch.equal(weights["ema_model.flow.blocks.0.attn.qkv.base_layer.weight"], f.get_tensor(base_qkv))
    size = lora_run["lora"].stat().st_size
    assert size < lora_run["base"].stat().st_size / 5
    with safe_open(str(lora_run["lora"]), framework="pt") as f:  # the EMA adapters
        assert torch.equal(f.get_tensor("flow.blocks.0.attn.qkv.lora_B.weight"), weights[ema])


def test_lora_checkpoint_and_adapter_file_sample_the_same(lora_run: dict[str, Path], tmp_path: Path) -> None:
    from crossflow.checkpoint import main as export_main
    from crossflow.sample_cli import main as sample_main

    from_ckpt = CrossFlowPipeline.from_pretrained(lora_run["ckpt"])
    from_file = CrossFlowPipeline.from_pretrained(lora_run["base"], lora=lora_run["lora"])
    base = CrossFlowPipeline.from_pretrained(lora_run["base"])
    assert not has_lora(from_ckpt.model) and set(from_ckpt.model.state_dict()) == set(base.model.state_dict())
    images = _sample(from_ckpt)
    torch.testing.assert_close(_sample(from_file), images, rtol=0, atol=1e-5)
    assert not torch.allclose(images, _sample(base), atol=1e-4)  # the fine-tune changed the samples
    unscaled = CrossFlowPipeline.from_pretrained(lora_run["base"], lora=lora_run["lora"], lora_scale=0.0)
    torch.testing.assert_close(_sample(unscaled), _sample(base))

    sample_main(["--ckpt", str(lora_run["base"]), "--lora", str(lora_run["lora"]), "--prompt", "a blue square",
                 "--num", "1", "--steps", "2", "--out", str(tmp_path / "samples"), "--upscale", "1"])
    assert (tmp_path / "samples" / "grid.png").exists()
    export_main(["export", "--ckpt", str(lora_run["base"]), "--lora", str(lora_run["lora"]), "--out", str(tmp_path / "merged")])
    torch.testing.assert_close(_sample(CrossFlowPipeline.from_pretrained(tmp_path / "merged")), images, rtol=0, atol=1e-5)
    with pytest.raises(CrossFlowError, match="is a LoRA adapter, not a model"):
        CrossFlowPipeline.from_pretrained(lora_run["lora"])

    # A LoRA run's checkpoint is itself a starting point: initialising from it gives the merged weights.
    model = build(from_ckpt.config, seed=5)
    prepare_for_finetuning(model, FinetuneConfig(init_from=str(lora_run["ckpt"])))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in from_ckpt.model.state_dict().items())


def test_lora_fine_tune_under_fsdp2(finetune_data: tuple[Path, ModelConfig], tiny_text_encoder_dir: str) -> None:
    """2 gloo ranks: adapters inside sharded blocks, a sharded (DCP) LoRA checkpoint, adapters gathered to one file."""
    root, config = finetune_data
    run = root / "fsdp2"
    trainer = ["--trainer", "configs/trainer/fsdp2.yaml", "--trainer.accelerator=cpu", "--trainer.devices=2",
               "--trainer.precision=32-true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "train.py", *finetune_args(run, root, tiny_text_encoder_dir, config, trainer)],
                          cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir(), "FSDP2 writes a sharded checkpoint folder"
    images = _sample(CrossFlowPipeline.from_pretrained(ckpt))
    torch.testing.assert_close(_sample(CrossFlowPipeline.from_pretrained(
        root / "base.safetensors", lora=run / "checkpoints" / "lora.safetensors")), images, rtol=0, atol=1e-5)
    assert not torch.allclose(images, _sample(CrossFlowPipeline.from_pretrained(root / "base.safetensors")), atol=1e-4)
