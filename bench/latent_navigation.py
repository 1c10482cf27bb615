"""Latent navigation on the shapes model: does moving z_text move the image the way the prompts say?

Parts (``--parts``, default all; each is one function below, registered in PARTS, and owns one block of the
"latent_navigation" section of docs/results.md, so running some parts keeps the others' last results):

interpolation
    ``--num-pairs`` prompt pairs that differ in one attribute (half colour, half position; the other attributes
    drawn at random, seeded), ``--num-frames`` frames each from crossflow.editing.latent_ops.interpolate: the
    shared-noise lerp (one ε for every frame, the default) and the naive lerp of two independent draws, with the
    same seed. Per pair and method: the changed attribute's progress (crossflow.editing.measure: the object's
    mean RGB projected from colour A's palette RGB to colour B's, or its centroid projected from position A's
    centre to B's) must rise monotonically, Spearman ρ vs frame index >= 0.9; the evaluator
    (crossflow.eval.shapes.measure) must read the prompts' unchanged attributes on every frame; success = both.
    Smoothness: smoothness_ratio = max / median L2 between adjacent frames (<= 2: no single jump). Bars: success
    >= 90% of pairs, smoothness ratio <= 2, shared noise measurably smoother than naive. Writes an example strip
    (docs/interpolation_example.png: the first colour pair and the first position pair, shared then naive; not
    chosen by outcome) and a GIF of the shared-noise frames (docs/interpolation_example.gif).
arithmetic
    crossflow.editing.latent_ops.arithmetic, re-standardised (the default) and not. The issue's example in its own
    words, "red circle + square - circle", and in the training captions' phrasing (the generator always states
    colour and shape, so the difference term holds a colour fixed: "a red circle + a green square - a green
    circle"), over ``--headline-seeds`` seeds; then a grid of ``--num-combos`` shape swaps "a c1 s1 + a c3 s2 -
    a c3 s1" (-> c1 s2) and as many colour swaps "a c1 s1 + a c2 s3 - a c1 s3" (-> c2 s1), ``--num-seeds``
    seeds each. Success = the evaluator reads the target colour and shape. Reference: the target prompt itself
    with the same seeds. Bar: >= 80% of seeds for the issue's example.

Defaults: 50 Euler steps, guidance 2.5 (crossflow.inference), fp32 (``--bf16`` autocasts; on the 2-core CPU
machines bf16 ran ~7× *slower* than fp32 for this model). About 40 minutes on 2 busy CPU cores.
Run: python bench/latent_navigation.py --ckpt runs/bench_compare/crossflow-tiny/checkpoints/last.ckpt
     [--parts interpolation arithmetic] [--num-pairs 100] [--num-frames 11] [--num-combos 24] [--num-seeds 8]
     [--bf16] [--smoke]
``--smoke`` runs a randomly initialised demo-shaped model (no checkpoint) at toy sizes, writes its example
files to a temporary folder and prints the section instead of writing docs/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import math
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, table, update_section  # noqa: E402

from crossflow.data.shapes import ATTRIBUTES, COLORS, POSITIONS, SHAPES, SIZES, TRAIN_TEMPLATES, fill_template  # noqa: E402
from crossflow.editing.latent_ops import arithmetic, interpolate, save_gif, smoothness_ratio  # noqa: E402
from crossflow.editing.measure import attribute_progress, spearman  # noqa: E402
from crossflow.eval.shapes import measure  # noqa: E402
from crossflow.inference import (  # noqa: E402
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    make_grid,
    to_pil,
)

ROOT = Path(__file__).resolve().parent.parent
SECTION = "latent_navigation"
COMMAND = "python bench/latent_navigation.py --ckpt runs/bench_compare/crossflow-tiny/checkpoints/last.ckpt"
# The generator's first training template, "a [{size} ]{color} {shape}[ {pos}]": captions the model was trained
# on ("a small red circle in the center"; "a red circle" when size and position are left out, as 15% each are).
TEMPLATE = TRAIN_TEMPLATES[0]
MONOTONE_RHO = 0.9
SMOOTH_RATIO = 2.0
INTERPOLATION_BAR = 0.9
ARITHMETIC_BAR = 0.8
SIGNIFICANCE = 0.05
HELPER_COLOR = "green"  # the colour held fixed in the training-phrasing version of the example


def caption(color: str, shape: str, size: str | None = None, position: str | None = None) -> str:
    """A caption in the training phrasing (TEMPLATE), with size and position stated only when given."""
    return fill_template(TEMPLATE, {"color": color, "shape": shape, "size": size,
                                    "pos": f"in the {position}" if position else None})


@dataclass
class Run:
    """What every part needs: the model and the sampling settings."""

    pipe: CrossFlowPipeline
    checkpoint: str
    num_steps: int
    guidance: float
    bf16: bool
    seed: int
    out_dir: Path
    progress: bool = True

    def precision(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.pipe.device.type, torch.bfloat16, enabled=self.bf16)

    def generator(self, offset: int) -> torch.Generator:
        return torch.Generator(self.pipe.device).manual_seed(self.seed + offset)

    def settings(self) -> str:
        return (f"Checkpoint {self.checkpoint}, {self.num_steps} Euler steps, guidance {self.guidance}, "
                f"{'bf16 autocast' if self.bf16 else 'fp32'}, seed {self.seed}; measured {datetime.date.today()}.")


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: P(at least ``wins`` of wins + losses fair coin flips), ties left out beforehand."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ------------------------------------------------------------------------------------------- interpolation


@dataclass
class Pair:
    """Two prompts stating all four attributes, differing in ``attribute`` only."""

    attribute: str
    a: dict[str, str]
    b: dict[str, str]

    @property
    def prompts(self) -> tuple[str, str]:
        return caption(**self.a), caption(**self.b)


def interpolation_pairs(n: int, seed: int) -> list[Pair]:
    """ceil(n/2) colour pairs then floor(n/2) position pairs; the changed attribute's ordered value pairs taken
    in a shuffled cycle (every ordered pair about equally often), the other attributes uniform."""
    rng = np.random.default_rng(seed)
    values = {"color": list(COLORS), "position": list(POSITIONS), "shape": list(SHAPES), "size": list(SIZES)}
    pairs = []
    for attribute, count in (("color", n - n // 2), ("position", n // 2)):
        ordered = list(itertools.permutations(values[attribute], 2))
        ordered = [ordered[i] for i in rng.permutation(len(ordered))]
        for i in range(count):
            base = {name: str(rng.choice(values[name])) for name in ("color", "shape", "size", "position")}
            va, vb = ordered[i % len(ordered)]
            pairs.append(Pair(attribute, {**base, attribute: va}, {**base, attribute: vb}))
    return pairs


def score_frames(frames: torch.Tensor, pair: Pair) -> dict[str, float | bool]:
    """One pair's frames (F, 3, S, S) in [0, 1] -> monotone progress, attributes held, success, smoothness."""
    attr = pair.attribute
    readings = [measure(frame) for frame in frames]
    rho = spearman(attribute_progress(list(frames), attr, pair.a[attr], pair.b[attr]))
    unchanged = [name for name in ATTRIBUTES if name != attr]
    monotone = not math.isnan(rho) and rho >= MONOTONE_RHO
    held = all(r[name] == pair.a[name] for r in readings for name in unchanged)
    return {
        "rho": rho,
        "monotone": monotone,
        "held": held,
        "success": monotone and held,
        "endpoints": readings[0][attr] == pair.a[attr] and readings[-1][attr] == pair.b[attr],
        "ratio": smoothness_ratio(frames),
    }


def part_interpolation(run: Run, args: argparse.Namespace) -> str:
    pairs = interpolation_pairs(args.num_pairs, run.seed)
    methods = {"shared-noise lerp": False, "naive lerp": True}  # name -> interpolate(naive=...)
    scores: dict[str, list[dict]] = {m: [] for m in methods}
    first = {attr: next(i for i, p in enumerate(pairs) if p.attribute == attr) for attr in ("color", "position")
             if any(p.attribute == attr for p in pairs)}
    examples: dict[tuple[int, str], torch.Tensor] = {}
    for index, pair in enumerate(tqdm(pairs, desc="interpolation", unit="pair", disable=not run.progress)):
        for method, naive in methods.items():
            with run.precision():
                # Same seed for both methods: the naive lerp's first draw ε_a is the shared-noise ε.
                frames = interpolate(run.pipe, *pair.prompts, num_frames=args.num_frames, naive=naive,
                                     num_steps=run.num_steps, guidance_scale=run.guidance,
                                     generator=run.generator(index))
            scores[method].append(score_frames(frames, pair))
            if index in first.values():
                examples[index, method] = frames

    groups = {"colour": "color", "position": "position", "all": None}
    rows = []
    for group, attr in groups.items():
        idx = [i for i, p in enumerate(pairs) if attr is None or p.attribute == attr]
        if not idx:
            continue
        for method in methods:
            s = [scores[method][i] for i in idx]
            ratios = np.array([x["ratio"] for x in s])
            rates = [float(np.mean([x[key] for x in s])) for key in ("monotone", "held", "success", "endpoints")]
            rows.append([group, method, len(idx), *rates, float(np.mean(ratios <= SMOOTH_RATIO)),
                         float(np.mean(ratios)), float(np.median(ratios))])
    shared = np.array([x["ratio"] for x in scores["shared-noise lerp"]])
    naive = np.array([x["ratio"] for x in scores["naive lerp"]])
    wins, losses = int((shared < naive).sum()), int((shared > naive).sum())
    p_value = sign_test(wins, losses)
    success = float(np.mean([x["success"] for x in scores["shared-noise lerp"]]))
    mean_shared, mean_naive = float(np.mean(shared)), float(np.mean(naive))
    smoother = mean_shared < mean_naive and p_value < SIGNIFICANCE

    strip, gif = save_examples(run, examples, first, args.num_frames)
    example_pairs = "; ".join(f"{' → '.join(f'“{p}”' for p in pairs[i].prompts)}" for i in first.values())
    n_colour = sum(p.attribute == "color" for p in pairs)
    return f"""### Interpolation

{run.settings()}

{len(pairs)} prompt pairs in the training phrasing (“{pairs[0].prompts[0]}” → “{pairs[0].prompts[1]}”):
{n_colour} change the colour, {len(pairs) - n_colour} the position (every ordered pair of values about equally often),
the other attributes drawn at random. {args.num_frames} frames per pair (α evenly spaced, lerp of the VE posterior),
shared-noise (one ε for all frames, `interpolate`'s default) and naive (lerp of two independent draws), same seed per
pair. *Monotone*: Spearman ρ of the changed attribute's progress (mean object RGB projected onto colour B − colour A
of the palette; mask centroid projected onto centre B − centre A) vs frame index ≥ {MONOTONE_RHO}. *Held*: the
evaluator reads the prompts' three unchanged attributes on every frame. *Success* = monotone and held.
*Endpoints*: the first frame reads A and the last B on the changed attribute (not part of success; shown to
separate the model's accuracy from the path's). *Ratio* = max / median L2 distance between adjacent frames.

{table(["pairs", "method", "n", "monotone", "held", "success", "endpoints", "ratio ≤ 2", "mean ratio", "median ratio"], rows)}

Shared noise gave the lower ratio in {wins} pairs, naive in {losses} (ties {len(pairs) - wins - losses});
one-sided sign test p = {p_value:.2g}.

- success ≥ {INTERPOLATION_BAR:.0%} of pairs (shared-noise lerp, all pairs): {success:.3f} → **{verdict(success >= INTERPOLATION_BAR)}**
- smoothness ratio ≤ {SMOOTH_RATIO:g} (mean over all pairs, shared-noise lerp): {mean_shared:.3f} → **{verdict(mean_shared <= SMOOTH_RATIO)}**
- shared noise measurably smoother than naive (lower mean ratio, {mean_shared:.3f} vs {mean_naive:.3f}, and sign test
  p < {SIGNIFICANCE}): **{verdict(smoother)}**

Example ({example_pairs}; rows: shared-noise, naive for each; the first pair of each kind, not chosen by outcome):

![interpolation example]({strip.name}) ![shared-noise interpolation]({gif.name})
"""


def save_examples(run: Run, examples: dict[tuple[int, str], torch.Tensor], first: dict[str, int],
                  num_frames: int) -> tuple[Path, Path]:
    """The strip (rows: each example pair's shared then naive frames) and a GIF of the shared frames side by side."""
    rows = [examples[index, method] for index in first.values() for method in ("shared-noise lerp", "naive lerp")]
    strip = run.out_dir / "interpolation_example.png"
    strip.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(to_pil(torch.cat(rows)), columns=num_frames)
    grid.resize((grid.width * 3, grid.height * 3), resample=0).save(strip)  # 0 = NEAREST: crisp, readable on a page
    shared = [examples[index, "shared-noise lerp"] for index in first.values()]
    gap = torch.full((num_frames, 3, shared[0].shape[2], 2), 40 / 255)  # the strip's grey between images
    side_by_side = torch.cat([x for frames in shared for x in (frames, gap)][:-1], dim=3)
    gif = save_gif(side_by_side, run.out_dir / "interpolation_example.gif", duration_ms=200, upscale=4)
    print(f"wrote {strip} and {gif}")
    return strip, gif


# ---------------------------------------------------------------------------------------------- arithmetic


@dataclass
class Expression:
    kind: str
    expression: str
    target: tuple[str, str]  # (colour, shape)
    target_prompt: str


def arithmetic_grid(n_per_kind: int, seed: int) -> list[Expression]:
    """``n_per_kind`` shape swaps and as many colour swaps, sampled without replacement from all valid combos.

    Shape swap: a c1 s1 + a c3 s2 − a c3 s1 → c1 s2 (c3 ≠ c1, else the sum is the target prompt's μ exactly).
    Colour swap: a c1 s1 + a c2 s3 − a c1 s3 → c2 s1 (s3 ≠ s1, likewise).
    """
    rng = np.random.default_rng(seed + 1)
    colors, out = list(COLORS), []
    shape_swaps = [(c1, s1, c3, s2) for c1, c3 in itertools.permutations(colors, 2)
                   for s1, s2 in itertools.permutations(SHAPES, 2)]
    colour_swaps = [(c1, s1, c2, s3) for c1, c2 in itertools.permutations(colors, 2)
                    for s1, s3 in itertools.permutations(SHAPES, 2)]
    for i in rng.choice(len(shape_swaps), min(n_per_kind, len(shape_swaps)), replace=False):
        c1, s1, c3, s2 = shape_swaps[i]
        out.append(Expression("shape swap", f"{caption(c1, s1)} + {caption(c3, s2)} - {caption(c3, s1)}",
                              (c1, s2), caption(c1, s2)))
    for i in rng.choice(len(colour_swaps), min(n_per_kind, len(colour_swaps)), replace=False):
        c1, s1, c2, s3 = colour_swaps[i]
        out.append(Expression("colour swap", f"{caption(c1, s1)} + {caption(c2, s3)} - {caption(c1, s3)}",
                              (c2, s1), caption(c2, s1)))
    return out


VARIANTS = ("re-standardised", "not re-standardised", "target prompt")


def score_expression(run: Run, expr: Expression, num_seeds: int, offset: int) -> dict[str, np.ndarray]:
    """variant -> (num_seeds, 2) bool: [colour right, shape right] per seed; one seed stream for every variant."""
    out = {}
    for variant in VARIANTS:
        source = expr.target_prompt if variant == "target prompt" else expr.expression
        with run.precision():
            images = arithmetic(run.pipe, source, num_seeds=num_seeds, num_steps=run.num_steps,
                                guidance_scale=run.guidance, generator=run.generator(offset),
                                restandardise=variant == "re-standardised")
        readings = [measure(image) for image in images]
        out[variant] = np.array([[r["color"] == expr.target[0], r["shape"] == expr.target[1]] for r in readings])
    return out


def part_arithmetic(run: Run, args: argparse.Namespace) -> str:
    headline = [
        Expression("issue's words", "red circle + square - circle", ("red", "square"), "red square"),
        Expression("training phrasing", f"a red circle + a {HELPER_COLOR} square - a {HELPER_COLOR} circle",
                   ("red", "square"), caption("red", "square")),
    ]
    grid = arithmetic_grid(args.num_combos, run.seed)
    jobs = [(e, args.headline_seeds) for e in headline] + [(e, args.num_seeds) for e in grid]
    results: list[dict[str, np.ndarray]] = []
    offset = 10_000  # seeds apart from the interpolation part's
    for expr, seeds in tqdm(jobs, desc="arithmetic", unit="expr", disable=not run.progress):
        results.append(score_expression(run, expr, seeds, offset))
        offset += seeds

    def summary(idx: list[int], variant: str) -> tuple[int, float, float, float]:
        hits = np.concatenate([results[i][variant] for i in idx])
        return len(hits), float(hits[:, 0].mean()), float(hits[:, 1].mean()), float(hits.all(axis=1).mean())

    groups = {f"“{headline[0].expression}”": [0], f"“{headline[1].expression}”": [1]}
    for kind in ("shape swap", "colour swap"):
        groups[f"{kind} grid"] = [2 + i for i, e in enumerate(grid) if e.kind == kind]
    groups["grid, both kinds"] = list(range(2, len(jobs)))
    rows = [[group, variant, *summary(idx, variant)] for group, idx in groups.items() if idx for variant in VARIANTS]
    head = {i: summary([i], "re-standardised")[3] for i in (0, 1)}
    grid_idx = groups["grid, both kinds"]
    grid_on, grid_off = summary(grid_idx, "re-standardised")[3], summary(grid_idx, "not re-standardised")[3]
    grid_ref = summary(grid_idx, "target prompt")[3]
    per_combo = [(results[i]["re-standardised"].all(axis=1).mean(), results[i]["not re-standardised"].all(axis=1).mean())
                 for i in grid_idx]
    helped, hurt = sum(a > b for a, b in per_combo), sum(a < b for a, b in per_combo)
    examples = [next(e for e in grid if e.kind == k) for k in ("shape swap", "colour swap") if any(e.kind == k for e in grid)]
    example_text = "; ".join(f"“{e.expression}” → {' '.join(e.target)}" for e in examples)
    return f"""### Latent arithmetic

{run.settings()}

`arithmetic(pipe, expression)`: Σ wᵢ·μᵢ of the terms' VE means, re-standardised to the first term's per-sample mean
and std (or not), σ of the first term, one noise draw per seed (the draw `pipe([prompt] * n, generator)` makes).
The issue's example over {args.headline_seeds} seeds, in its own words (bare “square” and “circle” are captions the
training data never has: the generator always states colour and shape) and in the training phrasing with the colour
of the difference term held at {HELPER_COLOR}. The grid: {sum(e.kind == "shape swap" for e in grid)} shape swaps
“a c1 s1 + a c3 s2 - a c3 s1” → c1 s2 and {sum(e.kind == "colour swap" for e in grid)} colour swaps
“a c1 s1 + a c2 s3 - a c1 s3” → c2 s1 (c3 ≠ c1, s3 ≠ s1: never the target prompt's μ itself), sampled from all
combos, {args.num_seeds} seeds each, e.g. {example_text}. *Success*: the evaluator reads the target colour and
shape. *Target prompt*: the target's own caption with the same seeds, the ceiling the model's accuracy sets.

{table(["expressions", "variant", "images", "colour right", "shape right", "success"], rows)}

- “{headline[0].expression}” gives a red square in ≥ {ARITHMETIC_BAR:.0%} of seeds (re-standardised): {head[0]:.3f} → **{verdict(head[0] >= ARITHMETIC_BAR)}**
- the same in the training phrasing (“{headline[1].expression}”): {head[1]:.3f} → **{verdict(head[1] >= ARITHMETIC_BAR)}**
- grid, both kinds, ≥ {ARITHMETIC_BAR:.0%} (the same bar over the grid; the target prompts themselves reach {grid_ref:.3f}):
  {grid_on:.3f} → **{verdict(grid_on >= ARITHMETIC_BAR)}**
- re-standardising: grid success {grid_on:.3f} with, {grid_off:.3f} without ({grid_on - grid_off:+.3f}); it raised the
  success of {helped} of {len(per_combo)} combos and lowered it for {hurt}.
"""


# ------------------------------------------------------------------------------------------------- the script

PARTS: dict[str, tuple[str, Callable[[Run, argparse.Namespace], str]]] = {
    "interpolation": ("Interpolation", part_interpolation),
    "arithmetic": ("Latent arithmetic", part_arithmetic),
}
INTRO = """How well moving CrossFlow's text latent z_text moves the image on the shapes model, measured with the pixel
evaluator (crossflow.eval.shapes) and the path read-outs of crossflow.editing.measure. Each part below is written by
its own `--parts` run and states its checkpoint and settings."""
_PART_BLOCK = re.compile(r"<!-- part (\w+) -->\n(.*?)\n<!-- /part \1 -->", re.S)


def previous_parts() -> dict[str, str]:
    """The part blocks of the section as docs/results.md holds it now (kept for the parts not run now)."""
    if not RESULTS.exists():
        return {}
    found = re.search(rf"<!-- BEGIN {SECTION} -->(.*?)<!-- END {SECTION} -->", RESULTS.read_text(), re.S)
    return dict(_PART_BLOCK.findall(found.group(1))) if found else {}


def section_body(parts: dict[str, str]) -> str:
    blocks = [f"<!-- part {name} -->\n{parts[name].strip()}\n<!-- /part {name} -->" for name in PARTS if name in parts]
    return INTRO + "\n\n" + "\n\n".join(blocks)


def checkpoint_label(path: Path) -> str:
    """The path as given, with the training step when the file says (a Lightning checkpoint's global_step)."""
    note = ""
    if path.is_file() and path.suffix == ".ckpt":
        with contextlib.suppress(Exception):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
            ema = any(k.startswith("ema_model.") for k in ckpt.get("state_dict", {})) or "ema_state_dict" in ckpt
            note = f" (step {ckpt['global_step']}{', EMA weights' if ema else ''})"
    return f"`{path}`{note}"


def random_pipeline(seed: int = 0) -> CrossFlowPipeline:
    """A randomly initialised model of the demo's shape (ModelConfig defaults: 32 px pixels, MiniLM, tiny flow)."""
    from crossflow.config import ModelConfig
    from crossflow.models.flow_model import build_model
    from crossflow.models.text_encoder import FrozenTextEncoder

    config = ModelConfig()
    torch.manual_seed(seed)
    text_encoder = FrozenTextEncoder(config.text_encoder)
    model = build_model(config, text_dim=text_encoder.hidden_size)
    with torch.no_grad():  # off the zero init, so the flow shapes the output (as tests/test_inference.py)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return CrossFlowPipeline(config, model.eval(), text_encoder)


@contextlib.contextmanager
def output_dir(args: argparse.Namespace) -> Iterator[Path]:
    if args.out_dir is not None:
        yield Path(args.out_dir)
    elif args.smoke:  # never overwrite the docs' example with a random model's
        with tempfile.TemporaryDirectory(prefix="latent_navigation_") as tmp:
            yield Path(tmp)
    else:
        yield ROOT / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint or saved model folder (CrossFlowPipeline.from_pretrained)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--num-steps", type=int, default=DEFAULT_NUM_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32, faster on these CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=None,
                        help="where the example PNG and GIF go (default docs/; with --smoke a temporary folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="random demo-shaped model, 3 pairs × 5 frames, 10 steps, 2 combos per kind × 2 seeds; "
                             "prints the section instead of writing docs/results.md")
    interp = parser.add_argument_group("interpolation")
    interp.add_argument("--num-pairs", type=int, default=100, help="half colour, half position pairs")
    interp.add_argument("--num-frames", type=int, default=11)
    arith = parser.add_argument_group("arithmetic")
    arith.add_argument("--num-combos", type=int, default=24, help="grid expressions per kind (shape / colour swap)")
    arith.add_argument("--num-seeds", type=int, default=8, help="seeds per grid expression")
    arith.add_argument("--headline-seeds", type=int, default=32, help="seeds for the issue's example")
    args = parser.parse_args()
    if args.smoke:
        args.num_pairs, args.num_frames, args.num_steps = 3, 5, 10
        args.num_combos, args.num_seeds, args.headline_seeds = 2, 2, 2
        pipe, label = random_pipeline(args.seed), "none: random demo-shaped model (--smoke)"
    elif args.ckpt is None:
        parser.error("--ckpt is required (or --smoke)")
    else:
        pipe, label = CrossFlowPipeline.from_pretrained(args.ckpt, device=args.device), checkpoint_label(args.ckpt)
    if args.num_pairs < 1 or args.num_frames < 3:
        parser.error("need at least 1 pair and 3 frames (a Spearman ρ over 2 frames is ±1 by construction)")

    with output_dir(args) as out:
        run = Run(pipe, label, args.num_steps, args.guidance, args.bf16, args.seed, out)
        done = {}
        for name in args.parts:
            done[name] = PARTS[name][1](run, args)
            if not args.smoke:
                print(done[name], flush=True)
    if args.smoke:
        print(section_body(done))
        return
    update_section(SECTION, "Latent navigation: interpolation and arithmetic", COMMAND,
                   section_body({**previous_parts(), **done}))


if __name__ == "__main__":
    main()
