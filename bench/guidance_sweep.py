"""Shapes accuracy of a checkpoint across guidance scales and text-latent temperatures (how sample.py's defaults were chosen).

256 fresh prompts per phrasing (seed 2024, never used for training), 50 Euler steps, one image per prompt.
Temperature τ scales the VE's σ when drawing z_text (1 = as trained, 0 = μ only): lower τ trades the
diversity of one prompt's images for fidelity, as guidance does. Also reports that diversity: the mean
per-pixel standard deviation over 8 seeds of the same prompt.
Run: python bench/guidance_sweep.py --ckpt runs/demo/checkpoints/last.ckpt [--scales 1 2.5] [--temperatures 1 0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

from crossflow.data.shapes import make_prompts  # noqa: E402
from crossflow.eval.evaluate import EVAL_SEED, evaluate_pipeline  # noqa: E402
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, CrossFlowPipeline  # noqa: E402

KEYS = ("color", "position", "size", "shape", "all_correct")


def diversity(pipe: CrossFlowPipeline, prompts: list, steps: int, scale: float, tau: float, seeds: int = 8) -> float:
    """Mean per-pixel std over ``seeds`` images of each prompt (0 = every seed gives the same image)."""
    images = torch.stack([
        pipe([p.caption for p in prompts], num_steps=steps, guidance_scale=scale, temperature=tau,
             generator=torch.Generator().manual_seed(s), output_type="pt")
        for s in range(seeds)
    ])
    return float(images.float().std(dim=0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="runs/demo/checkpoints/last.ckpt")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.5, 4.0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    pipe = CrossFlowPipeline.from_pretrained(args.ckpt)
    rows = []
    for phrasing in ("train", "heldout"):
        prompts = make_prompts(args.num, seed=EVAL_SEED, phrasing=phrasing, image_size=pipe.config.codec.image_size)
        for tau in args.temperatures:
            for scale in args.scales:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    scores, _ = evaluate_pipeline(pipe, prompts, args.steps, scale, seed=EVAL_SEED, temperature=tau)
                    spread = diversity(pipe, prompts[:16], args.steps, scale, tau) if phrasing == "train" else "—"
                rows.append([phrasing, scale, tau, *(scores[k] for k in KEYS), spread])
                print(rows[-1], flush=True)
    body = table(["phrasing", "guidance", "temperature", *KEYS, "diversity"], rows)
    body += (f"\n\nCheckpoint `{args.ckpt}`, {args.num} prompts per phrasing, {args.steps} Euler steps, bf16 autocast. "
             "Diversity: mean per-pixel std (images in [0, 1]) over 8 seeds of each of 16 training-phrasing prompts. "
             f"sample.py's default guidance scale is {DEFAULT_GUIDANCE_SCALE} (crossflow/inference.py).")
    command = (f"python bench/guidance_sweep.py --ckpt {args.ckpt} --scales {' '.join(map(str, args.scales))} "
               f"--temperatures {' '.join(map(str, args.temperatures))} --num {args.num}")
    update_section("guidance_sweep", "Guidance and temperature sweep on the shapes demo", command, body)


if __name__ == "__main__":
    main()
