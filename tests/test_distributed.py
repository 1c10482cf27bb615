"""Scale-out on CPU with gloo: real `train.py` runs in 2 processes (FSDP2, DDP, a 2-"node" torchrun).

Exact resume is checked the hard way: a run SIGKILLed mid-training resumes from its last sharded
checkpoint and every rank's per-step losses equal those of an uninterrupted run, bitwise (fp32 on CPU
is deterministic here, so no tolerance is needed).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossflow.checkpoint import is_sharded_checkpoint
from crossflow.data.shards import write_shapes_shards
from crossflow.inference import CrossFlowPipeline

ROOT = Path(__file__).parent.parent
IMAGE_SIZE = 16
MAX_STEPS = 8
PROMPTS = ["a small red circle in the top left", "a big blue square"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dist_shapes")
    write_shapes_shards(root / "train", 96, seed=0, samples_per_shard=24, image_size=IMAGE_SIZE, progress=False)
    write_shapes_shards(root / "val", 16, seed=1, samples_per_shard=8, image_size=IMAGE_SIZE, progress=False)
    return {"train": str(root / "train"), "val": str(root / "val")}


def train_args(run: Path, shards: dict[str, str], encoder: str, trainer: str = "fsdp2", devices: int = 2) -> list[str]:
    """A tiny 2-rank run through the real CLI: checkpoints every 2 steps, per-rank losses recorded."""
    return [
        "fit", "--config", "configs/demo.yaml", "--trainer", f"configs/trainer/{trainer}.yaml",
        "--trainer.accelerator=cpu", f"--trainer.devices={devices}", "--trainer.precision=32-true",
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
        f"--trainer.default_root_dir={run}",
        "--trainer.callbacks=crossflow.callbacks.EMA",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", f"--trainer.callbacks.dirpath={run}/checkpoints",
        "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=2",
        "--trainer.callbacks+=train_helpers.RecordLosses", f"--trainer.callbacks.path={run}/losses",
        f"--model.model.text_encoder.pretrained={encoder}", "--model.model.text_encoder.max_length=12",
        f"--model.model.codec.image_size={IMAGE_SIZE}", "--model.model.variational.width=32",
        "--model.model.variational.depth=1", "--model.model.variational.num_heads=2",
        "--model.model.variational.token_dim=8", "--model.model.alignment_dim=32", "--model.optimizer.warmup_steps=2",
        f"--data.train_shards={shards['train']}", f"--data.val_shards={shards['val']}", "--data.batch_size=4",
        "--data.num_workers=1", "--data.shuffle_buffer=16", "--data.generate_shapes=null",
    ]


def run(cmd: list[str], expect_kill: bool = False, timeout: int = 300) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_kill:
        assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    else:
        assert proc.returncode == 0, proc.stderr[-5000:]


def losses(run_dir: Path, rank: int) -> dict[int, float]:
    """Per-step losses of one rank; a step run twice (before the kill, again after resume) must agree."""
    out: dict[int, float] = {}
    for line in (run_dir / f"losses.rank{rank}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert out.setdefault(rec["step"], rec["loss"]) == rec["loss"], f"rank {rank} step {rec['step']} differs"
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, shards: dict[str, str], tiny_text_encoder_dir: str) -> Path:
    run_dir = tmp_path_factory.mktemp("fsdp2_full")
    cmd = [sys.executable, "train.py", *train_args(run_dir, shards, tiny_text_encoder_dir)]
    run([*cmd, "--trainer.callbacks+=train_helpers.SampleAtEnd", f"--trainer.callbacks.path={run_dir}/live.pt",
         *[f"--trainer.callbacks.prompts+={p}" for p in PROMPTS]])
    return run_dir


def test_fsdp2_run_writes_sharded_checkpoints_published_atomically(uninterrupted: Path) -> None:
    ckpts = uninterrupted / "checkpoints"
    last = ckpts / "last.ckpt"
    assert last.is_symlink() and is_sharded_checkpoint(last), "FSDP2 saves a DCP folder behind the `last` link"
    assert len(list(last.resolve().glob("*.distcp"))) == 2, "one shard file per rank"
    assert not list(ckpts.glob("*.partial")), "no half-written checkpoint is left behind"
    data_dirs = sorted(p.name for p in ckpts.iterdir() if not p.is_symlink())
    assert len(data_dirs) == 2, f"old checkpoint folders are deleted after the link moves: {data_dirs}"
    assert sorted(losses(uninterrupted, 0)) == list(range(1, MAX_STEPS + 1))


def test_sigkill_mid_run_resumes_to_identical_losses(
    uninterrupted: Path, tmp_path: Path, shards: dict[str, str], tiny_text_encoder_dir: str
) -> None:
    cmd = [sys.executable, "train.py", *train_args(tmp_path, shards, tiny_text_encoder_dir)]
    # Killed at the end of step 5 (checkpoints at 2 and 4): step 5 is lost and recomputed after the resume.
    run([*cmd, "--trainer.callbacks+=train_helpers.KillAt", "--trainer.callbacks.step=5"], expect_kill=True)
    assert os.readlink(tmp_path / "checkpoints" / "last.ckpt").startswith("last.ckpt.data-")
    run([*cmd, "--ckpt_path", "last"])
    for rank in (0, 1):  # model, optimizer, EMA, schedule, RNG and each rank's data position all came back
        assert losses(tmp_path, rank) == losses(uninterrupted, rank), f"rank {rank} diverged after resume"


def test_exported_sharded_checkpoint_samples_like_the_live_model(uninterrupted: Path, tmp_path: Path) -> None:
    from crossflow.checkpoint import main as export_main

    export_main(["export", "--ckpt", str(uninterrupted / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "x")])
    pipe = CrossFlowPipeline.from_pretrained(tmp_path / "x")
    images = pipe(PROMPTS, num_steps=3, guidance_scale=2.0, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, torch.load(uninterrupted / "live.pt", weights_only=True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_torchrun_matches_the_single_node_run(
    uninterrupted: Path, tmp_path: Path, shards: dict[str, str], tiny_text_encoder_dir: str
) -> None:
    """Two torchrun launches with --nnodes 2 on 127.0.0.1 (one process each) form the same 2-rank job."""
    port = _free_port()
    args = train_args(tmp_path, shards, tiny_text_encoder_dir, devices=1) + ["--trainer.num_nodes=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
             "--master-addr=127.0.0.1", f"--master-port={port}", "train.py", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-5000:]
    for rank in (0, 1):
        assert losses(tmp_path, rank) == losses(uninterrupted, rank)


def test_sample_cli_reads_the_sharded_checkpoint(uninterrupted: Path, tmp_path: Path) -> None:
    from crossflow.sample_cli import main as sample_main

    sample_main(["--ckpt", str(uninterrupted / "checkpoints" / "last.ckpt"), "--prompt", PROMPTS[0], "--num", "2",
                 "--steps", "2", "--out", str(tmp_path), "--upscale", "1"])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000.png", "001.png", "grid.png"]


def test_activation_checkpointing_changes_memory_not_results(
    uninterrupted: Path, tmp_path: Path, shards: dict[str, str], tiny_text_encoder_dir: str
) -> None:
    """Recomputing the flow blocks in backward (under FSDP2) must give the very same training run."""
    run([sys.executable, "train.py", *train_args(tmp_path, shards, tiny_text_encoder_dir),
         "--model.activation_checkpointing=true"])
    for rank in (0, 1):
        assert losses(tmp_path, rank) == losses(uninterrupted, rank)
