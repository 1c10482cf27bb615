"""Blend training vs the demo recipe: does a flow that has seen images *between* captions interpolate between them?

The demo model trains on captions with discrete values (seven colours, five positions, two sizes), so the latents
between two captions have no image of their own, and interpolation (issue 6) switches from one prompt's image to
the other's within a frame or two. configs/data/blend.yaml makes a quarter of the training samples blends
(crossflow.data.shapes.Blend): two captions that differ in colour, position or size, the image rendered α of the way
between them, and the flow started from the same lerp of the two captions' VE posteriors that
crossflow.editing.latent_ops.interpolate walks. Everything else is the demo recipe (configs/demo.yaml, 4000 steps).

For each model (the demo checkpoint and the blend one):
accuracy
    crossflow.eval.evaluate on ``--eval-num`` fresh training-phrasing prompts (all four attributes stated; the
    seed of `make demo`'s evaluation): per attribute and all-correct. Blending must not cost the demo's accuracy.
interpolation
    The latent-navigation bench's interpolation test (bench/latent_navigation.py: the same ``--num-pairs`` pairs,
    half colour and half position, ``--num-frames`` frames, the same seeds and scoring): shared-noise lerp with α
    evenly spaced, and with arc spacing (``--arc-rounds``). Success = the changed attribute's progress is monotone
    (Spearman ≥ 0.9) and the evaluator reads the three unchanged attributes on every frame; ratio = max / median
    L2 between adjacent frames.
Writes docs/blend_interpolation.png: the first colour pair and the first position pair, evenly spaced α, demo model
row then blend model row (not chosen by outcome).

The blend run trains once (``--workdir``; an existing finished run is reused) or comes from ``--blend-ckpt``.
About 22 min of training in bf16 on 2 CPU cores with native bf16, then ~15 min of interpolation per model.

Run: python bench/blend_training.py [--base-ckpt runs/demo/checkpoints/last.ckpt] [--blend-ckpt PATH]
     [--workdir runs/bench_blend] [--num-pairs 100] [--num-frames 11] [--arc-rounds 5] [--eval-num 256] [--smoke]
``--smoke`` uses two randomly initialised demo-shaped models instead (no training, no checkpoint) at toy sizes, writes
the picture to a temporary folder and prints the section instead of writing docs/results.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latent_navigation import (  # noqa: E402
    INTERPOLATION_BAR,
    SMOOTH_RATIO,
    Run,
    checkpoint_label,
    interpolation_pairs,
    score_frames,
)
from results import table, update_section  # noqa: E402
from smoke import output_dir, random_pipeline  # noqa: E402

from crossflow.data.shapes import ATTRIBUTES, make_prompts  # noqa: E402
from crossflow.data.shards import write_shapes_shards  # noqa: E402
from crossflow.editing.latent_ops import DEFAULT_ARC_ROUNDS, interpolate  # noqa: E402
from crossflow.eval.evaluate import EVAL_SEED, evaluate_pipeline  # noqa: E402
from crossflow.inference import (  # noqa: E402
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    make_grid,
    to_pil,
)
from runs import checkpoint_callbacks, train, train_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "blend_training"
OVERLAY = "configs/data/blend.yaml"
BLEND_FRACTION = 0.25  # as configs/data/blend.yaml
STEPS = 4000  # as configs/demo.yaml
EMA_DECAY = 0.999  # as configs/demo.yaml
METHODS = {"α evenly spaced": "uniform", "arc spacing": "arc"}
ACCURACY_KEYS = ("color", "position", "size", "shape", "all_correct")
INTERPOLATION_HEADER = ["model", "pairs", "method", "n", "monotone", "held", "success", "ends held",
                        "misread on some frame: shape / colour / size / position", "ratio ≤ 2", "mean ratio"]


def train_blend_model(workdir: Path) -> Path:
    """The demo recipe plus the blend overlay, on shards written here (train: blends; val: none)."""
    shards = {}
    for split, num, seed, blend in (("train", 20000, 0, BLEND_FRACTION), ("val", 1000, 1, 0.0)):
        folder = workdir / "data" / split
        if not any(folder.glob("*.tar")):
            write_shapes_shards(str(folder), num, seed=seed, blend_fraction=blend, overwrite=True)
        shards[split] = folder
    run_dir = workdir / "blend"
    return train(["configs/demo.yaml", OVERLAY], run_dir, shards["train"], shards["val"], STEPS,
                 checkpoint_callbacks(run_dir, EMA_DECAY))


def accuracy(pipe: CrossFlowPipeline, num: int, num_steps: int) -> dict[str, float]:
    """The demo's evaluation: one image per fresh training-phrasing prompt, attributes read back from pixels."""
    scores, _ = evaluate_pipeline(pipe, make_prompts(num, EVAL_SEED, "train"), num_steps=num_steps, seed=0)
    return {k: float(scores[k]) for k in ACCURACY_KEYS}


def interpolation(run: Run, args: argparse.Namespace, pairs: list) -> tuple[dict[str, list[dict]], dict[int, torch.Tensor]]:
    """Per method, every pair's scores (latent_navigation.score_frames); and the evenly spaced frames of the first
    colour pair and the first position pair."""
    first = {next(i for i, p in enumerate(pairs) if p.attribute == attr) for attr in ("color", "position")}
    scores: dict[str, list[dict]] = {m: [] for m in METHODS}
    examples = {}
    for index, pair in enumerate(tqdm(pairs, desc="interpolation", unit="pair")):
        for method, spacing in METHODS.items():
            frames = interpolate(run.pipe, *pair.prompts, num_frames=args.num_frames, num_steps=run.num_steps,
                                 guidance_scale=run.guidance, generator=run.generator(index), spacing=spacing,
                                 arc_rounds=args.arc_rounds)
            scores[method].append(score_frames(frames, pair))
            if index in first and spacing == "uniform":
                examples[index] = frames
    return scores, examples


def interpolation_rows(name: str, scores: dict[str, list[dict]], pairs: list) -> list[list[object]]:
    rows = []
    for group, attr in (("colour", "color"), ("position", "position"), ("all", None)):
        idx = [i for i, p in enumerate(pairs) if attr is None or p.attribute == attr]
        for method in METHODS:
            s = [scores[method][i] for i in idx]
            ratios = np.array([x["ratio"] for x in s])
            misread = " / ".join(f"{np.mean([a in x['misread'] for x in s]):.2f}" for a in ATTRIBUTES)
            rows.append([name, group, method, len(idx), *(float(np.mean([x[k] for x in s]))
                                                         for k in ("monotone", "held", "success", "ends_held")),
                         misread, float(np.mean(ratios <= SMOOTH_RATIO)), float(np.mean(ratios))])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-ckpt", type=Path, default=Path("runs/demo/checkpoints/last.ckpt"),
                        help="the demo recipe's checkpoint (what `make demo` trains)")
    parser.add_argument("--blend-ckpt", type=Path, default=None,
                        help="a finished blend run's checkpoint; default: train one in --workdir (reused if done)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_blend"))
    parser.add_argument("--num-pairs", type=int, default=100)
    parser.add_argument("--num-frames", type=int, default=11)
    parser.add_argument("--arc-rounds", type=int, default=DEFAULT_ARC_ROUNDS)
    parser.add_argument("--eval-num", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="two random demo-shaped models, 2 pairs × 3 frames, 10 steps, 8 prompts; prints the "
                             "section instead of writing docs/results.md")
    args = parser.parse_args()
    num_steps = DEFAULT_NUM_STEPS
    if args.smoke:
        args.num_pairs, args.num_frames, args.arc_rounds, args.eval_num, num_steps = 2, 3, 1, 8, 10
    elif not args.base_ckpt.exists():
        parser.error(f"--base-ckpt {args.base_ckpt} does not exist (run `make demo` first)")
    if args.blend_ckpt is not None and not args.blend_ckpt.exists():
        parser.error(f"--blend-ckpt {args.blend_ckpt} does not exist")
    if args.num_pairs < 2 or args.num_frames < 3:
        parser.error("need at least 2 pairs (one colour, one position) and 3 frames")

    cost = ""
    if args.smoke:
        models = {"demo recipe": (random_pipeline(0), "none: random (--smoke)"),
                  "blend training": (random_pipeline(1), "none: random (--smoke)")}
    else:
        blend_ckpt = args.blend_ckpt or train_blend_model(args.workdir)
        if args.blend_ckpt is None:
            cost = f" Training the blend model took {train_seconds(blend_ckpt) / 60:.1f} min (bf16, this machine)."
        else:
            cost = (" The blend checkpoint was given (`--blend-ckpt`: `python train.py fit --config configs/demo.yaml "
                    "--config configs/data/blend.yaml` with its own run folder); without it the bench trains the same "
                    f"recipe in `{args.workdir}`.")
        models = {name: (CrossFlowPipeline.from_pretrained(ckpt), checkpoint_label(ckpt))
                  for name, ckpt in (("demo recipe", args.base_ckpt), ("blend training", blend_ckpt))}
    pairs = interpolation_pairs(args.num_pairs, args.seed)
    acc_rows, interp_rows, strips, success = {}, {}, {}, {}
    with output_dir(None, args.smoke, "blend_training_") as out:
        for name in reversed(models):  # the blend model first: its numbers are the news
            pipe, label = models[name]
            run = Run(pipe, label, num_steps, DEFAULT_GUIDANCE_SCALE, False, args.seed, out)
            acc = accuracy(pipe, args.eval_num, num_steps)
            acc_rows[name] = [name, label, *(acc[k] for k in ACCURACY_KEYS)]
            scores, examples = interpolation(run, args, pairs)
            interp_rows[name] = interpolation_rows(name, scores, pairs)
            strips[name] = [examples[i] for i in sorted(examples)]
            success[name] = {m: float(np.mean([x["success"] for x in scores[m]])) for m in METHODS}
            print(table(["model", "checkpoint", "colour", "position", "size", "shape", "all-correct"], [acc_rows[name]]))
            print(table(INTERPOLATION_HEADER, interp_rows[name]), flush=True)

        # Rows: for each example pair, the demo recipe's frames, then the blend model's.
        ordered = [strips[name][i] for i in range(len(strips["demo recipe"])) for name in models]
        image = make_grid(to_pil(torch.cat(ordered)), columns=args.num_frames)
        path = out / "blend_interpolation.png"
        image.resize((image.width * 3, image.height * 3), resample=0).save(path)

    verdicts = "\n".join(
        f"- {name}: interpolation success (bar {INTERPOLATION_BAR:.0%}) "
        + ", ".join(f"{m} {s:.3f} → **{'met' if s >= INTERPOLATION_BAR else 'NOT met'}**" for m, s in rates.items())
        for name, rates in ((n, success[n]) for n in models))
    body = f"""The demo recipe (configs/demo.yaml) against the same recipe with blend training (configs/data/blend.yaml:
{BLEND_FRACTION:.0%} of the training samples lie between two captions that differ in colour, position or size; the image is
rendered that far between them and the flow starts from the same lerp of the two VE posteriors that interpolation
walks). {STEPS} steps each, EMA weights, {num_steps} Euler steps, guidance {DEFAULT_GUIDANCE_SCALE}, fp32, seed {args.seed}.{cost}

Accuracy on {args.eval_num} fresh training-phrasing prompts (`make demo`'s evaluation; bar: all-correct ≥ 0.75):

{table(["model", "checkpoint", "colour", "position", "size", "shape", "all-correct"], [acc_rows[n] for n in models])}

Interpolation: the latent-navigation bench's test ({args.num_pairs} pairs, half colour and half position, {args.num_frames}
frames, shared-noise lerp; arc spacing with {args.arc_rounds} rounds; the same pairs, seeds and scoring as
bench/latent_navigation.py). *Monotone*: the changed attribute's progress has Spearman ρ ≥ 0.9 over the frames;
*held*: the evaluator reads the three unchanged attributes right on every frame; success = both. *Ends held*: the
same on the first and last frames only, the two prompts' own images (what the model's drawing lets success reach,
whatever the path does). *Misread*: the share of pairs in which that attribute reads wrong on some frame (an
attribute is only scored where it is unchanged). *Ratio*: max / median L2 between adjacent frames.

{table(INTERPOLATION_HEADER, [row for n in models for row in interp_rows[n]])}

{verdicts}

The first colour pair and the first position pair, α evenly spaced (rows per pair: demo recipe, then blend training;
not chosen by outcome):

![interpolation: demo recipe vs blend training]({path.name})
"""
    if args.smoke:
        print(body)
        return
    update_section(SECTION, "Blend training: interpolation between captions",
                   "python bench/blend_training.py" + (f" --blend-ckpt {args.blend_ckpt}" if args.blend_ckpt else ""),
                   body)


if __name__ == "__main__":
    main()
