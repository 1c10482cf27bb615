"""Latent navigation on the shapes model: does moving z_text move the image the way the prompts say?

Parts (``--parts``, default all; each is one function below, registered in PARTS, and owns one block of the
"latent_navigation" section of docs/results.md, so running some parts keeps the others' last results):

sigma
    Is there noise in the VE to use? crossflow.editing.latent_ops.sigma_stats over ``--sigma-num`` generator
    captions (all four attributes stated): σ mean/median/min/max, mean |μ|, std of μ, σ / std(μ). Then how far
    apart prompts are: the L2 between the μ's of training-phrasing captions one attribute apart (colour, position,
    shape, size), and of two wordings of the same attributes, against the noise norm ‖σ·ε‖ = √Σσ². Verdict: "σ
    carries usable noise" when the noise norm is >= SIGMA_USABLE (10%) of the median one-attribute distance, else
    "σ is too small" (the fix: an explicit noise term in the path). No images generated.
interpolation
    ``--num-pairs`` prompt pairs that differ in one attribute (half colour, half position; the other attributes
    drawn at random, seeded), ``--num-frames`` frames each from crossflow.editing.latent_ops.interpolate: the
    shared-noise lerp (one ε for every frame, the default) and the naive lerp of two independent draws, with the
    same seed. Per pair and method: the changed attribute's progress (crossflow.editing.measure: the object's
    mean RGB projected from colour A's palette RGB to colour B's, or its centroid projected from position A's
    centre to B's) must rise monotonically, Spearman ρ vs frame index >= 0.9; the evaluator
    (crossflow.eval.shapes.measure) must read the prompts' unchanged attributes on every frame; success = both.
    Smoothness: smoothness_ratio = max / median L2 between adjacent frames (<= 2: no single jump). A third method:
    the shared-noise path with spacing="arc" (α at equal image-space steps). Bars: success >= 90% of pairs,
    smoothness ratio <= 2, shared noise measurably smoother than naive. Writes an example strip
    (docs/interpolation_example.png: the first colour pair and the first position pair, shared, naive, arc; not
    chosen by outcome) and a GIF of the arc-spaced frames (docs/interpolation_example.gif).
arithmetic
    crossflow.editing.latent_ops.arithmetic, re-standardised (the default) and not. The issue's example in its own
    words, "red circle + square - circle", and in the training captions' phrasing (the generator always states
    colour and shape, so the difference term holds a colour fixed: "a red circle + a green square - a green
    circle"), and in the full phrasing for small and large objects ("a small red circle in the center + a small
    green square in the center - a small green circle in the center"), over ``--headline-seeds`` seeds; then a
    grid of ``--num-combos`` shape swaps "a c1 s1 + a c3 s2 - a c3 s1" (-> c1 s2) and as many colour swaps
    "a c1 s1 + a c2 s3 - a c1 s3" (-> c2 s1), ``--num-seeds`` seeds each; both grids again in the full phrasing
    (every term and the target state one size and position). Success = the evaluator reads the target colour and
    shape. Reference: the target prompt itself with the same seeds. Bar: >= 80% of seeds for the issue's example.
sdedit
    Colour edits of the model's own images: ``--edit-num`` seeded prompts (all four attributes), kept when the
    evaluator reads the generated image right; target = the same caption with another colour (cycling through the
    palette). crossflow.editing.sde.edit_sdedit at each of ``--t0s`` with the ODE and the SDE (ρ = DEFAULT_RHO;
    also ρ = 1 at the middle t0), and cycle_edit (source prompt -> target prompt). Success = the evaluator reads
    the new colour; preserved = position, size and shape read as on the source; both; mean centroid shift. A
    computed line says at which t0 the SDE measurably beats the ODE on both (paired sign test), or that it does not.
drag
    crossflow.editing.drag.edit_drag on the model's own images for ``--drag-num`` prompts (the first
    ``--drag-cases`` read right are kept; the issue asks for 100 cases): the object's bounding-box centre to the nominal centre of another position >= 8 px away (seeded), a
    ``--drag-patch`` px patch (clipped inward at the border), at each of ``--drag-t0`` (the bars read the first),
    ODE and SDE; the prompt states no position (``--drag-prompt``). Moved = centroid within 3 px of where the move
    puts it; valid = exactly one clean object (crossflow.editing.measure.count_blobs: no second foreground blob
    over 3 px, and the evaluator reads a shape); colour/shape/size kept. Reference row: the copy alone, no model.
    Bars: SDE moved >= 80%; SDE's valid rate above ODE's. Writes docs/drag_example.png (source, ODE, SDE; 4 cases).
inversion
    The model's own images for ``--invert-num`` seeded prompts (kept when read right), as 8-bit images, inverted to
    z_text with the guided ODE (crossflow.editing.sde.invert_image, Euler and Heun) and integrated forward again:
    latent MSE and whether the evaluator reads the same four attributes (bar: every source). Then an edit at the
    inverted z_text: + μ(caption with another colour) − μ(source caption), forward; colour success, preservation.
    Solvers: explicit Euler and Heun, and the fixed-point inverse of forward Euler's step (regenerated by Euler).

Defaults: 50 Euler steps, guidance 2.5 (crossflow.inference), fp32 (``--bf16`` autocasts; on the 2-core CPU
machines bf16 ran ~7× *slower* than fp32 for this model). interpolation + arithmetic: about 40 minutes on 2 busy
CPU cores. sigma + sdedit + drag: about 6 minutes on one busy core (a 50-step guided batch of 64 images takes
~25 s there; sdedit ≈ 7.4 such batches, drag ≈ 4.7, sigma none), so about 45 minutes for everything.
Run: python bench/latent_navigation.py --ckpt runs/bench_compare/crossflow-tiny/checkpoints/last.ckpt
     [--parts sigma interpolation arithmetic sdedit drag] [--num-pairs 100] [--num-frames 11] [--arc-rounds 5]
     [--num-combos 24] [--num-seeds 8] [--sigma-num 64] [--edit-num 64] [--t0s 0.05 0.1 0.2 0.4 0.6] [--drag-num 250]
     [--drag-cases 100] [--drag-t0 0.6 0.4] [--drag-patch 18] [--drag-prompt none] [--bf16] [--smoke]
``--smoke`` runs a randomly initialised demo-shaped model (no checkpoint) at toy sizes, writes its example
files to a temporary folder and prints the section instead of writing docs/results.md (a random model's images
read right by nothing, so the sdedit and drag parts then edit every source with an object, unfiltered).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import join_parts, section_parts, table, update_section  # noqa: E402
from smoke import output_dir, random_pipeline  # noqa: E402

from crossflow.data.shapes import (  # noqa: E402
    ATTRIBUTES,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    TRAIN_TEMPLATES,
    ShapesGenerator,
    fill_template,
)
from crossflow.editing.drag import drag_state, edit_drag  # noqa: E402
from crossflow.editing.latent_ops import (  # noqa: E402
    DEFAULT_ARC_ROUNDS,
    arithmetic,
    interpolate,
    save_gif,
    sigma_stats,
    smoothness_ratio,
    text_posterior,
)
from crossflow.editing.measure import attribute_progress, centroid, count_blobs, object_mask, spearman  # noqa: E402
from crossflow.editing.sde import (  # noqa: E402
    DEFAULT_FIXED_POINT_DAMPING,
    DEFAULT_FIXED_POINT_ITERS,
    DEFAULT_RESTORE_ITERS,
    DEFAULT_RESTORE_T,
    DEFAULT_RHO,
    INVERSION_SOLVERS,
    cycle_edit,
    edit_sdedit,
    encode_images,
    invert_image,
    latent_posterior,
)
from crossflow.eval.shapes import measure  # noqa: E402
from crossflow.inference import (  # noqa: E402
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    make_grid,
    to_pil,
)

SECTION = "latent_navigation"
COMMAND = "python bench/latent_navigation.py --ckpt {ckpt}{exclude}"  # the parts each state their own checkpoint
# The generator's first training template, "a [{size} ]{color} {shape}[ {pos}]": captions the model was trained
# on ("a small red circle in the center"; "a red circle" when size and position are left out, as 15% each are).
TEMPLATE = TRAIN_TEMPLATES[0]
MONOTONE_RHO = 0.9
SMOOTH_RATIO = 2.0
INTERPOLATION_BAR = 0.9
ARITHMETIC_BAR = 0.8
SIGNIFICANCE = 0.05
HELPER_COLOR = "green"  # the colour held fixed in the training-phrasing version of the example
# σ carries usable noise when the noise's whole norm ‖σ·ε‖ reaches this fraction of the typical μ distance between
# prompts one attribute apart. A generous test (only the noise's component along μ_b − μ_a, far smaller, moves z_text
# towards the other prompt): below a tenth, re-drawing all of ε moves z_text less than a tenth of one attribute step,
# an order of magnitude short, so SDE noise can neither carry an image across an attribute nor repair an edit.
SIGMA_USABLE = 0.1
VALUES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "position": tuple(POSITIONS), "shape": SHAPES,
                                      "size": tuple(SIZES)}
BATCH = 64  # images per model call in the sdedit and drag parts
MOVED_PX = 3.0  # drag: the object's centroid within this many pixels of where the move puts it
DRAG_BAR = 0.8
SPECK = 3  # drag: a valid image has no second foreground blob of more than this many pixels
MIN_DRAG_PX = 8.0  # drag: the target position's centre at least this far from the object's centre


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
                f"{'bf16 autocast' if self.bf16 else 'fp32'}, seed {self.seed}; measured {datetime.date.today()}."
                + ("" if VALUES["color"] == tuple(COLORS) else
                   f" Prompts use only the colours {', '.join(VALUES['color'])} (`--exclude-colors`: the checkpoint"
                   " never saw the others)."))


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: P(at least ``wins`` of wins + losses fair coin flips), ties left out beforehand."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    """All four attributes drawn uniformly (one draw each, in the order color, shape, size, position)."""
    return {name: str(rng.choice(VALUES[name])) for name in ("color", "shape", "size", "position")}


def other_colors(rng: np.random.Generator, attrs: list[dict[str, str]]) -> list[str]:
    """An edit target colour per source: the other colours in a cycle from a seeded start."""
    palette = VALUES["color"]
    shift = int(rng.integers(len(palette) - 1))
    return [[c for c in palette if c != a["color"]][(i + shift) % (len(palette) - 1)] for i, a in enumerate(attrs)]


# ---------------------------------------------------------------------------------------------------- sigma


def part_sigma(run: Run, args: argparse.Namespace) -> str:
    gen = ShapesGenerator(run.seed + 4, image_size=run.pipe.config.codec.image_size, p_omit_size=0.0,
                          p_omit_position=0.0)
    samples = [gen.sample() for _ in range(args.sigma_num)]
    stats = sigma_stats(text_posterior(run.pipe, [s.caption for s in samples]))

    # Prompts one attribute apart, in the fixed training phrasing (TEMPLATE), so only the attribute's word differs;
    # and the generator's own wording against TEMPLATE's for the same attributes (a paraphrase: nothing differs).
    rng = np.random.default_rng(run.seed + 4)
    bases = [s.attributes.to_dict() for s in samples]
    changed = {name: [{**b, name: str(rng.choice([v for v in VALUES[name] if v != b[name]]))} for b in bases]
               for name in ("color", "position", "shape", "size")}
    prompts = [caption(**b) for b in bases] + [caption(**c) for name in changed for c in changed[name]]
    post = text_posterior(run.pipe, prompts + [s.caption for s in samples])
    n = len(bases)
    mu, sigma = post.mu.flatten(1).double(), post.sigma.flatten(1).double()
    base_mu, base_sigma = mu[:n], sigma[:n]
    noise_norm = base_sigma.pow(2).sum(1).sqrt()  # E‖σ·ε‖² = Σσ²: the size of one noise draw, per prompt
    pair_mu = {name: mu[n * (k + 1):n * (k + 2)] for k, name in enumerate(changed)}
    pair_mu["paraphrase"] = mu[n * (len(changed) + 1):]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else v  # noqa: E731  (σ can be far below table's 0.001)
    rows, one_attribute = [], []
    for name, other in pair_mu.items():
        delta = other - base_mu
        dist = delta.norm(dim=1)
        unit = delta / dist.clamp_min(1e-12)[:, None]
        along = (base_sigma.pow(2) * unit.pow(2)).sum(1).sqrt()  # std of σ·ε's component along μ_b − μ_a
        if name != "paraphrase":
            one_attribute.append(dist)
        label = f"one {name} apart" if name != "paraphrase" else "same attributes, generator vs template wording"
        rows.append([label, n, *(fmt(float(v)) for v in (dist.mean(), dist.median(), (noise_norm / dist).median(),
                                                          (along / dist).median()))])
    pooled = torch.cat(one_attribute)
    typical, noise = float(pooled.median()), float(noise_norm.mean())
    ratio = noise / typical if typical > 0 else math.inf
    usable = ratio >= SIGMA_USABLE
    finding = ("σ carries usable noise: re-drawing ε moves z_text a sizeable fraction of the way to a prompt one "
               "attribute away" if usable else
               "σ is too small to carry SDE noise: re-drawing all of ε moves z_text less than a tenth of the way to a "
               "prompt one attribute away, so an SDE that re-draws the VE's noise behaves like the ODE, and an edit "
               "whose repair needs noise gets none (the fix: an explicit noise term in the path)")
    stat_rows = [[key, stats[key]] for key in ("sigma_mean", "sigma_median", "sigma_min", "sigma_max", "mu_abs_mean",
                                               "mu_std", "sigma_over_mu_std")]
    stat_rows.append(["‖σ·ε‖ = √Σσ² (mean over prompts)", noise])
    stat_rows.append(["‖μ‖ (mean over prompts)", float(base_mu.norm(dim=1).mean())])
    return f"""### σ of the VE posterior

{run.settings()}

`sigma_stats` of the VE posterior over {len(samples)} generator captions with all four attributes stated (e.g.
“{samples[0].caption}”), every element of every prompt's μ, σ on the VE's grid ({mu.shape[1]} elements a prompt):

{table(["statistic", "value"], [[k, fmt(v)] for k, v in stat_rows])}

How far apart prompts are: for each of the {n} captions' attributes, the training-phrasing caption (“{prompts[0]}”)
against the same caption with one attribute changed to another value (drawn at random), L2 between the μ's; and,
as a scale for wording alone, the generator's caption against the training-phrasing one for the same attributes.
*Noise / ‖Δμ‖*: the prompt's noise norm √Σσ² over the distance (median over pairs); *along / ‖Δμ‖*: the std of the
noise's component along μ_b − μ_a over the distance (what a draw moves z_text *towards* the other prompt).

{table(["pairs", "n", "mean ‖Δμ‖", "median ‖Δμ‖", "noise / ‖Δμ‖", "along / ‖Δμ‖"], rows)}

Noise norm {noise:.3g} against the median one-attribute distance {typical:.3g}: ratio {ratio:.3g} (threshold
{SIGMA_USABLE:g}: below a tenth even the whole noise vector laid along the direction to the other prompt would cover
under a tenth of one attribute step — seed-to-seed variation an order of magnitude below prompt-to-prompt variation).

- **{finding}.**
"""


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
    values = {"color": list(VALUES["color"]), "position": list(POSITIONS), "shape": list(SHAPES), "size": list(SIZES)}
    pairs = []
    for attribute, count in (("color", n - n // 2), ("position", n // 2)):
        ordered = list(itertools.permutations(values[attribute], 2))
        ordered = [ordered[i] for i in rng.permutation(len(ordered))]
        for i in range(count):
            base = {name: str(rng.choice(values[name])) for name in ("color", "shape", "size", "position")}
            va, vb = ordered[i % len(ordered)]
            pairs.append(Pair(attribute, {**base, attribute: va}, {**base, attribute: vb}))
    return pairs


def score_frames(frames: torch.Tensor, pair: Pair) -> dict[str, Any]:
    """One pair's frames (F, 3, S, S) in [0, 1] -> monotone progress, attributes held, success, smoothness."""
    attr = pair.attribute
    readings = [measure(frame) for frame in frames]
    rho = spearman(attribute_progress(list(frames), attr, pair.a[attr], pair.b[attr]))
    unchanged = [name for name in ATTRIBUTES if name != attr]
    monotone = not math.isnan(rho) and rho >= MONOTONE_RHO
    misread = tuple(name for name in unchanged if any(r[name] != pair.a[name] for r in readings))
    constant = all(r[name] == readings[0][name] for r in readings for name in unchanged)
    return {
        "rho": rho,
        "monotone": monotone,
        "held": not misread,
        "misread": misread,  # the unchanged attributes read wrong on some frame
        # The two prompts' own images hold them: what the model's drawing allows, whatever the path does.
        "ends_held": all(r[name] == pair.a[name] for r in (readings[0], readings[-1]) for name in unchanged),
        "constant": constant,
        "success": monotone and not misread,
        "endpoints": readings[0][attr] == pair.a[attr] and readings[-1][attr] == pair.b[attr],
        "ratio": smoothness_ratio(frames),
    }


def part_interpolation(run: Run, args: argparse.Namespace) -> str:
    pairs = interpolation_pairs(args.num_pairs, run.seed)
    # name -> interpolate(naive=..., spacing=...)
    methods = {"shared-noise lerp": (False, "uniform"), "naive lerp": (True, "uniform"),
               "shared-noise lerp, arc spacing": (False, "arc")}
    scores: dict[str, list[dict]] = {m: [] for m in methods}
    first = {attr: next(i for i, p in enumerate(pairs) if p.attribute == attr) for attr in ("color", "position")
             if any(p.attribute == attr for p in pairs)}
    examples: dict[tuple[int, str], torch.Tensor] = {}
    for index, pair in enumerate(tqdm(pairs, desc="interpolation", unit="pair", disable=not run.progress)):
        for method, (naive, spacing) in methods.items():
            with run.precision():
                # Same seed for every method: the naive lerp's first draw ε_a is the shared-noise ε.
                frames = interpolate(run.pipe, *pair.prompts, num_frames=args.num_frames, naive=naive,
                                     num_steps=run.num_steps, guidance_scale=run.guidance,
                                     generator=run.generator(index), spacing=spacing, arc_rounds=args.arc_rounds)
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
            rates = [float(np.mean([x[key] for x in s]))
                     for key in ("monotone", "held", "success", "constant", "endpoints")]
            rows.append([group, method, len(idx), *rates, float(np.mean(ratios <= SMOOTH_RATIO)),
                         float(np.mean(ratios)), float(np.median(ratios))])
    shared = np.array([x["ratio"] for x in scores["shared-noise lerp"]])
    naive = np.array([x["ratio"] for x in scores["naive lerp"]])
    wins, losses = int((shared < naive).sum()), int((shared > naive).sum())
    p_value = sign_test(wins, losses)
    success = float(np.mean([x["success"] for x in scores["shared-noise lerp"]]))
    arc = np.array([x["ratio"] for x in scores["shared-noise lerp, arc spacing"]])
    arc_success = float(np.mean([x["success"] for x in scores["shared-noise lerp, arc spacing"]]))
    mean_shared, mean_naive, mean_arc = float(np.mean(shared)), float(np.mean(naive)), float(np.mean(arc))
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
pair; and the shared-noise path again with `spacing="arc"`: the {args.num_frames} α's placed at equal image-space
steps (`interpolate_with_alphas`: {args.num_frames} evenly spaced frames, then {args.arc_rounds} round(s) of
re-placing {args.num_frames} α's by cumulative L2 along every frame rendered so far; {1 + args.arc_rounds}× the
renders). *Monotone*: Spearman ρ of the changed attribute's progress (mean object RGB projected onto colour B − colour A
of the palette; mask centroid projected onto centre B − centre A) vs frame index ≥ {MONOTONE_RHO}. *Held*: the
evaluator reads the prompts' three unchanged attributes on every frame. *Success* = monotone and held.
*Constant*: the unchanged attributes read the same on every frame, whatever they read (the path holds them even
where the model draws the prompt wrong; not part of success).
*Endpoints*: the first frame reads A and the last B on the changed attribute (not part of success; shown to
separate the model's accuracy from the path's). *Ratio* = max / median L2 distance between adjacent frames.

{table(["pairs", "method", "n", "monotone", "held", "success", "constant", "endpoints", "ratio ≤ 2", "mean ratio",
        "median ratio"], rows)}

Shared noise gave the lower ratio in {wins} pairs, naive in {losses} (ties {len(pairs) - wins - losses});
one-sided sign test p = {p_value:.2g}.

- success ≥ {INTERPOLATION_BAR:.0%} of pairs (shared-noise lerp, all pairs): {success:.3f} → **{verdict(success >= INTERPOLATION_BAR)}**
- smoothness ratio ≤ {SMOOTH_RATIO:g} (mean over all pairs, shared-noise lerp): {mean_shared:.3f} → **{verdict(mean_shared <= SMOOTH_RATIO)}**
- shared noise measurably smoother than naive (lower mean ratio, {mean_shared:.3f} vs {mean_naive:.3f}, and sign test
  p < {SIGNIFICANCE}): **{verdict(smoother)}**
- with arc spacing (shared noise): success {arc_success:.3f} → **{verdict(arc_success >= INTERPOLATION_BAR)}**;
  smoothness ratio {mean_arc:.3f} (pairs ≤ {SMOOTH_RATIO:g}: {float(np.mean(arc <= SMOOTH_RATIO)):.2f})
  → **{verdict(mean_arc <= SMOOTH_RATIO)}**

Example ({example_pairs}; rows: shared-noise, naive, shared-noise with arc spacing for each; the first pair of each
kind, not chosen by outcome):

![interpolation example]({strip.name}) ![arc-spaced shared-noise interpolation]({gif.name})
"""


def save_examples(run: Run, examples: dict[tuple[int, str], torch.Tensor], first: dict[str, int],
                  num_frames: int) -> tuple[Path, Path]:
    """The strip (rows: each example pair's shared, naive, then arc-spaced shared frames) and a GIF of the arc-spaced
    shared frames side by side."""
    rows = [examples[index, method] for index in first.values()
            for method in ("shared-noise lerp", "naive lerp", "shared-noise lerp, arc spacing")]
    strip = run.out_dir / "interpolation_example.png"
    strip.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(to_pil(torch.cat(rows)), columns=num_frames)
    grid.resize((grid.width * 3, grid.height * 3), resample=0).save(strip)  # 0 = NEAREST: crisp, readable on a page
    shared = [examples[index, "shared-noise lerp, arc spacing"] for index in first.values()]
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


def arithmetic_grid(n_per_kind: int, seed: int, full: bool = False) -> list[Expression]:
    """``n_per_kind`` shape swaps and as many colour swaps, sampled without replacement from all valid combos.

    Shape swap: a c1 s1 + a c3 s2 − a c3 s1 → c1 s2 (c3 ≠ c1, else the sum is the target prompt's μ exactly).
    Colour swap: a c1 s1 + a c2 s3 − a c1 s3 → c2 s1 (s3 ≠ s1, likewise).
    ``full``: every term (and the target) also states one size and one position drawn per expression, the
    phrasing of every training caption that states all four attributes.
    """
    rng = np.random.default_rng(seed + (2 if full else 1))
    colors, out = list(VALUES["color"]), []
    shape_swaps = [(c1, s1, c3, s2) for c1, c3 in itertools.permutations(colors, 2)
                   for s1, s2 in itertools.permutations(SHAPES, 2)]
    colour_swaps = [(c1, s1, c2, s3) for c1, c2 in itertools.permutations(colors, 2)
                    for s1, s3 in itertools.permutations(SHAPES, 2)]
    suffix = ", full phrasing" if full else ""

    def cap(color: str, shape: str, where: tuple[str, str] | tuple[None, None]) -> str:
        return caption(color, shape, *where)

    for kind, combos in (("shape swap", shape_swaps), ("colour swap", colour_swaps)):
        for i in rng.choice(len(combos), min(n_per_kind, len(combos)), replace=False):
            where = (str(rng.choice(list(SIZES))), str(rng.choice(list(POSITIONS)))) if full else (None, None)
            if kind == "shape swap":
                c1, s1, c3, s2 = combos[i]
                terms, target = (cap(c1, s1, where), cap(c3, s2, where), cap(c3, s1, where)), (c1, s2)
            else:
                c1, s1, c2, s3 = combos[i]
                terms, target = (cap(c1, s1, where), cap(c2, s3, where), cap(c1, s3, where)), (c2, s1)
            out.append(Expression(kind + suffix, f"{terms[0]} + {terms[1]} - {terms[2]}", target,
                                  cap(*target, where)))
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
    # The same example in the full phrasing at both sizes: small squares are the model's weak cell (round 4 of
    # docs/experiments.md), so the small row shows that cap and the large one what the arithmetic does without it.
    for size in ("small", "large"):
        red, helper = caption("red", "circle", size, "center"), caption(HELPER_COLOR, "square", size, "center")
        minus = caption(HELPER_COLOR, "circle", size, "center")
        headline.append(Expression(f"full phrasing, {size}", f"{red} + {helper} - {minus}", ("red", "square"),
                                   caption("red", "square", size, "center")))
    first = len(headline)  # the grid's expressions follow the headline ones in `results`
    grid = arithmetic_grid(args.num_combos, run.seed) + arithmetic_grid(args.num_combos, run.seed, full=True)
    jobs = [(e, args.headline_seeds) for e in headline] + [(e, args.num_seeds) for e in grid]
    results: list[dict[str, np.ndarray]] = []
    offset = 10_000  # seeds apart from the interpolation part's
    for expr, seeds in tqdm(jobs, desc="arithmetic", unit="expr", disable=not run.progress):
        results.append(score_expression(run, expr, seeds, offset))
        offset += seeds

    def summary(idx: list[int], variant: str) -> tuple[int, float, float, float]:
        hits = np.concatenate([results[i][variant] for i in idx])
        return len(hits), float(hits[:, 0].mean()), float(hits[:, 1].mean()), float(hits.all(axis=1).mean())

    groups = {f"“{e.expression}”": [i] for i, e in enumerate(headline)}
    for kind in ("shape swap", "colour swap", "shape swap, full phrasing", "colour swap, full phrasing"):
        groups[f"{kind} grid"] = [first + i for i, e in enumerate(grid) if e.kind == kind]
    groups["grid, both kinds"] = [first + i for i, e in enumerate(grid) if "full" not in e.kind]
    groups["grid, both kinds, full phrasing"] = [first + i for i, e in enumerate(grid) if "full" in e.kind]
    rows = [[group, variant, *summary(idx, variant)] for group, idx in groups.items() if idx for variant in VARIANTS]
    head = {i: summary([i], "re-standardised")[3] for i in range(first)}
    head_ref = {i: summary([i], "target prompt")[3] for i in range(first)}
    grid_idx = groups["grid, both kinds"]
    grid_on, grid_off = summary(grid_idx, "re-standardised")[3], summary(grid_idx, "not re-standardised")[3]
    grid_ref = summary(grid_idx, "target prompt")[3]
    full_idx = groups["grid, both kinds, full phrasing"]
    full_on, full_ref = summary(full_idx, "re-standardised")[3], summary(full_idx, "target prompt")[3]
    # Per combo, over the seeds: how often arithmetic lands where the target's own prompt does (both right or both
    # wrong on colour and shape): how much of the gap to the bar is the arithmetic's, how much the model's.
    agree = float(np.mean(np.concatenate([results[i]["re-standardised"].all(axis=1)
                                          == results[i]["target prompt"].all(axis=1) for i in full_idx])))
    per_combo = [(results[i]["re-standardised"].all(axis=1).mean(), results[i]["not re-standardised"].all(axis=1).mean())
                 for i in grid_idx]
    helped, hurt = sum(a > b for a, b in per_combo), sum(a < b for a, b in per_combo)
    examples = [next(e for e in grid if e.kind == k) for k in ("shape swap", "colour swap", "shape swap, full phrasing")
                if any(e.kind == k for e in grid)]
    example_text = "; ".join(f"“{e.expression}” → {' '.join(e.target)}" for e in examples)
    return f"""### Latent arithmetic

{run.settings()}

`arithmetic(pipe, expression)`: Σ wᵢ·μᵢ of the terms' VE means, re-standardised to the first term's per-sample mean
and std (or not), σ of the first term, one noise draw per seed (the draw `pipe([prompt] * n, generator)` makes).
The issue's example over {args.headline_seeds} seeds, in its own words (bare “square” and “circle” are captions the
training data never has: the generator always states colour and shape), in the training phrasing with the colour
of the difference term held at {HELPER_COLOR}, and in the full phrasing (size and position stated in every term) for
small and large objects. The grid: {sum(e.kind == "shape swap" for e in grid)} shape swaps
“a c1 s1 + a c3 s2 - a c3 s1” → c1 s2 and {sum(e.kind == "colour swap" for e in grid)} colour swaps
“a c1 s1 + a c2 s3 - a c1 s3” → c2 s1 (c3 ≠ c1, s3 ≠ s1: never the target prompt's μ itself), sampled from all
combos, {args.num_seeds} seeds each; and the same two grids again in the full training phrasing, every term and the
target stating one size and position drawn per expression (a short “a red square” states neither, which only 15%
of training captions' missing attributes resemble), e.g. {example_text}. *Success*: the evaluator reads the target colour and
shape. *Target prompt*: the target's own caption with the same seeds, the ceiling the model's accuracy sets.

{table(["expressions", "variant", "images", "colour right", "shape right", "success"], rows)}

- “{headline[0].expression}” gives a red square in ≥ {ARITHMETIC_BAR:.0%} of seeds (re-standardised): {head[0]:.3f} → **{verdict(head[0] >= ARITHMETIC_BAR)}**
- the same in the training phrasing (“{headline[1].expression}”): {head[1]:.3f} → **{verdict(head[1] >= ARITHMETIC_BAR)}**
- the same in the full phrasing, small (the target prompt itself: {head_ref[2]:.3f}): {head[2]:.3f} → **{verdict(head[2] >= ARITHMETIC_BAR)}**;
  large (the target prompt itself: {head_ref[3]:.3f}): {head[3]:.3f} → **{verdict(head[3] >= ARITHMETIC_BAR)}**
- grid, both kinds, ≥ {ARITHMETIC_BAR:.0%} (the same bar over the grid; the target prompts themselves reach {grid_ref:.3f}):
  {grid_on:.3f} → **{verdict(grid_on >= ARITHMETIC_BAR)}**
- grid in the full phrasing, ≥ {ARITHMETIC_BAR:.0%} (the target prompts themselves reach {full_ref:.3f}):
  {full_on:.3f} → **{verdict(full_on >= ARITHMETIC_BAR)}**; arithmetic and the target's own prompt agree (both
  right or both wrong) on {agree:.0%} of those images
- re-standardising: grid success {grid_on:.3f} with, {grid_off:.3f} without ({grid_on - grid_off:+.3f}); it raised the
  success of {helped} of {len(per_combo)} combos and lowered it for {hurt}.
"""


# ------------------------------------------------------------------------------------------ model-made sources


@dataclass
class Sources:
    """Images the model generated for its own prompts: the edit sources of the sdedit and drag parts."""

    attrs: list[dict[str, str]]
    images: torch.Tensor  # (N, 3, S, S) in [0, 1], every prompt's image
    readings: list[dict[str, str]]
    kept: list[int]  # the sources edited: those the evaluator reads as their prompt says
    note: str  # how many were kept, in words


def decode(run: Run, latents: torch.Tensor) -> torch.Tensor:
    with run.precision():
        return run.pipe.codec.decode(latents).float().cpu()


def model_sources(run: Run, attrs: list[dict[str, str]], offset: int, smoke: bool, desc: str,
                  max_kept: int | None = None) -> Sources:
    """Generate ``caption(**a)`` for every a (batches of BATCH, seeds offset + batch start) and keep the images the
    evaluator reads right on all four attributes (the first ``max_kept`` of them when given). With ``--smoke`` (a random model reads nothing right) every image
    with an object is kept instead, so the edit code still runs."""
    prompts = [caption(**a) for a in attrs]
    images = []
    for start in tqdm(range(0, len(prompts), BATCH), desc=f"{desc} sources", unit="batch", disable=not run.progress):
        with run.precision():
            images.append(run.pipe(prompts[start:start + BATCH], num_steps=run.num_steps, guidance_scale=run.guidance,
                                   generator=run.generator(offset + start), output_type="pt"))
    stacked = torch.cat(images)
    readings = [measure(image) for image in stacked]
    kept = [i for i, (r, a) in enumerate(zip(readings, attrs, strict=True)) if r == a]
    note = f"{len(kept)} of {len(attrs)} generated sources read right on all four attributes and kept"
    if max_kept is not None and len(kept) > max_kept:
        note = (f"{len(kept)} of {len(attrs)} generated sources read right on all four attributes; "
                f"the first {max_kept} kept")
        kept = kept[:max_kept]
    if smoke and not kept:
        kept = [i for i, r in enumerate(readings) if r["shape"] != "none"]
        note = f"smoke: none read right, the {len(kept)} of {len(attrs)} with an object kept unfiltered"
    return Sources(attrs, stacked, readings, kept, note)


def source_latents(run: Run, images: torch.Tensor) -> torch.Tensor:
    """The sources as the editor sees a user's image: 8-bit PIL encoded by the codec (encode_images)."""
    return torch.cat([encode_images(run.pipe, to_pil(images[i:i + BATCH])) for i in range(0, len(images), BATCH)])


def in_batches(run: Run, n: int, offset: int, edit: Callable[[slice, torch.Generator], torch.Tensor],
               desc: str) -> torch.Tensor:
    """Run ``edit(batch slice, generator) -> latents`` over n items in batches of BATCH; decoded images (n, 3, S, S).
    Batch b uses the seed offset + b·BATCH, so two methods run with one offset share each batch's first draws."""
    out = []
    for start in tqdm(range(0, n, BATCH), desc=desc, unit="batch", disable=not run.progress, leave=False):
        with run.precision():
            latents = edit(slice(start, min(start + BATCH, n)), run.generator(offset + start))
        out.append(decode(run, latents))
    return torch.cat(out)


def paired_line(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> tuple[str, int]:
    """Compare two paired boolean outcomes: '+1' a measurably better (higher rate, sign test p < SIGNIFICANCE),
    '-1' b measurably better, '0' neither; with the counts in words."""
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    p_a, p_b = sign_test(wins, losses), sign_test(losses, wins)
    side = 1 if a.mean() > b.mean() and p_a < SIGNIFICANCE else -1 if b.mean() > a.mean() and p_b < SIGNIFICANCE else 0
    text = (f"{name_a} {a.mean():.3f} vs {name_b} {b.mean():.3f}; {name_a} alone in {wins}, {name_b} alone in "
            f"{losses} (one-sided sign test p = {min(p_a, p_b):.2g})")
    return text, side


# -------------------------------------------------------------------------------------------------- sdedit


def part_sdedit(run: Run, args: argparse.Namespace) -> str:
    rng = np.random.default_rng(run.seed + 2)
    attrs = [random_attributes(rng) for _ in range(args.edit_num)]
    targets = other_colors(rng, attrs)
    src = model_sources(run, attrs, 20_000, args.smoke, "sdedit")
    kept = src.kept
    if not kept:
        return f"### SDEdit: colour edits\n\n{run.settings()}\n\n{src.note}: nothing to edit, not measured.\n"
    latents = source_latents(run, src.images[kept])
    source_prompts = [caption(**attrs[i]) for i in kept]
    target_prompts = [caption(**{**attrs[i], "color": targets[i]}) for i in kept]
    source_read = [src.readings[i] for i in kept]
    source_xy = np.stack([centroid(src.images[i]) for i in kept])
    mid = args.t0s[len(args.t0s) // 2]

    # (label, method, t0, rho, seed offset): ODE and SDE at one t0 share the offset, so the same z_text_new.
    configs = [(m, m, t0, 0.0 if m == "ode" else DEFAULT_RHO, 21_000 + 1000 * k)
               for k, t0 in enumerate(args.t0s) for m in ("ode", "sde")]
    configs.append(("sde", "sde", mid, 1.0, 21_000 + 1000 * args.t0s.index(mid)))
    outcomes: dict[tuple[str, float, float], dict[str, np.ndarray]] = {}

    def score(images: torch.Tensor) -> dict[str, np.ndarray]:
        readings = [measure(image) for image in images]
        shift_px = np.linalg.norm(np.stack([centroid(image) for image in images]) - source_xy, axis=1)
        kept_attr = {k: np.array([r[k] == s[k] for r, s in zip(readings, source_read, strict=True)])
                     for k in ("position", "size", "shape")}
        success = np.array([r["color"] == targets[i] for r, i in zip(readings, kept, strict=True)])
        preserved = kept_attr["position"] & kept_attr["size"] & kept_attr["shape"]
        return {"success": success, **kept_attr, "preserved": preserved, "both": success & preserved,
                "shift": shift_px}

    for label, method, t0, rho, offset in tqdm(configs, desc="sdedit", unit="config", disable=not run.progress):
        images = in_batches(run, len(kept), offset, lambda sl, g, m=method, t=t0, r=rho: edit_sdedit(
            run.pipe, latents[sl], target_prompts[sl], t, m, r, run.guidance, g, run.num_steps), "sdedit batches")
        outcomes[label, t0, rho] = score(images)
    cycle_note = ""
    try:
        images = in_batches(run, len(kept), 29_000, lambda sl, g: cycle_edit(
            run.pipe, latents[sl], source_prompts[sl], target_prompts[sl], DEFAULT_RHO, run.num_steps, run.guidance,
            g), "cycle edit batches")
        outcomes["cycle", 0.0, DEFAULT_RHO] = score(images)
    except Exception as err:  # e.g. σ = 0 somewhere: the cycle code divides by it
        cycle_note = f"\nThe cycle-consistent edit failed: {type(err).__name__}: {err}\n"

    rows = []
    for (label, t0, rho), o in outcomes.items():
        shifts = o["shift"][np.isfinite(o["shift"])]
        rows.append([label, "encode from 0" if label == "cycle" else f"{t0:g}", f"{rho:g}", len(o["both"]),
                     *(float(o[k].mean()) for k in ("success", "position", "size", "shape", "preserved", "both")),
                     float(shifts.mean()) if len(shifts) else math.nan, int(len(o["shift"]) - len(shifts))])
    comparisons, better, worse = [], [], []
    for t0 in args.t0s:
        text, side = paired_line("SDE", outcomes["sde", t0, DEFAULT_RHO]["both"], "ODE",
                                 outcomes["ode", t0, 0.0]["both"])
        comparisons.append(f"  - t0 = {t0:g}: {text}")
        (better if side > 0 else worse if side < 0 else []).append(f"{t0:g}")
    summary = (f"SDE (ρ = {DEFAULT_RHO:g}) beats ODE on success and preservation together at t0 = "
               f"{', '.join(better)}" if better else
               f"SDE (ρ = {DEFAULT_RHO:g}) does not measurably beat ODE on success and preservation together at any t0")
    if worse:
        summary += f"; ODE beats SDE at t0 = {', '.join(worse)}"
    others = [f"{t0:g}" for t0 in args.t0s if f"{t0:g}" not in better + worse]
    if others and (better or worse):
        summary += f"; no measurable difference at t0 = {', '.join(others)}"
    best = max(outcomes.items(), key=lambda kv: kv[1]["both"].mean())
    (b_label, b_t0, b_rho), b_out = best
    best_text = (f"cycle edit (ρ = {b_rho:g})" if b_label == "cycle" else f"{b_label} t0 = {b_t0:g}, ρ = {b_rho:g}")
    return f"""### SDEdit: colour edits

{run.settings()}

Sources: the model's own images for {len(attrs)} seeded prompts in the training phrasing with all four attributes
stated; {src.note}.
Each is edited to the same caption with another colour (the other six in a cycle from a seeded start:
“{source_prompts[0]}” → “{target_prompts[0]}”), the source entering as its 8-bit image (`encode_images`).
`edit_sdedit` for each t0 (0 = generate anew from the target prompt, 1 = the source untouched) with the ODE
(Euler) and the SDE re-drawing a fraction ρ of the VE noise per step; ODE and SDE at one t0 start from the same
z_text draw. *Cycle*: `cycle_edit` (encode the source under its own prompt with ρ = {DEFAULT_RHO:g} from t = 0, replay
under the target's). *Success*: the evaluator reads the target colour. *Preserved*: it reads the source's position,
size and shape. *Both*: success and preserved. *Shift*: mean distance in px between the edited and the source
object's centroids (over the images with an object; *blank*: those without).

{table(["method", "t0", "ρ", "n", "success", "position kept", "size kept", "shape kept", "preserved", "both", "shift px", "blank"], rows)}
{cycle_note}
SDE vs ODE on *both*, per source (paired):

{chr(10).join(comparisons)}

- **{summary}** (measurably: higher rate and one-sided sign test p < {SIGNIFICANCE}).
- best row on *both*: {best_text}, {float(b_out['both'].mean()):.3f}.
"""


# ---------------------------------------------------------------------------------------------------- drag


def box_point(center: np.ndarray, patch: int, size: int) -> tuple[np.ndarray, bool]:
    """The integer (x, y) whose patch × patch box (``drag._box``: columns x − patch//2 … ) is centred nearest
    ``center`` (continuous, pixel (i, j) spans [j, j+1) × [i, i+1)), shifted inward when the box would leave the
    size × size latent; and whether it was shifted."""
    half = patch // 2
    point = np.round(np.asarray(center, float) + half - patch / 2).astype(int)
    clipped = np.clip(point, half, size - patch + half)
    return clipped, bool((clipped != point).any())


def box_center(image: torch.Tensor) -> np.ndarray:
    """Centre (x, y) of the object's bounding box: the generator's drawn centre for all three shapes (the
    centroid of a triangle sits a sixth of its height lower, and a box centred there would cut off its apex)."""
    rows, cols = np.nonzero(object_mask(image))
    return np.array([(cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2])


def part_drag(run: Run, args: argparse.Namespace) -> str:
    image_size = run.pipe.config.codec.image_size
    latent_size = run.pipe.config.latent_shape[-1]
    scale = latent_size / image_size  # latent pixels per image pixel (1 for the pixel codec)
    patch = max(1, round(args.drag_patch * scale))
    rng = np.random.default_rng(run.seed + 3)
    attrs = [random_attributes(rng) for _ in range(args.drag_num)]
    picks = rng.random(args.drag_num)  # drawn up front: the target choice does not shift the stream
    src = model_sources(run, attrs, 30_000, args.smoke, "drag", max_kept=args.drag_cases)
    kept = [i for i in src.kept if object_mask(src.images[i]).any()]
    if not kept:
        return f"### Drag editing\n\n{run.settings()}\n\n{src.note}: nothing to drag, not measured.\n"

    sources, targets, goals, target_pos, shifted, prompts = [], [], [], [], 0, []
    for i in kept:
        center = box_center(src.images[i])
        far = [p for p in POSITIONS if np.hypot(*(np.array(POSITIONS[p]) * image_size - center)) >= MIN_DRAG_PX]
        far = far or [p for p in POSITIONS if p != attrs[i]["position"]]
        pos = far[int(picks[i] * len(far))]
        s_pt, s_moved = box_point(center * scale, patch, latent_size)
        t_pt, t_moved = box_point(np.array(POSITIONS[pos]) * image_size * scale, patch, latent_size)
        shifted += s_moved or t_moved
        sources.append(tuple(int(v) for v in s_pt))
        targets.append(tuple(int(v) for v in t_pt))
        # A perfect drag moves the object's pixels by the points' offset: its centroid lands there.
        goals.append(centroid(src.images[i]) + (t_pt - s_pt) / scale)
        target_pos.append(pos)
        stated = {**attrs[i], "position": {"none": None, "source": attrs[i]["position"], "target": pos}[args.drag_prompt]}
        prompts.append(caption(**stated))
    goals_arr = np.stack(goals)
    nominal = np.stack([np.array(POSITIONS[p]) * image_size for p in target_pos])
    latents = source_latents(run, src.images[kept])
    source_read = [src.readings[i] for i in kept]

    def score(images: torch.Tensor) -> dict[str, np.ndarray]:
        readings = [measure(image) for image in images]
        dist = np.linalg.norm(np.stack([centroid(image) for image in images]) - goals_arr, axis=1)
        out = {
            "moved": np.nan_to_num(dist, nan=np.inf) <= MOVED_PX,
            "valid": np.array([count_blobs(image, SPECK + 1) == 1 and r["shape"] != "none"
                               for image, r in zip(images, readings, strict=True)]),
            **{k: np.array([r[k] == s[k] for r, s in zip(readings, source_read, strict=True)])
               for k in ("color", "shape", "size")},
            "position": np.array([r["position"] == p for r, p in zip(readings, target_pos, strict=True)]),
            "dist": dist,
        }
        out["all"] = out["moved"] & out["valid"] & out["color"] & out["shape"]
        return out

    outcomes: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    # Reference: the copy and fill alone, no model: drag_state with z_text = 0 and σ_min = 0 is t·(edited latent).
    zero = torch.zeros_like(latents)
    copied = drag_state(latents, zero, zero, sources, targets, 0.5, patch, 0.0) / 0.5
    outcomes["copy (no model)", math.nan] = score(decode(run, copied))
    examples: dict[str, torch.Tensor] = {}
    for k, t0 in enumerate(args.drag_t0):
        for method in ("ode", "sde"):
            images = in_batches(run, len(kept), 31_000 + 1000 * k, lambda sl, g, m=method, t=t0: edit_drag(
                run.pipe, latents[sl], prompts[sl], sources[sl], targets[sl], t, patch, m, DEFAULT_RHO, run.guidance,
                run.num_steps, g), f"drag {method} t0={t0:g}")
            outcomes[method, t0] = score(images)
            if k == 0:
                examples[method] = images[:4]
    source_valid = float(np.mean([count_blobs(src.images[i], SPECK + 1) == 1 for i in kept]))

    rows = []
    for (method, t0), o in outcomes.items():
        finite = o["dist"][np.isfinite(o["dist"])]
        rows.append([method, "–" if math.isnan(t0) else f"{t0:g}", len(o["moved"]), float(o["moved"].mean()),
                     float(np.median(finite)) if len(finite) else math.nan,
                     *(float(o[k].mean()) for k in ("valid", "color", "shape", "size", "position", "all"))])
    t0 = args.drag_t0[0]
    sde, ode = outcomes["sde", t0], outcomes["ode", t0]
    moved = float(sde["moved"].mean())
    valid_text, valid_side = paired_line("SDE", sde["valid"], "ODE", ode["valid"])
    sde_valid, ode_valid = float(sde["valid"].mean()), float(ode["valid"].mean())
    goal_offset = float(np.median(np.linalg.norm(goals_arr - nominal, axis=1)))
    n_note = "" if len(kept) >= 100 else f" (the issue asks for 100 cases; {len(kept)} kept)"

    strip = run.out_dir / "drag_example.png"
    strip.parent.mkdir(parents=True, exist_ok=True)
    cases = min(4, len(kept))
    cells = torch.stack([im for c in range(cases) for im in (src.images[kept[c]], examples["ode"][c],
                                                              examples["sde"][c])])
    grid = make_grid(to_pil(cells), columns=3)
    grid.resize((grid.width * 3, grid.height * 3), resample=0).save(strip)  # 0 = NEAREST
    print(f"wrote {strip}")
    example_text = "; ".join(f"{attrs[kept[c]]['position']} → {target_pos[c]}" for c in range(cases))
    prompt_text = {"none": "the source's caption with the position left out (as 15% of training captions are: the "
                           "drag, not the prompt, says where)",
                   "source": "the source's own caption (it still names the old position)",
                   "target": "the source's caption with the target position (the prompt helps the drag)"}[args.drag_prompt]
    return f"""### Drag editing

{run.settings()}

Sources: the model's own images for {len(attrs)} seeded prompts (training phrasing, all four attributes stated);
{src.note}{n_note}.
Each object is dragged from the centre of its bounding box (the generator's drawn centre; a triangle's centroid
sits lower and a box centred there would cut off its apex) to the nominal centre of another position at least
{MIN_DRAG_PX:g} px away (seeded choice), with a {patch} × {patch} latent patch ({args.drag_patch} px; a large shape spans
{2 * SIZES['large'] * image_size:.1f} px). {shifted} of {len(kept)} drags had a box that would leave the image and were
shifted inward (the point moved; the box still reaches the border, so it still holds the object).
Prompt: {prompt_text}.
`edit_drag` (copy the patch at t0, re-noise the source box over a ring-mean fill, complete) with the ODE and the
SDE (ρ = {DEFAULT_RHO:g}); both start from the same draws. *Moved*: the edited object's centroid within {MOVED_PX:g} px of
where a perfect move puts it (the source centroid plus the drag offset; median {goal_offset:.2f} px from the target
position's nominal centre); *dist*: median of that distance. *Valid*: exactly one clean object — the
evaluator reads a shape and no foreground blob besides the object has more than {SPECK} px (`count_blobs`, the
evaluator's own threshold and 4-connectivity; the sources themselves: {source_valid:.3f}). *Colour/shape/size
kept*: read as on the source. *Position*: the evaluator reads the target position. *All*: moved, valid, colour and
shape kept. *Copy (no model)*: the edited state's image latent itself (copy and ring-mean fill, nothing completed):
what a perfect move scores, a check of the geometry and of the fill.

{table(["method", "t0", "n", "moved", "dist px", "valid", "colour kept", "shape kept", "size kept", "position", "all"], rows)}

At t0 = {t0:g}:

- SDE moves the object to within {MOVED_PX:g} px in ≥ {DRAG_BAR:.0%} of cases: {moved:.3f} over {len(kept)} → **{verdict(moved >= DRAG_BAR)}**
- SDE's rate of valid images beats ODE's: {sde_valid:.3f} vs {ode_valid:.3f} → **{verdict(sde_valid > ode_valid)}**
  ({valid_text}; {"measurably" if valid_side > 0 else "not measurably"} better at p < {SIGNIFICANCE})

Example (columns: source, ODE, SDE at t0 = {t0:g}; the first {cases} sources, not chosen by outcome: {example_text}):

![drag example]({strip.name})
"""


# ------------------------------------------------------------------------------------------------- the script

def part_inversion(run: Run, args: argparse.Namespace) -> str:
    rng = np.random.default_rng(run.seed + 4)
    attrs = [random_attributes(rng) for _ in range(args.invert_num)]
    targets = other_colors(rng, attrs)
    src = model_sources(run, attrs, 40_000, args.smoke, "inversion")
    kept = src.kept
    if not kept:
        return f"### ODE inversion\n\n{run.settings()}\n\n{src.note}: nothing to invert, not measured.\n"
    latents = source_latents(run, src.images[kept])
    source_read = [src.readings[i] for i in kept]
    mu_src, _ = latent_posterior(run.pipe, [caption(**attrs[i]) for i in kept])
    mu_new, _ = latent_posterior(run.pipe, [caption(**{**attrs[i], "color": targets[i]}) for i in kept])
    rows, unchanged_rate = [], {}

    @torch.no_grad()
    def forward(z: torch.Tensor, solver: str, guidance: float) -> torch.Tensor:
        with run.pipe.eval_mode():
            return run.pipe.generate_latents(z, run.num_steps, guidance, solver)  # type: ignore[arg-type]

    # (inversion solver, guidance of inversion and regeneration): invert_image's default guidance 1 for each
    # solver, and the fixed-point inverse of the guided flow the sources were sampled with.
    # The last row inverts the 8-bit image as it is (restore=False): what the restoration of clipped pixels is for.
    configs = [(label, 1.0, True) for label in INVERSION_SOLVERS] + [("fixed-point", run.guidance, True),
                                                                      ("fixed-point", 1.0, False)]
    for label, w, restore in configs:
        with run.precision():
            z_text = torch.cat([invert_image(run.pipe, latents[i:i + BATCH], run.num_steps, w, label,  # type: ignore[arg-type]
                                             restore=restore)
                                for i in range(0, len(kept), BATCH)])
        solver = "heun" if label == "heun" else "euler"  # the forward solver: fixed-point inverts Euler's step
        images = in_batches(run, len(kept), 0, lambda sl, g, z=z_text, sv=solver, w=w: forward(z[sl], sv, w),
                            "regenerate")
        mse = float((torch.cat([encode_images(run.pipe, to_pil(images[i:i + BATCH]))
                                for i in range(0, len(kept), BATCH)]) - latents).pow(2).mean())
        readings = [measure(image) for image in images]
        same = np.array([r == s for r, s in zip(readings, source_read, strict=True)])
        unchanged_rate[label, w, restore] = float(same.mean())
        # Edit at the inverted z_text: move it by the colour's μ difference and integrate forward.
        edited = in_batches(run, len(kept), 0, lambda sl, g, z=z_text, sv=solver, w=w: forward(
            z[sl] + mu_new[sl] - mu_src[sl], sv, w), "edit")
        er = [measure(image) for image in edited]
        success = np.array([r["color"] == targets[i] for r, i in zip(er, kept, strict=True)])
        preserved = np.array([all(r[k] == s[k] for k in ("position", "size", "shape"))
                              for r, s in zip(er, source_read, strict=True)])
        rows.append([label, f"{w:g}", "yes" if restore else "no", run.num_steps, len(kept), f"{mse:.2e}",
                     float(same.mean()), float(success.mean()), float(preserved.mean()),
                     float((success & preserved).mean())])
    return f"""### ODE inversion

{run.settings()}

Sources: the model's own images for {args.invert_num} seeded prompts in the training phrasing with all four
attributes stated; {src.note}. Each enters as its 8-bit image (`encode_images`); *restore clipped*: the pixels the
file clipped to the range's bounds first get the model's own values beyond them (`restore_clipped`, ẑ_image at
t = {DEFAULT_RESTORE_T}, {DEFAULT_RESTORE_ITERS} iterations; `invert_image`'s default). It is then integrated back to t = 0
with the ODE (`invert_image`, {run.num_steps} steps; guidance 1, its default, or the sources' {run.guidance}) and forward
again with the same guidance: *euler* and
*heun* invert with explicit steps and regenerate with the same solver; *fixed-point* solves each step as the exact
inverse of forward Euler's ({DEFAULT_FIXED_POINT_ITERS} damped iterations from β = {DEFAULT_FIXED_POINT_DAMPING}, halved per sample
where the residual does not fall) and
regenerates with Euler, the sampler's own. *Latent MSE*: regenerated vs source image latent (after 8-bit rounding of the
regenerated image). *Unchanged*: the evaluator reads the regenerated image's four attributes as on the source.
*Edit*: the inverted z_text moved by μ(target) − μ(source), the VE means of the source caption and of the same
caption with another colour, then integrated forward; *success*: the evaluator reads the new colour;
*preserved*: position, size and shape as on the source.

{table(["solver", "guidance", "restore clipped", "steps", "n", "latent MSE", "unchanged", "edit success", "edit preserved", "edit both"], rows)}

- ODE inversion + regeneration of a generated shapes image keeps the evaluator's attributes (bar: every source,
  allowing one in a hundred), guidance 1: fixed-point {unchanged_rate["fixed-point", 1.0, True]:.3f} →
  **{verdict(unchanged_rate["fixed-point", 1.0, True] >= 0.99)}**; explicit Euler {unchanged_rate["euler", 1.0, True]:.3f},
  Heun {unchanged_rate["heun", 1.0, True]:.3f}; fixed-point at guidance {run.guidance:g}:
  {unchanged_rate["fixed-point", run.guidance, True]:.3f}; fixed-point on the clipped image as it is:
  {unchanged_rate["fixed-point", 1.0, False]:.3f}
"""


PARTS: dict[str, tuple[str, Callable[[Run, argparse.Namespace], str]]] = {
    "sigma": ("σ of the VE posterior", part_sigma),
    "interpolation": ("Interpolation", part_interpolation),
    "arithmetic": ("Latent arithmetic", part_arithmetic),
    "sdedit": ("SDEdit: colour edits", part_sdedit),
    "drag": ("Drag editing", part_drag),
    "inversion": ("ODE inversion", part_inversion),
}
INTRO = """How well moving CrossFlow's text latent z_text moves the image on the shapes model, measured with the pixel
evaluator (crossflow.eval.shapes) and the path read-outs of crossflow.editing.measure. Each part below is written by
its own `--parts` run and states its checkpoint and settings."""


def section_body(parts: dict[str, str]) -> str:
    return INTRO + "\n\n" + join_parts(list(PARTS), parts)


def checkpoint_label(path: Path) -> str:
    """The path as given, with the training step when the file says (a Lightning checkpoint's global_step)."""
    note = ""
    if path.is_file() and path.suffix == ".ckpt":
        with contextlib.suppress(Exception):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
            ema = any(k.startswith("ema_model.") for k in ckpt.get("state_dict", {})) or "ema_state_dict" in ckpt
            note = f" (step {ckpt['global_step']}{', EMA weights' if ema else ''})"
    return f"`{path}`{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint or saved model folder (CrossFlowPipeline.from_pretrained)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--num-steps", type=int, default=DEFAULT_NUM_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32, faster on these CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude-colors", nargs="+", default=[],
                        help="palette colours no prompt uses (for a model trained without them, e.g. magenta)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=None,
                        help="where the example PNG and GIF go (default docs/; with --smoke a temporary folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="random demo-shaped model, 3 pairs × 5 frames, 10 steps, 2 combos per kind × 2 seeds, "
                             "8 σ prompts, 4 edit and 4 drag sources, t0s 0.4 0.8; prints the section instead of "
                             "writing docs/results.md")
    sig = parser.add_argument_group("sigma")
    sig.add_argument("--sigma-num", type=int, default=64, help="generator captions (all attributes stated)")
    interp = parser.add_argument_group("interpolation")
    interp.add_argument("--num-pairs", type=int, default=100, help="half colour, half position pairs")
    interp.add_argument("--num-frames", type=int, default=11)
    interp.add_argument("--arc-rounds", type=int, default=DEFAULT_ARC_ROUNDS,
                        help="rounds of re-placing the frames at equal image-space steps (the arc-spaced method)")
    arith = parser.add_argument_group("arithmetic")
    arith.add_argument("--num-combos", type=int, default=24, help="grid expressions per kind (shape / colour swap)")
    arith.add_argument("--num-seeds", type=int, default=8, help="seeds per grid expression")
    arith.add_argument("--headline-seeds", type=int, default=32, help="seeds for the issue's example")
    sded = parser.add_argument_group("sdedit")
    sded.add_argument("--edit-num", type=int, default=64, help="prompts whose generated images are the sources")
    sded.add_argument("--t0s", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4, 0.6],
                      help="SDEdit start times (the SDE with ρ = 1 also runs at the middle one)")
    inv = parser.add_argument_group("inversion")
    inv.add_argument("--invert-num", type=int, default=64, help="prompts whose generated images are inverted")
    drag = parser.add_argument_group("drag")
    drag.add_argument("--drag-num", type=int, default=250, help="prompts whose generated images are the sources")
    drag.add_argument("--drag-cases", type=int, default=100, help="drag the first this many sources read right")
    drag.add_argument("--drag-t0", type=float, nargs="+", default=[0.6, 0.4], help="t0s; the bars read the first")
    drag.add_argument("--drag-patch", type=int, default=18,
                      help="patch side in image px (18 covers a large shape, 16.6 px, with the point rounded)")
    drag.add_argument("--drag-prompt", choices=("none", "source", "target"), default="none",
                      help="which position the completing prompt states: none (default), the source's, the target's")
    args = parser.parse_args()
    if args.exclude_colors:
        unknown = sorted(set(args.exclude_colors) - set(COLORS))
        if unknown or len(COLORS) - len(set(args.exclude_colors)) < 3:
            parser.error(f"--exclude-colors takes palette colours ({', '.join(COLORS)}) and leaves at least 3; "
                         f"got {', '.join(args.exclude_colors)}")
        VALUES["color"] = tuple(c for c in COLORS if c not in args.exclude_colors)  # every part draws from VALUES
    if args.smoke:
        args.num_pairs, args.num_frames, args.num_steps = 3, 5, 10
        args.num_combos, args.num_seeds, args.headline_seeds = 2, 2, 2
        args.sigma_num, args.edit_num, args.drag_num, args.t0s, args.invert_num = 8, 4, 4, [0.4, 0.8], 4
        pipe, label = random_pipeline(args.seed), "none: random demo-shaped model (--smoke)"
    elif args.ckpt is None:
        parser.error("--ckpt is required (or --smoke)")
    else:
        pipe, label = CrossFlowPipeline.from_pretrained(args.ckpt, device=args.device), checkpoint_label(args.ckpt)
    if args.num_pairs < 1 or args.num_frames < 3:
        parser.error("need at least 1 pair and 3 frames (a Spearman ρ over 2 frames is ±1 by construction)")
    if args.arc_rounds < 0:
        parser.error("--arc-rounds must be at least 0")
    if min(args.sigma_num, args.edit_num, args.drag_num) < 1:
        parser.error("--sigma-num, --edit-num and --drag-num must be at least 1")
    if any(not 0.0 <= t < 1.0 for t in args.t0s + args.drag_t0):
        parser.error("--t0s and --drag-t0 must lie in [0, 1)")
    if not 1 <= args.drag_patch <= pipe.config.codec.image_size:
        parser.error(f"--drag-patch must be between 1 and the image size {pipe.config.codec.image_size}")

    with output_dir(args.out_dir, args.smoke, "latent_navigation_") as out:
        run = Run(pipe, label, args.num_steps, args.guidance, args.bf16, args.seed, out)
        done = {}
        for name in args.parts:
            done[name] = PARTS[name][1](run, args)
            if not args.smoke:
                print(done[name], flush=True)
    if args.smoke:
        print(section_body(done))
        return
    exclude = f" --exclude-colors {' '.join(args.exclude_colors)}" if args.exclude_colors else ""
    update_section(SECTION, "Latent navigation: σ, interpolation, arithmetic, SDEdit, drag and inversion",
                   COMMAND.format(ckpt=args.ckpt, exclude=exclude),
                   section_body({**section_parts(SECTION), **done}))


if __name__ == "__main__":
    main()
