"""Shapes accuracy of a checkpoint across guidance scales (how sample.py's default was chosen).

256 fresh prompts per phrasing (seed 2024, never used for training), 50 Euler steps, one image per prompt.
Run: python bench/guidance_sweep.py --ckpt runs/demo/checkpoints/last.ckpt [--scales 1 1.5 2 3 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

from crossflow.data.shapes import make_prompts  # noqa: E402
from crossflow.eval.evaluate import EVAL_SEED, evaluate_pipeline  # noqa: E402
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, CrossFlowPipeline  # noqa: E402

KEYS = ("color", "position", "size", "shape", "all_correct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="runs/demo/checkpoints/last.ckpt")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    pipe = CrossFlowPipeline.from_pretrained(args.ckpt)
    rows = []
    for phrasing in ("train", "heldout"):
        prompts = make_prompts(args.num, seed=EVAL_SEED, phrasing=phrasing, image_size=pipe.config.codec.image_size)
        for scale in args.scales:
            scores, _ = evaluate_pipeline(pipe, prompts, args.steps, scale, seed=EVAL_SEED)
            rows.append([phrasing, scale, *(scores[k] for k in KEYS)])
            print(rows[-1], flush=True)
    body = table(["phrasing", "guidance", *KEYS], rows)
    body += (f"\n\nCheckpoint `{args.ckpt}`, {args.num} prompts per phrasing, {args.steps} Euler steps. "
             f"sample.py's default guidance scale is {DEFAULT_GUIDANCE_SCALE} (crossflow/inference.py).")
    update_section("guidance_sweep", "Guidance-scale sweep on the shapes demo",
                   f"python bench/guidance_sweep.py --ckpt {args.ckpt}", body)


if __name__ == "__main__":
    main()
