"""crossflow.perf (analytic FLOPs, GPU peak table, MFU) and the Throughput callback's perf/* metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from crossflow import callbacks
from crossflow.callbacks import Throughput
from crossflow.models.transformer import FlowTransformer, FlowTransformerConfig
from crossflow.perf import (
    flow_tokens_per_sample,
    forward_flops_per_sample,
    peak_flops_for_name,
    peak_flops_per_s,
    train_flops_per_sample,
)

TINY = FlowTransformerConfig(width=64, depth=2, num_heads=2, in_channels=3, input_size=16, patch_size=4)
# Latent-like: 4 channels, patch 2, a non-integer MLP ratio.
TINY_LATENT = FlowTransformerConfig(width=32, depth=1, num_heads=2, in_channels=4, input_size=8, patch_size=2, mlp_ratio=2.5)


def counted_flops(cfg: FlowTransformerConfig, backward: bool = False, batch: int = 2) -> float:
    """FlopCounterMode's FLOPs per sample of one fp32 CPU forward (and backward) pass."""
    torch.manual_seed(0)
    model = FlowTransformer(cfg)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    t = torch.rand(batch)
    # The math SDPA backend: FlopCounterMode has no formula for the fused CPU flash kernel (it would count
    # the attention as 0), while the math path is plain matmuls it counts.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x, t)
        if backward:
            out.square().mean().backward()
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("cfg", [TINY, TINY_LATENT], ids=["pixels", "latent"])
def test_forward_flops_match_flop_counter(cfg: FlowTransformerConfig) -> None:
    # Tolerance: none. Both count exactly the matmuls at 2·m·n·k and neither counts element-wise work
    # (norms, activations, softmax, biases), so they must agree to the FLOP; a difference means the model
    # changed and forward_flops_per_sample must follow.
    assert forward_flops_per_sample(cfg) == counted_flops(cfg)


@pytest.mark.parametrize("cfg", [TINY, TINY_LATENT], ids=["pixels", "latent"])
def test_train_flops_are_three_forwards(cfg: FlowTransformerConfig) -> None:
    # The 3× rule over-counts slightly: autograd skips the input gradients of the first layers (the patch
    # embedding and the timestep MLP see no trainable input), a few % at these widths, ≪ 1% at scale.
    counted = counted_flops(cfg, backward=True)
    assert train_flops_per_sample(cfg) == 3 * forward_flops_per_sample(cfg)
    assert 0.95 * train_flops_per_sample(cfg) <= counted <= train_flops_per_sample(cfg)


def test_tokens_per_sample_include_indicator() -> None:
    assert flow_tokens_per_sample(TINY) == TINY.num_patches + 1 == 17


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA B200", 2250e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("Tesla V100-SXM2-16GB", 125e12),
        ("Tesla V100-PCIE-32GB", 112e12),
        ("Tesla V100S-PCIE-32GB", 130e12),
    ],
)
def test_peak_flops_for_name(name: str, peak: float) -> None:
    assert peak_flops_for_name(name) == peak


@pytest.mark.parametrize(
    "name", ["NVIDIA A10G", "NVIDIA GH200 480GB", "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4090 D", "AMD Instinct MI300X", ""]
)
def test_peak_flops_unknown_is_none(name: str) -> None:
    assert peak_flops_for_name(name) is None


def test_peak_flops_on_cpu_is_none() -> None:
    assert peak_flops_per_s(torch.device("cpu")) is None


class Recorder:
    """A stand-in LightningModule: the attributes Throughput reads, and log_dict recorded."""

    def __init__(self, model_config: object | None) -> None:
        if model_config is not None:
            self.model_config = model_config
        self.device = torch.device("cpu")
        self.logged: list[dict[str, float]] = []

    def log_dict(self, metrics: dict[str, float], **kwargs: object) -> None:
        self.logged.append(dict(metrics))


def drive(
    callback: Throughput, module: Recorder, times: list[float], batch_size: int, monkeypatch: pytest.MonkeyPatch,
    world_size: int = 1,
) -> None:
    """Call the callback's hooks as a fit would: one training batch ending at each of ``times`` (seconds)."""
    clock = iter(times)
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    trainer = SimpleNamespace(global_step=0, max_steps=100, is_global_zero=True, world_size=world_size)
    callback.on_fit_start(trainer, module)
    for step in range(len(times)):
        trainer.global_step = step + 1
        batch = {"caption": ["a caption"] * batch_size}
        callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, batch, step)


def test_throughput_logs_perf_metrics_and_mfu(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    module = Recorder(SimpleNamespace(transformer_config=lambda: TINY))
    callback = Throughput(window=2, print_every=4, peak_flops=1e9)
    # Batch 1 starts the clock (warm-up); batches 2 and 3 take 0.5 s each; batch 4 prints.
    with caplog.at_level(logging.INFO):
        drive(callback, module, [10.0, 10.5, 11.0, 11.2], batch_size=4, monkeypatch=monkeypatch, world_size=2)
    assert len(module.logged) == 1
    metrics = module.logged[0]
    assert metrics["perf/step_time_s"] == pytest.approx(0.5)
    assert metrics["perf/samples_per_s"] == pytest.approx(16.0)  # 8 samples/s on each of 2 devices
    assert metrics["perf/tokens_per_s"] == pytest.approx(16.0 * 17)
    # MFU is per device: this device's samples/s × training FLOPs per sample / this device's peak.
    per_device = 4 / metrics["perf/step_time_s"]
    assert metrics["perf/mfu"] == pytest.approx(per_device * train_flops_per_sample(TINY) / 1e9)
    assert metrics["perf/peak_rss_gb"] > 0  # CPU: peak RSS, not CUDA memory
    assert "perf/peak_memory_gb" not in metrics
    assert f"MFU {metrics['perf/mfu']:.1%}" in caplog.text


def test_throughput_without_model_config_or_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    # No model_config: no token or FLOP metrics; a known config but a CPU and no peak_flops: no MFU.
    for module, absent in (
        (Recorder(None), {"perf/tokens_per_s", "perf/mfu"}),
        (Recorder(SimpleNamespace(transformer_config=lambda: TINY)), {"perf/mfu"}),
    ):
        drive(Throughput(window=1, print_every=0), module, [0.0, 1.0], batch_size=2, monkeypatch=monkeypatch)
        assert module.logged[0]["perf/samples_per_s"] == pytest.approx(2.0)
        assert not absent & module.logged[0].keys()


class TinyModule(pl.LightningModule):
    """A linear layer with the attribute Throughput reads its FLOPs from."""

    def __init__(self) -> None:
        super().__init__()
        self.model_config = SimpleNamespace(transformer_config=lambda: TINY)
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.layer(batch["x"]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_throughput_in_a_trainer(tmp_path: Path) -> None:
    data = [{"x": torch.randn(4), "caption": "a caption"} for _ in range(32)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=6, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[Throughput(window=2, print_every=0, peak_flops=1e12)],
    )
    trainer.fit(TinyModule(), loader)
    m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("perf/")}
    assert set(m) == {"perf/samples_per_s", "perf/tokens_per_s", "perf/step_time_s", "perf/peak_rss_gb", "perf/mfu"}
    assert m["perf/samples_per_s"] == pytest.approx(4 / m["perf/step_time_s"], rel=1e-4)
    assert m["perf/mfu"] == pytest.approx(m["perf/samples_per_s"] * train_flops_per_sample(TINY) / 1e12, rel=1e-4)


def test_throughput_counts_batches_without_captions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight-space bank's batches carry images and instance ids, no captions: the leading dimension counts."""
    module = Recorder(None)
    callback = Throughput(window=1, print_every=0)
    clock = iter([0.0, 0.5, 1.0])
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    trainer = SimpleNamespace(global_step=0, max_steps=10, is_global_zero=True, world_size=1)
    callback.on_fit_start(trainer, module)
    for step in range(2):
        trainer.global_step = step + 1
        batch = {"image": torch.zeros(6, 3, 8, 8), "instance": torch.arange(6)}
        callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, batch, step)
    assert module.logged[0]["perf/samples_per_s"] == pytest.approx(12.0)
    with pytest.raises(ValueError, match="cannot count"):
        callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, {"names": ["x"]}, 2)
