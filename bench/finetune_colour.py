"""Fine-tuning demonstration: teach the demo model a colour it never saw, full and LoRA, and measure forgetting.

1. Pre-train the demo recipe (configs/demo.yaml) on shapes data with every magenta sample held out.
2. Fine-tune that checkpoint on a few hundred magenta images only (configs/finetune.yaml: full, and LoRA).
3. Score each model with the shapes evaluator on fresh magenta prompts (colour accuracy on the new colour) and
   on fresh prompts in the six old colours (how much fine-tuning cost them).

Steps whose output exists are skipped, so an interrupted run continues. About 35 minutes on 2 CPU cores.
Run: python bench/finetune_colour.py [--workdir runs/bench_finetune] [--pretrain-steps 4000] [--finetune-steps 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

from crossflow.cli import main as train_main  # noqa: E402
from crossflow.data.shapes import COLORS, make_prompts  # noqa: E402
from crossflow.data.shards import write_shapes_shards  # noqa: E402
from crossflow.eval.evaluate import EVAL_SEED, evaluate_pipeline  # noqa: E402
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, CrossFlowPipeline  # noqa: E402

NEW = "magenta"
OLD = [c for c in COLORS if c != NEW]
ONLY_NEW = [{"color": c} for c in OLD]  # holding out every other colour leaves only the new one


def write_data(root: Path, num_finetune: int) -> None:
    if not (root / "pretrain" / "train").exists():
        write_shapes_shards(str(root / "pretrain" / "train"), 20000, seed=0, holdout=[{"color": NEW}])
        write_shapes_shards(str(root / "pretrain" / "val"), 1000, seed=1, holdout=[{"color": NEW}])
    if not (root / "new" / "train").exists():
        write_shapes_shards(str(root / "new" / "train"), num_finetune, seed=10, samples_per_shard=num_finetune, holdout=ONLY_NEW)
        write_shapes_shards(str(root / "new" / "val"), 64, seed=11, holdout=ONLY_NEW)


def run(config: str, run_dir: Path, train: Path, val: Path, steps: int, extra: list[str]) -> Path:
    """One training run through the real CLI; returns its last checkpoint (reused when it exists)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        return ckpt
    start = time.time()
    train_main([
        "fit", "--config", config, f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}", "--trainer.enable_progress_bar=false",
        f"--data.train_shards={train}", f"--data.val_shards={val}", "--data.generate_shapes=null", *extra,
    ])
    (run_dir / "train_seconds.txt").write_text(f"{time.time() - start:.0f}\n")
    return ckpt


def callbacks(run_dir: Path, decay: float, lora: bool) -> list[str]:
    out = [
        "--trainer.callbacks=crossflow.callbacks.EMA", f"--trainer.callbacks.decay={decay}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={run_dir}/checkpoints", "--trainer.callbacks.save_last=true",
    ]
    return out + ["--trainer.callbacks+=crossflow.callbacks.SaveLoRA"] if lora else out


def score(ckpt: Path, prompts: dict[str, list]) -> dict[str, dict[str, float]]:
    pipe = CrossFlowPipeline.from_pretrained(ckpt)
    out = {}
    with torch.autocast("cpu", torch.bfloat16):
        for name, ps in prompts.items():
            out[name], _ = evaluate_pipeline(pipe, ps, DEFAULT_NUM_STEPS, DEFAULT_GUIDANCE_SCALE, seed=0, progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/bench_finetune")
    parser.add_argument("--pretrain-steps", type=int, default=4000)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--num-finetune", type=int, default=400, help="magenta training images")
    parser.add_argument("--num-eval", type=int, default=256, help="prompts per group (new colour / old colours)")
    args = parser.parse_args()
    work = Path(args.workdir)
    data = work / "data"
    write_data(data, args.num_finetune)

    base = run("configs/demo.yaml", work / "pretrain", data / "pretrain" / "train", data / "pretrain" / "val",
               args.pretrain_steps, callbacks(work / "pretrain", 0.999, lora=False))
    tuned = {}
    for mode, lr in (("full", 2e-4), ("lora", 1e-3)):  # the learning rates of configs/finetune.yaml
        run_dir = work / f"finetune_{mode}"
        tuned[mode] = run(
            "configs/finetune.yaml", run_dir, data / "new" / "train", data / "new" / "val", args.finetune_steps,
            [*callbacks(run_dir, 0.995, lora=mode == "lora"), f"--model.finetune.init_from={base}",
             f"--model.finetune.mode={mode}", f"--model.optimizer.lr={lr}"],
        )

    prompts = {
        "new": make_prompts(args.num_eval, seed=EVAL_SEED, holdout=ONLY_NEW),
        "old": make_prompts(args.num_eval, seed=EVAL_SEED, holdout=[{"color": NEW}]),
    }
    rows, results = [], {}
    for name, ckpt in (("pre-trained (no magenta)", base), ("full fine-tune", tuned["full"]),
                       ("LoRA fine-tune", tuned["lora"])):
        s = results[name] = score(ckpt, prompts)
        seconds = (ckpt.parent.parent / "train_seconds.txt").read_text().strip()
        rows.append([name, s["new"]["color"], s["new"]["all_correct"], s["old"]["color"], s["old"]["all_correct"],
                     f"{seconds} s"])
        print(rows[-1], flush=True)
    base_old = results["pre-trained (no magenta)"]["old"]
    drops = {m: base_old["color"] - results[m]["old"]["color"] for m in ("full fine-tune", "LoRA fine-tune")}
    body = f"""Pre-training: the demo recipe ({args.pretrain_steps} steps) on 20,000 shapes samples with every {NEW} one held out.
Fine-tuning: {args.finetune_steps} steps on {args.num_finetune} {NEW} images only (configs/finetune.yaml; full: lr 2e-4,
LoRA: rank 8 on the flow transformer's qkv/proj/fc1/fc2, lr 1e-3, VE frozen). Evaluation: {args.num_eval} fresh prompts
(seed {EVAL_SEED}) in {NEW} ("new") and {args.num_eval} in the six old colours ("old"), {DEFAULT_NUM_STEPS} Euler steps,
guidance {DEFAULT_GUIDANCE_SCALE}, bf16. Bar: new-colour accuracy >= 0.85, old-colour accuracy down by <= 0.05.

{table(["model", "new colour", "new all-correct", "old colour", "old all-correct", "training time"], rows)}

Old-colour accuracy change: full {-drops["full fine-tune"]:+.3f}, LoRA {-drops["LoRA fine-tune"]:+.3f}.
"""
    update_section("finetune_colour", "Fine-tuning: a new colour, full and LoRA",
                   "python bench/finetune_colour.py", body)


if __name__ == "__main__":
    main()
