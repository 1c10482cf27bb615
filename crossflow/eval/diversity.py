"""Seed-to-seed variety for fixed prompts: does the model still vary what the prompt leaves open?

A shapes caption that states colour and shape but not position says "any position": the training data drew
the position uniformly for such captions, so a faithful model must draw several positions across seeds.
Guidance (and a near-deterministic text latent: the VE's σ is small) can collapse that variety while accuracy
on the stated attributes still looks fine; this module measures it.

    prompts = diversity_prompts(16, seed=1234)                       # state colour + shape, omit position + size
    result = seed_diversity(pipe, prompts, num_seeds=8, guidance_scale=2.5)
    result["omitted"]["position"]["entropy_mean"], result["reference"]["omitted"]["position"]["entropy_mean"]

Numbers, per attribute a prompt omits, over the prompts that omit it (k = num_seeds images per prompt, each
measured by the pixel evaluator, crossflow/eval/shapes.py; images with no object measured are left out of the
value histograms and counted in ``blank_rate``):

- ``distinct_mean``: mean over prompts of the number of distinct measured values among the k images.
- ``entropy_mean``: mean over prompts of :func:`value_entropy` of those values: the Shannon entropy of their
  histogram divided by log(number of possible values) (5 positions, 2 sizes), so 0 = all one value and
  1 = uniform over every possible value.
- ``collapse_rate``: the fraction of prompts whose k images all share one value (or have none measured).

A generator that ignores its noise draws the same image for every seed: distinct 1, entropy 0, collapse 1.
The data distribution does not score distinct 5 / entropy 1: k draws from a uniform distribution repeat
values by chance (k = 8: positions ≈ 4.2 distinct, entropy ≈ 0.81, collapse 0; sizes ≈ 2.0, ≈ 0.90,
≈ 0.008). So the result carries a ``reference``: the same numbers for images drawn by the shapes generator
itself, the omitted attributes drawn as the dataset draws them (uniformly over the allowed combinations that
match the stated ones), for the same prompts and k; compare the model against that, not against 1. The
reference goes through the same evaluator, so it carries the evaluator's own errors too (none on real images
from 32 px up; at 16 px it misreads ~7% of them, mostly small shapes).

Also: ``stated_accuracy``, per stated attribute the fraction of all images showing the stated value (it
should NOT vary across seeds; a blank image counts as wrong); ``pixel_std``, the per-pixel standard
deviation across the k seeds (population std, images clamped to [0, 1]), averaged over pixels, channels and
prompts: a generic number that needs no evaluator (the reference's includes the dataset's position jitter).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from crossflow.data.shapes import (
    ATTRIBUTES,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeAttributes,
    ShapesGenerator,
)
from crossflow.eval.shapes import NONE, measure
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, CrossFlowPipeline, to_pil

OMITTABLE: tuple[str, ...] = ("size", "position")
"""What a shapes caption can leave out: the generator always states shape and colour."""
REFERENCE_SEED_OFFSET = 1
"""The reference images are drawn from seed + 1: a stream apart from the prompts' own generator."""


class DiversityPrompt(NamedTuple):
    """A caption and the attribute values it states (the others it leaves open)."""

    caption: str
    stated: dict[str, str]


# From the generator's own value lists, so the counts cannot drift from the data.
NUM_CLASSES: dict[str, int] = {"shape": len(SHAPES), "color": len(COLORS), "size": len(SIZES),
                               "position": len(POSITIONS)}


# ------------------------------------------------------------------------------------------------ prompts


def diversity_prompts(
    num: int,
    seed: int,
    omit: Sequence[str] = ("position", "size"),
    phrasing: str = "train",
    holdout: Sequence[Mapping[str, str]] = (),
) -> list[DiversityPrompt]:
    """``num`` shapes captions stating colour and shape but none of ``omit``, phrased by the generator itself
    (its p_omit_* options at 1 or 0); colour and shape drawn as the dataset draws them (under ``holdout``)."""
    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    omit = tuple(dict.fromkeys(omit))
    unknown = [name for name in omit if name not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"Unknown attribute(s) to omit {unknown}; expected names from {OMITTABLE}.")
    fixed = [name for name in omit if name not in OMITTABLE]
    if fixed:
        raise ValueError(f"The shapes generator cannot omit {fixed}: every caption it writes states shape and "
                         f"colour (it can leave out only {' and '.join(OMITTABLE)}).")
    generator = ShapesGenerator(seed, phrasing=phrasing,  # type: ignore[arg-type]
                                p_omit_size=float("size" in omit), p_omit_position=float("position" in omit),
                                holdout=holdout)
    prompts = []
    for sample in generator.take(num):
        truth = sample.attributes.to_dict()
        prompts.append(DiversityPrompt(sample.caption, {name: truth[name] for name in sample.stated}))
    return prompts


# --------------------------------------------------------------------------------------------- statistics


def value_entropy(values: Sequence[Hashable], num_classes: int) -> float:
    """Entropy of the histogram of ``values`` over log(num_classes): 0 = one value, 1 = uniform over all
    ``num_classes``; 0 for no values."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (entropy is normalised by its log), got {num_classes}")
    counts = np.array(list(Counter(values).values()), dtype=np.float64)
    if len(counts) > num_classes:
        raise ValueError(f"{len(counts)} distinct values but only {num_classes} classes")
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log(p)).sum() / math.log(num_classes)))  # max: -0.0 for one value


def attribute_variety(per_prompt: Sequence[Sequence[Hashable]], num_classes: int) -> dict[str, Any]:
    """Variety of one attribute over prompts, from each prompt's values across seeds (see the module doc)."""
    if not per_prompt:
        raise ValueError("no prompts to measure")
    distinct = [len(set(values)) for values in per_prompt]
    histogram = Counter(v for values in per_prompt for v in values)
    return {
        "distinct_mean": float(np.mean(distinct)),
        "entropy_mean": float(np.mean([value_entropy(values, num_classes) for values in per_prompt])),
        "collapse_rate": float(np.mean([d <= 1 for d in distinct])),  # all seeds agree (or nothing measured)
        "num_classes": num_classes,
        "num_prompts": len(per_prompt),
        "histogram": {str(k): histogram[k] for k in sorted(histogram, key=str)},  # over all prompts' images
    }


def pixel_std(images: torch.Tensor) -> float:
    """Mean over pixels and channels of the population std across seeds of (K, C, H, W) images in [0, 1]."""
    return float(images.clamp(0, 1).double().std(dim=0, correction=0).mean())


def variety_stats(
    prompts: Sequence[DiversityPrompt], images: torch.Tensor, measured: Sequence[Mapping[str, str]], num_seeds: int
) -> dict[str, Any]:
    """The numbers of the module doc from ``len(prompts) * num_seeds`` images in prompt-major order (float
    (N, C, H, W) in [0, 1]) and their measured attributes."""
    if len(images) != len(prompts) * num_seeds or len(measured) != len(images):
        raise ValueError(f"expected {len(prompts)} x {num_seeds} images and measurements, "
                         f"got {len(images)} and {len(measured)}")
    rows = [list(measured[i * num_seeds:(i + 1) * num_seeds]) for i in range(len(prompts))]
    omitted: dict[str, Any] = {}
    for name in ATTRIBUTES:
        index = [i for i, p in enumerate(prompts) if name not in p.stated]
        if index:
            # A blank image measures "none": no value to vary, so it is kept out of the histogram (blank_rate).
            values = [[m[name] for m in rows[i] if m[name] != NONE] for i in index]
            omitted[name] = attribute_variety(values, NUM_CLASSES[name])
    hits: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for prompt, row in zip(prompts, rows, strict=True):
        for name, value in prompt.stated.items():
            counts[name] += len(row)
            hits[name] += sum(m[name] == value for m in row)
    stds = [pixel_std(images[i * num_seeds:(i + 1) * num_seeds]) for i in range(len(prompts))]
    return {
        "omitted": omitted,
        "stated_accuracy": {name: hits[name] / counts[name] for name in ATTRIBUTES if counts[name]},
        "pixel_std": float(np.mean(stds)),
        "blank_rate": float(np.mean([m["shape"] == NONE for m in measured])),
    }


# --------------------------------------------------------------------------------------------- sampling


def reference_images(
    prompts: Sequence[DiversityPrompt], num_seeds: int, seed: int, image_size: int,
    holdout: Sequence[Mapping[str, str]] = (),
) -> torch.Tensor:
    """``num_seeds`` real images per prompt, drawn by the shapes generator restricted to the allowed
    combinations matching the prompt's stated values: the dataset's own distribution of what it leaves open."""
    generator = ShapesGenerator(seed, image_size=image_size, holdout=holdout)
    allowed = list(generator.combinations)
    images = []
    for prompt in prompts:
        # Restricting the generator's combinations keeps its own uniform draw and jitter (as run.py's holdouts do).
        generator.combinations = [c for c in allowed if _matches(c, prompt.stated)]
        if not generator.combinations:
            raise ValueError(f"no allowed combination matches {prompt.stated} (held out?)")
        images += [np.asarray(s.image.convert("RGB")) for s in generator.take(num_seeds)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _matches(attrs: ShapeAttributes, values: Mapping[str, str]) -> bool:
    return all(getattr(attrs, key) == value for key, value in values.items())


def seed_diversity(
    pipe: CrossFlowPipeline,
    prompts: Sequence[DiversityPrompt | tuple[str, Mapping[str, str]]],
    num_seeds: int = 8,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    solver: str = "euler",
    seed: int = 0,
    batch_size: int = 128,
    temperature: float = 1.0,
    holdout: Sequence[Mapping[str, str]] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Sample ``num_seeds`` images per prompt and measure their variety, beside the data's ``reference``.

    One seeded generator draws the noise for all images in prompt-major batches, so every image has its own
    noise and the same seed and batch size give the same result. ``holdout``: the training run's held-out
    combinations, which the reference never draws. Keys and definitions: the module docstring.
    """
    if num_seeds < 2:
        raise ValueError(f"num_seeds must be at least 2 to see any variety, got {num_seeds}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    prompts = [DiversityPrompt(caption, dict(stated)) for caption, stated in prompts]
    if not prompts:
        raise ValueError("no prompts")
    from crossflow.eval.run import generate_images  # run.py imports this module: import at call time

    captions = [p.caption for p in prompts for _ in range(num_seeds)]
    images = generate_images(pipe, captions, num_steps, guidance_scale, solver, seed, batch_size, temperature,
                             progress, desc="diversity").clamp(0, 1)
    measured = [measure(im) for im in to_pil(images)]  # scored as saved (8 bits), like crossflow eval
    image_size = pipe.config.codec.image_size
    real = reference_images(prompts, num_seeds, seed + REFERENCE_SEED_OFFSET, image_size, holdout)
    reference = variety_stats(prompts, real, [measure(im) for im in to_pil(real)], num_seeds)
    return {
        **variety_stats(prompts, images, measured, num_seeds),
        "reference": {**reference, "source": "the shapes generator, omitted attributes drawn as the dataset does"},
        "num_prompts": len(prompts),
        "num_seeds": num_seeds,
        "seed": seed,
        "sampling": {"num_steps": num_steps, "guidance_scale": guidance_scale, "solver": solver,
                     "temperature": temperature},
        "per_prompt": [
            {"caption": p.caption, "stated": p.stated,
             "measured": {name: [m[name] for m in measured[i * num_seeds:(i + 1) * num_seeds]]
                          for name in ATTRIBUTES if name not in p.stated}}
            for i, p in enumerate(prompts)
        ],
    }


def format_diversity(result: Mapping[str, Any]) -> list[str]:
    """Summary lines: per omitted attribute model vs reference; then stated accuracy and pixel std."""
    ref = result["reference"]
    head = f"{result['num_prompts']} prompts x {result['num_seeds']} seeds"
    lines = []
    for name, stats in result["omitted"].items():
        r = ref["omitted"][name]
        lines.append(f"  diversity [{name}] distinct {stats['distinct_mean']:.2f} (ref {r['distinct_mean']:.2f}) | "
                     f"entropy {stats['entropy_mean']:.3f} (ref {r['entropy_mean']:.3f}) | "
                     f"collapse {stats['collapse_rate']:.3f} (ref {r['collapse_rate']:.3f}) | {head}")
    stated = " ".join(f"{k} {v:.3f}" for k, v in result["stated_accuracy"].items())
    lines.append(f"  diversity stated accuracy {stated or 'n/a'} | pixel std {result['pixel_std']:.4f} "
                 f"(ref {ref['pixel_std']:.4f}) | blank {result['blank_rate']:.3f}")
    return lines
