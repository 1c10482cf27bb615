"""The SLURM scripts parse, hold resources rather than hyperparameters, and resume; the resume helper picks the
newest complete checkpoint. No SLURM needed: static checks plus the helper's pure functions."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parent.parent / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch"))
SRUN_SCRIPTS = [SLURM / "train_1node.sbatch", SLURM / "train_multinode.sbatch"]
TORCHRUN = SLURM / "train_torchrun.sbatch"


def _load_helper():
    spec = importlib.util.spec_from_file_location("resume_ckpt", SLURM / "resume_ckpt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


resume_ckpt = _load_helper()


def _directives(script: Path) -> list[str]:
    return [line.split("#SBATCH", 1)[1].split("#")[0].strip() for line in script.read_text().splitlines()
            if line.startswith("#SBATCH")]


def _code(script: Path) -> str:
    """The script without comment lines (#SBATCH directives are comments to bash, kept separately)."""
    return "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_the_three_scripts_exist() -> None:
    assert {p.name for p in SCRIPTS} == {"train_1node.sbatch", "train_multinode.sbatch", "train_torchrun.sbatch"}
    assert (SLURM / "logs" / ".gitignore").is_file(), "SLURM does not create the --output folder"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_resources_requeue_and_strict_mode(script: Path) -> None:
    directives = _directives(script)
    assert "--requeue" in directives
    assert any(re.fullmatch(r"--signal=(B:)?SIGUSR1@\d+", d) for d in directives), directives
    assert any(d.startswith("--output=slurm/logs/") for d in directives)
    assert "--open-mode=append" in directives  # a requeued run must not truncate the log
    assert "set -euo pipefail" in script.read_text()
    assert "OMP_NUM_THREADS" in _code(script)


@pytest.mark.parametrize("script", SRUN_SCRIPTS, ids=lambda p: p.name)
def test_srun_scripts_signal_every_task(script: Path) -> None:
    """Lightning's handler runs in the training processes and its save needs every rank: no B: prefix."""
    assert any(re.fullmatch(r"--signal=SIGUSR1@\d+", d) for d in _directives(script))
    code = _code(script)
    assert "CKPT_PATH=last" in code and '--ckpt_path "$CKPT_PATH"' in code
    assert "--trainer.num_nodes" in code and "--trainer.devices" in code and "srun" in code


def test_torchrun_script() -> None:
    """torchrun replaces SLURMEnvironment: the batch shell takes the signal and requeues."""
    assert "--signal=B:SIGUSR1@120" in _directives(TORCHRUN)
    code = _code(TORCHRUN)
    for flag in ("--nnodes", "--nproc-per-node", "--rdzv-backend c10d", "--rdzv-endpoint", "--ckpt_path last",
                 "scontrol show hostnames", "scontrol requeue", "trap requeue USR1"):
        assert flag in code, flag


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_hyperparameters(script: Path) -> None:
    """Scripts forward the user's configs ("$@"); the run itself is never set here."""
    code = _code(script)
    assert 'train.py fit "$@"' in code
    for banned in ("--model.", "--optimizer", "--data.", "--lr", "learning_rate", "--seed", "max_steps",
                   "batch_size", "--trainer.precision", "--trainer.strategy", ".yaml"):
        assert banned not in code, f"{script.name} sets {banned}"


# --- the resume helper --------------------------------------------------------------------------------------


def _file_ckpt(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:  # torch.save writes a zip
        z.writestr("archive/data.pkl", b"x")
    os.utime(path, (mtime, mtime))
    return path


def _sharded_ckpt(path: Path, mtime: float) -> Path:
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"dcp")
    _file_ckpt(path / "meta.pt", mtime)
    return path


def test_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    root, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert resume_ckpt.newest_checkpoint(root, [ckpts]) is None  # first run: "last" -> Lightning starts fresh
    last = _file_ckpt(ckpts / "last.ckpt", 1000)
    _file_ckpt(ckpts / "step=100.ckpt", 3000)  # not a "last" checkpoint: Lightning's "last" ignores it too
    assert resume_ckpt.newest_checkpoint(root, [ckpts]) == last
    hpc = _file_ckpt(root / "hpc_ckpt_1.ckpt", 2000)  # saved on SIGUSR1 after last.ckpt
    assert resume_ckpt.newest_checkpoint(root, [ckpts]) == hpc
    torn = root / "hpc_ckpt_2.ckpt"
    torn.write_bytes(b"PK\x03\x04 cut short")  # killed mid-save: skipped
    os.utime(torn, (4000, 4000))
    assert resume_ckpt.newest_checkpoint(root, [ckpts]) == hpc
    newer_last = _file_ckpt(ckpts / "last-v1.ckpt", 5000)  # training went on after resuming from hpc_ckpt_1
    assert resume_ckpt.newest_checkpoint(root, [ckpts]) == newer_last


def test_sharded_checkpoints(tmp_path: Path) -> None:
    root, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    last = _sharded_ckpt(ckpts / "last.ckpt", 1000)
    hpc = root / "hpc_ckpt_1.ckpt"
    hpc.mkdir(parents=True)
    (hpc / ".metadata").write_bytes(b"dcp")  # rank 0's meta.pt never written: incomplete
    assert resume_ckpt.newest_checkpoint(root, [ckpts]) == last
    _file_ckpt(hpc / "meta.pt", 2000)
    assert resume_ckpt.newest_checkpoint(root, [ckpts]) == hpc
    assert not resume_ckpt.is_complete(root / "hpc_ckpt_1.ckpt.partial")


def test_locations_from_the_resolved_config(tmp_path: Path) -> None:
    """The real CLI resolves the configs and overrides the scripts forward (cheap: --print_config builds nothing)."""
    args = ["--config", "configs/demo.yaml", "--trainer.default_root_dir", str(tmp_path / "run")]
    cwd = os.getcwd()
    os.chdir(SLURM.parent)
    try:
        root, dirs = resume_ckpt.checkpoint_locations(resume_ckpt.resolved_config(args))
    finally:
        os.chdir(cwd)
    assert root == tmp_path / "run"
    assert dirs == [Path("runs/demo/checkpoints")]
