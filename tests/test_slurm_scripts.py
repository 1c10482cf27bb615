"""The SLURM scripts parse, hold resources rather than hyperparameters, signal every training process and resume
with `--ckpt_path last`; the torchrun script's per-node wrapper keeps torchrun alive through SIGUSR1 and hands the
signal to the training processes (checked with a real torchrun and two tiny workers). No SLURM needed."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parent.parent / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch"))
SRUN_SCRIPTS = [SLURM / "train_1node.sbatch", SLURM / "train_multinode.sbatch"]
TORCHRUN = SLURM / "train_torchrun.sbatch"


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
    # No "B:": the signal must reach the training processes, where the Preemption callback handles it.
    assert any(re.fullmatch(r"--signal=SIGUSR1@\d+", d) for d in directives), directives
    assert any(d.startswith("--output=slurm/logs/") for d in directives)
    assert "--open-mode=append" in directives  # a requeued run must not truncate the log
    assert "set -euo pipefail" in script.read_text()
    assert "OMP_NUM_THREADS" in _code(script)


@pytest.mark.parametrize("script", SRUN_SCRIPTS, ids=lambda p: p.name)
def test_srun_scripts_resume_from_last(script: Path) -> None:
    code = _code(script)
    assert "CKPT_ARGS=(--ckpt_path last)" in code and "resume_ckpt" not in code
    assert "--trainer.num_nodes" in code and "--trainer.devices" in code and "srun" in code


def test_torchrun_script() -> None:
    code = _code(TORCHRUN)
    for flag in ("--nnodes", "--nproc-per-node", "--rdzv-backend c10d", "--rdzv-endpoint", "--ckpt_path last",
                 "scontrol show hostnames", 'bash -c "$NODE_WRAPPER"'):
        assert flag in code, flag
    assert "scontrol requeue" not in code, "rank 0 requeues (crossflow/preemption.py), not the batch shell"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_hyperparameters(script: Path) -> None:
    """Scripts forward the user's configs ("$@"); the run itself is never set here."""
    code = _code(script)
    assert 'train.py fit "$@"' in code
    for banned in ("--model.", "--optimizer", "--data.", "--lr", "learning_rate", "--seed", "max_steps",
                   "batch_size", "--trainer.precision", "--trainer.strategy", ".yaml"):
        assert banned not in code, f"{script.name} sets {banned}"


# --- the torchrun wrapper, for real --------------------------------------------------------------------------

WORKER = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))  # as the Preemption callback does
open(f"ready.{os.environ['RANK']}", "w").write(str(os.getpid()))
deadline = time.time() + 300  # ends at the signal; long only so a slow sibling cannot make it miss one
while not got and time.time() < deadline:
    time.sleep(0.05)
# As the Preemption callback's teardown does: a duplicate arriving while the interpreter exits (Python restores the
# default action at finalisation) would otherwise kill this worker with SIGUSR1.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
open(f"result.{os.environ['RANK']}", "w").write("signal" if got else "timeout")
"""


STARTUP_TIMEOUT_S = 240


def _node_wrapper() -> str:
    match = re.search(r"^NODE_WRAPPER='(.*?)'$", TORCHRUN.read_text(), re.S | re.M)
    assert match, "NODE_WRAPPER='...' not found in the torchrun script"
    return match.group(1)


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("pkill")), reason="needs bash and pkill")
@pytest.mark.parametrize("to_all", [False, True], ids=["to-the-task", "to-every-process"])
def test_torchrun_survives_sigusr1_and_its_workers_get_it(tmp_path: Path, to_all: bool) -> None:
    """SLURM signals the task's first process only, or every process of the step (proctrack/cgroup): either way
    torchrun lives on (without the wrapper it dies of SIGUSR1), each worker sees the signal once or more, and
    the task exits with the workers' status."""
    (tmp_path / "worker.py").write_text(WORKER)
    log_path = tmp_path / "torchrun.log"
    with log_path.open("w") as log:
        wrapper = subprocess.Popen(
            ["bash", "-c", _node_wrapper(), "node-wrapper", sys.executable, "-m", "torch.distributed.run",
             "--standalone", "--nproc-per-node=2", "worker.py"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True,
            # As srun starts it: an ignored SIGUSR1 inherited from this process could not even be trapped by bash.
            preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_DFL),
        )
    try:
        # Start-up (two interpreters importing torch, a c10d rendezvous) is not what is tested and takes tens of
        # seconds on a loaded 2-core machine: wait generously, but stop at once if the wrapper has exited.
        ready = [tmp_path / "ready.0", tmp_path / "ready.1"]
        deadline = time.time() + STARTUP_TIMEOUT_S
        while not all(p.is_file() and p.read_text() for p in ready) and time.time() < deadline:
            if wrapper.poll() is not None:
                break
            time.sleep(0.1)
        started = wrapper.poll() is None and all(p.is_file() and p.read_text() for p in ready)
        assert started, (f"workers did not start (wrapper exit status {wrapper.poll()}, "
                         f"{time.time() - deadline + STARTUP_TIMEOUT_S:.0f} s): {log_path.read_text()[-3000:]}")
        targets = [wrapper.pid]
        if to_all:
            agent = subprocess.run(["pgrep", "-P", str(wrapper.pid)], capture_output=True, text=True).stdout.split()
            targets += [int(pid) for pid in agent] + [int(p.read_text()) for p in ready]
        for pid in targets:
            subprocess.run(["kill", "-USR1", str(pid)], check=True)
        wrapper.wait(timeout=60)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    out = log_path.read_text()
    assert wrapper.returncode == 0, out[-3000:]
    assert [(tmp_path / f"result.{r}").read_text() for r in (0, 1)] == ["signal", "signal"]
