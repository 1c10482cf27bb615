"""How much of the data's position jitter a checkpoint reproduces across seeds, per shape and size.

Every shapes caption that names a position still leaves the centre free within ±4% of the canvas (the
generator's jitter, about ±1.3 px at 32 px). A model that samples the data distribution spreads one prompt's
objects over that range across seeds; a model whose text latent is (nearly) deterministic draws one image per
prompt, and flow matching from a deterministic source converges on the *mean* over the jitter, whose small
squares have rounded corners (docs/experiments.md, round 5). This measures both sides:

- centroid spread: the std of the object's centroid (pixel evaluator's foreground blob) over ``--seeds`` seeds
  of one prompt, averaged over x/y and prompts; the same for the shapes generator's own renders;
- how often the evaluator still reads the stated shape on the pixel-wise mean of 256 real renders of one
  prompt (every colour x position): the image a model that averages over the jitter would draw.

Run: python bench/position_spread.py --ckpt runs/demo/checkpoints/last.ckpt [--ckpt OTHER ...]
``--smoke`` runs a randomly initialised demo-shaped model at toy sizes and prints the section instead of writing it.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402
from smoke import random_pipeline  # noqa: E402

from crossflow.data.shapes import COLORS, POSITIONS, ShapeAttributes, render  # noqa: E402
from crossflow.eval.shapes import foreground_blob, measure  # noqa: E402
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, CrossFlowPipeline  # noqa: E402

CELLS = [(shape, size) for shape in ("circle", "square", "triangle") for size in ("small", "large")]
PLACES = [("red", "top left"), ("blue", "center"), ("green", "bottom right"), ("white", "top right")]


def caption(shape: str, size: str, colour: str, position: str) -> str:
    return f"a {size} {colour} {shape} in the {position}"


def centroid_spread(images: list[np.ndarray]) -> float:
    """Mean over x and y of the std of the foreground centroid over images (NaN if any image is blank)."""
    centres = []
    for image in images:
        ys, xs = np.nonzero(foreground_blob(image))
        if len(xs) == 0:
            return float("nan")
        centres.append((xs.mean(), ys.mean()))
    return float(np.std(np.array(centres), axis=0).mean())


def real_renders(shape: str, size: str, colour: str, position: str, num: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    attrs = ShapeAttributes(shape=shape, color=colour, size=size, position=position)
    return [np.asarray(render(attrs, 32, rng)) for _ in range(num)]


def model_spread(pipe: CrossFlowPipeline, seeds: int, steps: int, scale: float) -> dict[tuple[str, str], float]:
    out = {}
    for shape, size in CELLS:
        prompts = [caption(shape, size, c, p) for c, p in PLACES]
        per_seed = [
            pipe(prompts, num_steps=steps, guidance_scale=scale, generator=torch.Generator().manual_seed(s))
            for s in range(seeds)
        ]
        out[shape, size] = float(np.nanmean([
            centroid_spread([np.asarray(per_seed[s][i]) for s in range(seeds)]) for i in range(len(prompts))
        ]))
        print(f"  {size} {shape}: {out[shape, size]:.3f} px", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", help="checkpoint(s) to measure (default: the demo's)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="random model, 2 seeds, 2 steps; print, write nothing")
    args = parser.parse_args()
    ckpts = args.ckpt or ["runs/demo/checkpoints/last.ckpt"]
    torch.set_num_threads(args.threads)
    num_mean = 256
    if args.smoke:
        ckpts, args.seeds, args.steps, num_mean = ["random (--smoke)"], 2, 2, 8

    data, mean_reading = {}, {}
    for shape, size in CELLS:
        spreads = [centroid_spread(real_renders(shape, size, c, p, args.seeds, seed=k)) for k, (c, p) in enumerate(PLACES)]
        data[shape, size] = float(np.mean(spreads))
        # Every colour x position: is the jitter-mean image still read as its shape?
        means = [measure(np.mean(real_renders(shape, size, c, p, num_mean, seed=k), axis=0).round().astype(np.uint8))
                 for k, (c, p) in enumerate(itertools.product(COLORS, POSITIONS))]
        mean_reading[shape, size] = float(np.mean([m["shape"] == shape for m in means]))
    models = {}
    for ckpt in ckpts:
        print(f"{ckpt}:", flush=True)
        pipe = random_pipeline() if args.smoke else CrossFlowPipeline.from_pretrained(ckpt)
        models[ckpt] = model_spread(pipe, args.seeds, args.steps, args.cfg_scale)

    header = ["shape", "size", "data spread (px)", *[f"`{c}`" for c in ckpts], "jitter-mean image read as its shape"]
    rows = [[shape, size, data[shape, size], *[models[c][shape, size] for c in ckpts], mean_reading[shape, size]]
            for shape, size in CELLS]
    body = (
        f"Std of the object's centroid over {args.seeds} seeds of one prompt (mean over x/y and over "
        f"{len(PLACES)} prompts per row: {', '.join(f'{c} … {p}' for c, p in PLACES)}), {args.steps} Euler steps, "
        f"guidance {args.cfg_scale}; the data column is the shapes generator's own renders of the same prompts. "
        f"The last column: the fraction of the {len(COLORS) * len(POSITIONS)} colour x position combinations whose "
        f"pixel-wise mean of {num_mean} real renders (the image a model that averages over the jitter would draw) the "
        "pixel evaluator still reads as the stated shape.\n\n" + table(header, rows)
    )
    if args.smoke:
        print(body)
        return
    command = "python bench/position_spread.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    update_section("position_spread", "Position jitter reproduced across seeds (shapes demo)", command.strip(), body)


if __name__ == "__main__":
    main()
