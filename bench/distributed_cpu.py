"""DDP vs FSDP2 with 2 processes on CPU (gloo): training samples/s of real ``train.py`` runs.

Each run is the demo recipe (configs/demo.yaml: shapes shards, all-MiniLM-L6-v2, bf16-mixed) with a trainer
overlay (configs/trainer/ddp.yaml or fsdp2.yaml), 2 processes × 1 thread, for a few hundred steps; the
Throughput callback's ``perf/samples_per_s`` (both ranks together, validation excluded) is read from the
CSV log and the median of its windows reported. Presets: the demo's ``tiny`` and the 32 M ``small``.
Run: python bench/distributed_cpu.py [--steps 150]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# (preset, per-process batch): `small` gets a smaller batch so a run stays in minutes on 2 cores.
CASES = [("tiny", 64), ("small", 16)]


def run(strategy: str, preset: str, batch: int, steps: int, out: Path) -> dict[str, float]:
    """One 2-process training run; returns median samples/s, step time and wall time."""
    run_dir = out / f"{strategy}-{preset}"
    cmd = [
        sys.executable, "train.py", "fit", "--config", "configs/demo.yaml", "--trainer", f"configs/trainer/{strategy}.yaml",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=bf16-mixed",
        f"--trainer.max_steps={steps}", "--trainer.val_check_interval=100000", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false", "--trainer.log_every_n_steps=10",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={run_dir}",
        "--trainer.callbacks=crossflow.callbacks.EMA",
        "--trainer.callbacks+=crossflow.callbacks.Throughput", "--trainer.callbacks.window=25",
        f"--model.model.preset={preset}", f"--data.batch_size={batch}", "--data.num_workers=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{strategy}/{preset} failed:\n{proc.stderr[-4000:]}")
    rates, step_times = [], []
    for metrics in run_dir.rglob("metrics.csv"):
        with open(metrics) as f:
            for row in csv.DictReader(f):
                if row.get("perf/samples_per_s"):
                    rates.append(float(row["perf/samples_per_s"]))
                    step_times.append(float(row["perf/step_time_s"]))
    if not rates:
        raise SystemExit(f"{strategy}/{preset}: no perf/samples_per_s logged (too few steps?)")
    return {"rate": statistics.median(rates), "step": statistics.median(step_times), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per run")
    args = parser.parse_args()
    # Shards are generated on first use by the demo config (data/shapes); do it once before timing.
    subprocess.run([sys.executable, "-c", "from crossflow.data.shards import write_shapes_shards as w; import os;"
                    "os.path.isdir('data/shapes/train') or w('data/shapes/train', 20000, seed=0);"
                    "os.path.isdir('data/shapes/val') or w('data/shapes/val', 1000, seed=1)"], cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, batch in CASES:
            for strategy in ("ddp", "fsdp2"):
                r = run(strategy, preset, batch, args.steps, Path(tmp))
                print(f"{preset} {strategy}: {r['rate']:.1f} samples/s, {r['step'] * 1000:.0f} ms/step", flush=True)
                rows.append([preset, strategy, 2 * batch, f"{r['rate']:.1f}", f"{r['step'] * 1000:.0f}", f"{r['wall']:.0f}"])
    body = table(["preset", "strategy", "global batch", "samples/s", "step ms", "run wall s"], rows)
    body += (
        f"\n\n2 processes × 1 thread on this 2-core machine, gloo, bf16-mixed, {args.steps} steps per run, median of "
        "25-step windows after the first step (validation and checkpointing off). On CPU there is no interconnect "
        "to hide: FSDP2's per-block all-gathers and reduce-scatters are pure overhead next to DDP's single bucketed "
        "all-reduce, so this measures the cost of sharding, not its benefit (memory: see the xl arithmetic above). "
        "Parameters and FLOPs per sample of every preset are in the presets table."
    )
    update_section("distributed_cpu", "DDP vs FSDP2 on CPU (2 processes)", "python bench/distributed_cpu.py", body)


if __name__ == "__main__":
    main()
