"""The noise baseline end to end: train.py fit --config configs/baseline_demo.yaml (tiny) -> checkpoint ->
sample.py / pipeline / export; and a 2-rank FSDP2 run (parallelize shards the baseline's parts too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_distributed import MAX_STEPS, ROOT, train_args
from test_train_e2e import IMAGE_SIZE, fit_args, shards  # noqa: F401 (shards: the module's fixture)

from crossflow.checkpoint import is_sharded_checkpoint
from crossflow.cli import main as train_main
from crossflow.inference import CrossFlowPipeline
from crossflow.models.baseline import NoiseBaselineModel
from crossflow.sample_cli import main as sample_main

PROMPTS = ["a small red circle in the top left", "a big blue square"]
CROSSFLOW_ONLY = ("--model.model.variational.", "--model.model.alignment_dim")


def baseline_args(args: list[str]) -> list[str]:
    """A CrossFlow test run's arguments turned into the baseline's: its config, no VE / alignment sizes."""
    args = [a.replace("configs/demo.yaml", "configs/baseline_demo.yaml") for a in args if not a.startswith(CROSSFLOW_ONLY)]
    return [*args, "--model.model.baseline.text_depth=1"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shards: dict[str, str], tiny_text_encoder_dir: str) -> Path:  # noqa: F811
    run_dir = tmp_path_factory.mktemp("baseline_run")
    train_main(baseline_args(fit_args(run_dir, shards, tiny_text_encoder_dir)))
    return run_dir


def test_fit_trains_the_baseline_with_ema_and_evaluation(trained_run: Path) -> None:
    state = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    assert state["crossflow"]["config"]["kind"] == "noise_baseline"
    keys = state["state_dict"]
    assert any(k.startswith("model.text_conditioner.") for k in keys) and any(k.startswith("ema_model.") for k in keys)
    assert any(".cross_attn." in k for k in keys)
    assert not any(k.startswith(("model.variational.", "model.alignment.")) for k in keys), "no VE, no alignment head"
    raw, ema = keys["model.flow.final.linear.weight"], keys["ema_model.flow.final.linear.weight"]
    assert raw.abs().sum() > 0 and not torch.equal(raw, ema)
    assert list(trained_run.glob("samples_step*.png")), "ShapesEvaluation sampled the baseline during training"


def test_sample_cli_is_reproducible_and_refuses_a_temperature(trained_run: Path, tmp_path: Path) -> None:
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    outs = []
    for name in ("a", "b"):
        sample_main(["--ckpt", ckpt, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2", "--steps", "3",
                     "--seed", "7", "--out", str(tmp_path / name), "--upscale", "1"])
        outs.append(tmp_path / name)
    for f in ("000.png", "003.png", "grid.png"):
        assert np.array_equal(np.asarray(Image.open(outs[0] / f)), np.asarray(Image.open(outs[1] / f)))
    with pytest.raises(SystemExit) as exc:
        sample_main(["--ckpt", ckpt, "--prompt", PROMPTS[0], "--temperature", "0.5", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2


def test_checkpoint_export_and_reload_sample_the_same(trained_run: Path, tmp_path: Path) -> None:
    pipe = CrossFlowPipeline.from_pretrained(trained_run / "checkpoints" / "last.ckpt")
    assert isinstance(pipe.model, NoiseBaselineModel)
    again = CrossFlowPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "export"))
    kwargs = {"num_steps": 3, "guidance_scale": 2.0, "output_type": "pt"}
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(a, again(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs))
    assert a.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_fsdp2_two_ranks_train_and_export_the_baseline(
    tmp_path: Path, shards: dict[str, str], tiny_text_encoder_dir: str  # noqa: F811
) -> None:
    from crossflow.checkpoint import main as export_main

    args = baseline_args(train_args(tmp_path, shards, tiny_text_encoder_dir))
    args = [a.replace(f"max_steps={MAX_STEPS}", "max_steps=4") for a in args]
    cmd = [sys.executable, "train.py", *args, "--trainer.callbacks+=train_helpers.SampleAtEnd",
           f"--trainer.callbacks.path={tmp_path}/live.pt", *[f"--trainer.callbacks.prompts+={p}" for p in PROMPTS]]
    env = {"PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(last)
    export_main(["export", "--ckpt", str(last), "--out", str(tmp_path / "x")])
    pipe = CrossFlowPipeline.from_pretrained(tmp_path / "x")
    images = pipe(PROMPTS, num_steps=3, guidance_scale=2.0, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, torch.load(tmp_path / "live.pt", weights_only=True)), "sharded live model == export"
