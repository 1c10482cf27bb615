"""``crossflow eval``: generate images for a prompt set from a checkpoint and measure them.

    crossflow eval --ckpt runs/demo/checkpoints/last.ckpt --num 256 --out runs/demo/eval
    crossflow eval --ckpt CKPT --holdout color=green,shape=triangle --holdout size=small,color=magenta,shape=square
    crossflow eval --ckpt CKPT --prompts my_prompts.txt --reference data/shapes/ --out runs/eval_file

Prompt sets: the shapes generator (fresh attributes from ``--seed``, every attribute stated, in the training
or the held-out ``--phrasing``) or a text file, one prompt per line. Metrics, all in ``report.json``:

- ``shapes``: the pixel evaluator (crossflow/eval/shapes.py), per attribute and all-correct; with
  ``--holdout`` also for the prompts matching each held-out combination, and "seen" vs "held_out" totals.
  Shapes prompts only (a file's prompts carry no ground truth).
- ``fid`` / ``kid``: torchmetrics FID and KID against real images, through the feature network of
  crossflow/eval/features.py (InceptionV3 when available locally, else the shapes feature net). The
  reference is the same prompt set drawn again from another seed (shapes prompts: same distribution,
  independent images) or ``--reference`` shards. ``fid_floor`` / ``kid_floor_mean`` score a perfect
  generator, the prompts' own real images, against that reference: what "as good as real data" reads as
  at this number of images (FID is biased upwards at small N; KID is unbiased, its floor is ~0).
- ``alignment``: cosine similarity between the prompt's text latent (the VE's μ) and the generated
  image's latent, each through the model's *own* contrastive heads (the training loss's projections).
  This is the model judging itself, not an independent metric: a model can agree with itself and still
  draw the wrong thing. ``shuffled`` pairs each image with another prompt, ``real`` scores the real
  images (shapes prompts): the useful reading is matched vs shuffled, and generated vs real.
- ``diversity`` (with ``--diversity-prompts K``): seed-to-seed variety for K fixed shapes prompts that state
  colour and shape but leave out position and size, ``--diversity-seeds`` images each: per omitted attribute
  the distinct values, normalised entropy and collapse rate, beside the same numbers for the dataset's own
  images (``reference``); accuracy on the stated attributes; per-pixel std across seeds
  (crossflow/eval/diversity.py). Guidance can collapse this variety while accuracy still looks fine.

Writes ``report.json``, ``samples.jsonl`` (per image: prompt, group, measured attributes, alignment),
``grid.png`` (and ``grid_holdout.png``) to ``--out``, and prints a short summary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from crossflow.data.shapes import ATTRIBUTES, ShapeAttributes, ShapesGenerator, allowed_combinations
from crossflow.errors import CrossFlowError, exit_on_user_error
from crossflow.eval.diversity import diversity_prompts as make_diversity_prompts
from crossflow.eval.diversity import format_diversity, seed_diversity
from crossflow.eval.evaluate import EVAL_SEED
from crossflow.eval.features import ShapesFeatureRecipe, build_feature_extractor
from crossflow.eval.shapes import format_scores, measure, score
from crossflow.inference import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    make_grid,
    to_pil,
)
from crossflow.provenance import git_sha

HOLDOUT_SEED_OFFSET = 1000
"""Held-out prompts for entry i come from seed + 1000 + i, apart from the seen prompts' stream."""
REFERENCE_SEED_OFFSET = 500
"""The default FID/KID reference is the same prompt set drawn again from seed + 500: the same distribution
(seen and held-out mix included) but independent images. Pairing each generated image with its own
prompt's real image would correlate the two sets, and KID's unbiased estimate assumes they are not."""
DIVERSITY_SEED_OFFSET = 2000
"""Diversity prompts and their sampling noise come from seed + 2000: apart from the prompt and holdout streams."""
SEEN = "seen"


# ------------------------------------------------------------------------------------------- prompt sets


@dataclass
class PromptSet:
    """The prompts to sample, with what is known about them."""

    captions: list[str]
    attributes: list[ShapeAttributes] | None = None
    """Ground truth (shapes prompts, every attribute stated); None for a prompt file."""
    groups: list[tuple[str, ...]] = field(default_factory=list)
    """Per prompt: the held-out entries (as spec strings) it matches; empty = a seen combination."""
    real_images: torch.Tensor | None = None
    """uint8 (N, 3, S, S) real images of the prompts (shapes prompts): the FID floor and the alignment ceiling."""
    info: dict[str, Any] = field(default_factory=dict)


def parse_holdout(spec: str) -> dict[str, str]:
    """``color=green,shape=triangle`` -> {"color": "green", "shape": "triangle"} (validated)."""
    entry: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key or not value:
            raise CrossFlowError(f"bad --holdout {spec!r}: expected attribute=value pairs joined by commas, "
                                 "e.g. color=green,shape=triangle")
        if key in entry:
            raise CrossFlowError(f"bad --holdout {spec!r}: {key} is given twice")
        entry[key] = value
    try:
        allowed_combinations([entry])  # validates names and values against the generator's own tables
    except ValueError as err:
        raise CrossFlowError(f"bad --holdout {spec!r}: {err} Attributes: {', '.join(ATTRIBUTES)}.") from None
    return entry


def holdout_name(entry: Mapping[str, str]) -> str:
    """The spec string of an entry, as the user wrote it less spaces (report keys)."""
    return ",".join(f"{key}={value}" for key, value in entry.items())


def _matches(attrs: ShapeAttributes, entry: Mapping[str, str]) -> bool:
    return all(getattr(attrs, key) == value for key, value in entry.items())


def _images_tensor(images: Sequence[Any]) -> torch.Tensor:
    """PIL images -> uint8 (N, 3, S, S)."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).contiguous()


def shapes_prompt_set(
    num: int,
    seed: int,
    phrasing: str = "train",
    image_size: int = 32,
    holdout: Sequence[Mapping[str, str]] = (),
    num_holdout: int = 64,
) -> PromptSet:
    """``num`` prompts over the seen combinations (the training distribution under ``holdout``), then
    ``num_holdout`` prompts drawn from the combinations matching each held-out entry."""
    try:
        seen = ShapesGenerator(seed, image_size=image_size, phrasing=phrasing,  # type: ignore[arg-type]
                               p_omit_size=0.0, p_omit_position=0.0, holdout=holdout).take(num)
        samples = list(seen)
        for i, entry in enumerate(holdout):
            generator = ShapesGenerator(seed + HOLDOUT_SEED_OFFSET + i, image_size=image_size,
                                        phrasing=phrasing, p_omit_size=0.0, p_omit_position=0.0)  # type: ignore[arg-type]
            # Draw uniformly from the combinations the entry holds out (the generator's own stream, restricted).
            generator.combinations = [c for c in allowed_combinations() if _matches(c, entry)]
            samples += generator.take(num_holdout)
    except ValueError as err:
        raise CrossFlowError(str(err)) from None
    attributes = [s.attributes for s in samples]
    groups = [tuple(holdout_name(e) for e in holdout if _matches(a, e)) for a in attributes]
    info = {"source": "shapes", "phrasing": phrasing, "seed": seed, "num_seen": num,
            "holdout": [holdout_name(e) for e in holdout], "num_per_holdout": num_holdout if holdout else 0}
    return PromptSet([s.caption for s in samples], attributes, groups, _images_tensor([s.image for s in samples]),
                     info)


def file_prompt_set(path: str, num: int | None = None) -> PromptSet:
    """Prompts from a text file (one per line; blank lines and ``#`` comments skipped), cycled to ``num``."""
    file = Path(path)
    if not file.is_file():
        raise CrossFlowError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise CrossFlowError(f"prompt file {path} holds no prompts")
    num = len(prompts) if num is None else num
    captions = [prompts[i % len(prompts)] for i in range(num)]
    return PromptSet(captions, groups=[() for _ in captions],
                     info={"source": "file", "path": str(file), "distinct_prompts": len(prompts)})


def load_reference(pattern: str, num: int, image_size: int) -> torch.Tensor:
    """Up to ``num`` real images (uint8 (N, 3, S, S), resized to the model's size) from webdataset shards."""
    from crossflow.data.decode import IMAGE_KEYS, decode_image
    from crossflow.data.pipeline import expand_shards, read_shard

    images: list[torch.Tensor] = []
    errors: list[Exception] = []
    for url in expand_shards(pattern):
        for sample in read_shard(url, errors.append):
            key = next((k for k in IMAGE_KEYS if k in sample), None)
            if key is None:
                continue  # e.g. latents-only prepared shards
            try:
                images.append((decode_image(sample[key], image_size) * 255).round().to(torch.uint8))
            except Exception as err:  # a corrupt image: skip it as training does
                errors.append(err)
            if len(images) >= num:
                return torch.stack(images)
    if len(images) < 2:
        raise CrossFlowError(f"--reference {pattern} holds {len(images)} readable images; FID needs at least 2")
    return torch.stack(images)


# ---------------------------------------------------------------------------------------------- sampling


def generate_images(
    pipe: CrossFlowPipeline,
    captions: Sequence[str],
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    solver: str = "euler",
    seed: int = 0,
    batch_size: int = 128,
    temperature: float = 1.0,
    progress: bool = True,
    desc: str = "sampling",
) -> torch.Tensor:
    """Sample one image per caption in batches, one seeded generator for the whole set: float (N, 3, S, S) in
    [0, 1]. The same seed and batch size give the same images."""
    if batch_size <= 0:
        raise CrossFlowError(f"--batch-size must be positive, got {batch_size}")
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    parts = []
    with tqdm(total=len(captions), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(captions), batch_size):
            chunk = list(captions[start:start + batch_size])
            parts.append(pipe(chunk, num_steps=num_steps, guidance_scale=guidance_scale, solver=solver,
                              generator=generator, temperature=temperature, output_type="pt"))
            bar.update(len(chunk))
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------------ metrics


def shapes_scores(images: Sequence[Any], prompts: PromptSet) -> dict[str, Any]:
    """The pixel evaluator over all prompts, the seen ones, the held-out ones, and each held-out entry."""
    assert prompts.attributes is not None
    out: dict[str, Any] = {"all": score(images, prompts.attributes)}
    names = prompts.info.get("holdout") or []
    if names:
        def subset(keep: Callable[[tuple[str, ...]], bool]) -> dict[str, float]:
            index = [i for i, g in enumerate(prompts.groups) if keep(g)]
            return score([images[i] for i in index], [prompts.attributes[i] for i in index])  # type: ignore[index]

        out[SEEN] = subset(lambda g: not g)
        out["held_out"] = subset(bool)
        out["per_holdout"] = {name: subset(lambda g, n=name: n in g) for name in names}
    return out


@torch.no_grad()
def alignment_embeddings(pipe: CrossFlowPipeline, captions: Sequence[str], images: torch.Tensor,
                         batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit (N, E) text and image embeddings under the model's contrastive heads: text_proj(μ of z_text) and
    image_encoder(codec.encode(image)), as the training loss sees them (models/alignment.py)."""
    heads = pipe.model.alignment
    # A VAE codec samples its posterior: a fixed generator keeps the score reproducible (pixels: unused).
    generator = torch.Generator(device=pipe.device).manual_seed(0)
    text, image = [], []
    for start in range(0, len(captions), batch_size):
        z_text = pipe.encode_prompts(list(captions[start:start + batch_size]), temperature=0.0)  # μ: the prompt
        z_image = pipe.codec.encode(images[start:start + batch_size].to(pipe.device).float(), generator=generator)
        text.append(heads.text_proj(z_text.flatten(1)).float().cpu())
        image.append(heads.image_encoder(z_image).float().cpu())
    normalize = torch.nn.functional.normalize
    return normalize(torch.cat(text), dim=-1), normalize(torch.cat(image), dim=-1)


def alignment_scores(pipe: CrossFlowPipeline, captions: Sequence[str], images: torch.Tensor,
                     real: torch.Tensor | None = None) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Mean cosine of matched, shuffled (each image against the next prompt) and real pairs; and per image."""
    if getattr(pipe.model, "alignment", None) is None:
        kind = getattr(pipe.config, "kind", "this model")
        return {"skipped": f"{kind} has no contrastive alignment heads"}, None
    text, image = alignment_embeddings(pipe, captions, images)
    matched = (text * image).sum(-1)
    out: dict[str, Any] = {
        "matched": float(matched.mean()),
        "shuffled": float((text * image.roll(1, dims=0)).sum(-1).mean()) if len(captions) > 1 else math.nan,
        "note": "the model judging itself (its own contrastive heads), not an independent metric",
    }
    if real is not None:
        _, real_image = alignment_embeddings(pipe, captions, real.float() / 255.0)
        out["real"] = float((text * real_image).sum(-1).mean())
    return out, matched


def distribution_scores(
    fake: torch.Tensor, reference: torch.Tensor, floor: torch.Tensor | None, extractor: torch.nn.Module, seed: int
) -> dict[str, Any]:
    """FID / KID of the generated images (and of the floor set) against the reference."""
    from crossflow.eval.distribution import DistributionMetrics

    metrics = DistributionMetrics(extractor, seed=seed)
    metrics.update(reference, real=True)
    metrics.update(fake, real=False)
    out = metrics.compute()
    if floor is not None:
        metrics.reset_fake()
        metrics.update(floor, real=False)
        floor_scores = metrics.compute()
        out.update(fid_floor=floor_scores["fid"], kid_floor_mean=floor_scores["kid_mean"],
                   kid_floor_std=floor_scores["kid_std"])
    return out


# ------------------------------------------------------------------------------------------------ command


def _jsonable(value: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _save_grid(images: torch.Tensor, path: Path, limit: int = 64, upscale: int = 3) -> None:
    pil = [im.resize((im.width * upscale, im.height * upscale), 0) for im in to_pil(images[:limit])]
    make_grid(pil, columns=min(8, len(pil))).save(path)


def run_eval(
    ckpt: str,
    out: str,
    num: int | None = None,
    prompts: str | None = None,
    phrasing: str = "train",
    holdout: Sequence[str] = (),
    num_holdout: int | None = None,
    seed: int = EVAL_SEED,
    steps: int = DEFAULT_NUM_STEPS,
    cfg_scale: float = DEFAULT_GUIDANCE_SCALE,
    solver: str = "euler",
    temperature: float = 1.0,
    batch_size: int = 128,
    device: str = "cpu",
    no_ema: bool = False,
    reference: str | None = None,
    features: str = "auto",
    inception_weights: str | None = None,
    feature_cache: str | None = None,
    progress: bool = True,
    feature_recipe: ShapesFeatureRecipe | None = None,
    diversity_prompts: int = 0,
    diversity_seeds: int = 8,
) -> dict[str, Any]:
    """Generate, measure, write ``report.json`` + ``samples.jsonl`` + grids under ``out``; returns the report."""
    options = {k: v for k, v in locals().items() if k not in ("feature_recipe", "progress")}
    started = time.perf_counter()
    if num is not None and num <= 0:
        raise CrossFlowError(f"--num must be positive, got {num}")
    if num_holdout is not None and num_holdout <= 0:
        raise CrossFlowError(f"--num-holdout must be positive, got {num_holdout}")
    if prompts and holdout:
        raise CrossFlowError("--holdout needs shapes prompts (it cannot be used with --prompts)")
    if diversity_prompts < 0:
        raise CrossFlowError(f"--diversity-prompts must be >= 0 (0 = off), got {diversity_prompts}")
    if diversity_prompts and diversity_seeds < 2:
        raise CrossFlowError(f"--diversity-seeds must be at least 2 to see any variety, got {diversity_seeds}")
    entries = [parse_holdout(spec) for spec in holdout]
    if not Path(ckpt).exists():
        raise CrossFlowError(f"checkpoint not found: {ckpt}")  # before the slow model load
    if prompts:
        prompt_set = file_prompt_set(prompts, num)  # checked before the model loads: bad input fails fast
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    pipe = CrossFlowPipeline.from_pretrained(ckpt, device=device, use_ema=not no_ema)
    timings["load_s"] = time.perf_counter() - tick
    image_size = pipe.config.codec.image_size
    if not prompts:
        n = 256 if num is None else num
        prompt_set = shapes_prompt_set(n, seed, phrasing, image_size, entries,
                                       num_holdout if num_holdout is not None else min(n, 64))

    tick = time.perf_counter()
    images = generate_images(pipe, prompt_set.captions, steps, cfg_scale, solver, seed, batch_size, temperature,
                             progress=progress)
    timings["sampling_s"] = time.perf_counter() - tick
    report: dict[str, Any] = {
        "command": "crossflow eval", "checkpoint": str(ckpt), "git_sha": git_sha(),
        "model_kind": getattr(pipe.config, "kind", "crossflow"), "options": options, "prompts": prompt_set.info,
        "num_images": len(images), "image_size": image_size,
    }

    tick = time.perf_counter()
    measured: list[dict[str, str]] | None = None
    if prompt_set.attributes is not None:
        pil = to_pil(images)  # scored as saved: rounded to 8 bits, like crossflow.eval.evaluate
        report["shapes"] = shapes_scores(pil, prompt_set)
        measured = [measure(im) for im in pil]
    timings["shapes_eval_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    ref_images: torch.Tensor | None = None
    if reference:
        ref_images = load_reference(reference, len(images), image_size)
    elif prompt_set.attributes is not None:
        ref_images = shapes_prompt_set(prompt_set.info["num_seen"], seed + REFERENCE_SEED_OFFSET, phrasing,
                                       image_size, entries, prompt_set.info["num_per_holdout"]).real_images
    if features == "none":
        report["fid_kid"] = {"skipped": "--features none"}
    elif ref_images is None:
        report["fid_kid"] = {"skipped": "no real images to compare with: give --reference shards"}
    else:
        extractor, feature_info = build_feature_extractor(
            features, inception_weights, feature_cache, feature_recipe or ShapesFeatureRecipe(), progress=progress)
        # A perfect generator draws the prompts' own real images: its score is the floor at this N.
        floor = prompt_set.real_images
        reference_name = reference or f"shapes prompts drawn again from seed {seed + REFERENCE_SEED_OFFSET}"
        report["fid_kid"] = {**distribution_scores(images, ref_images, floor, extractor.to(device), seed),
                             "reference": reference_name,
                             "feature_extractor": feature_info}
    timings["fid_kid_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    report["alignment"], per_image = alignment_scores(pipe, prompt_set.captions, images, prompt_set.real_images)
    timings["alignment_s"] = time.perf_counter() - tick

    if diversity_prompts:
        tick = time.perf_counter()
        report["diversity"] = _diversity(pipe, diversity_prompts, diversity_seeds, seed + DIVERSITY_SEED_OFFSET,
                                         phrasing, entries, steps, cfg_scale, solver, batch_size, temperature,
                                         progress)
        timings["diversity_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    report["images_per_s"] = round(len(images) / max(timings["sampling_s"], 1e-9), 3)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    with open(out_dir / "samples.jsonl", "w") as f:
        for i, caption in enumerate(prompt_set.captions):
            row: dict[str, Any] = {"index": i, "prompt": caption, "group": list(prompt_set.groups[i]) or SEEN}
            if prompt_set.attributes is not None and measured is not None:
                row.update(truth=prompt_set.attributes[i].to_dict(), measured=measured[i])
            if per_image is not None:
                row["alignment"] = round(float(per_image[i]), 4)
            f.write(json.dumps(row) + "\n")
    seen_index = [i for i, g in enumerate(prompt_set.groups) if not g]
    _save_grid(images[seen_index] if seen_index else images, out_dir / "grid.png")
    held_index = [i for i, g in enumerate(prompt_set.groups) if g]
    if held_index:
        _save_grid(images[held_index], out_dir / "grid_holdout.png")
    print(summary(report))
    print(f"wrote {out_dir}/report.json, samples.jsonl and grid.png")
    return report


def _diversity(pipe: CrossFlowPipeline, num_prompts: int, num_seeds: int, seed: int, phrasing: str,
               holdout: Sequence[Mapping[str, str]], steps: int, cfg_scale: float, solver: str, batch_size: int,
               temperature: float, progress: bool) -> dict[str, Any]:
    """Seed-to-seed variety on shapes prompts leaving out position and size (crossflow/eval/diversity.py)."""
    try:
        prompts = make_diversity_prompts(num_prompts, seed, phrasing=phrasing, holdout=holdout)
        result = seed_diversity(pipe, prompts, num_seeds, steps, cfg_scale, solver, seed, batch_size, temperature,
                                holdout=holdout, progress=progress)
    except ValueError as err:
        raise CrossFlowError(str(err)) from None
    return {**result, "phrasing": phrasing}


def summary(report: Mapping[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"{report['num_images']} images from {report['checkpoint']} "
             f"({report['options']['steps']} steps, {report['options']['solver']}, cfg {report['options']['cfg_scale']}), "
             f"{report['images_per_s']:.2f} img/s"]
    shapes = report.get("shapes")
    if shapes:
        for name in ("all", SEEN, "held_out"):
            if name in shapes:
                lines.append(f"  shapes [{name}] {format_scores(shapes[name])}")
        for name, scores in shapes.get("per_holdout", {}).items():
            lines.append(f"  shapes [{name}] {format_scores(scores)}")
    fk = report["fid_kid"]
    if "skipped" in fk:
        lines.append(f"  FID/KID skipped: {fk['skipped']}")
    else:
        floor = f" (floor {fk['fid_floor']:.3f})" if "fid_floor" in fk else ""
        lines.append(f"  FID {fk['fid']:.3f}{floor} | KID {fk['kid_mean']:.4f} ± {fk['kid_std']:.4f} "
                     f"[{fk['feature_extractor']['name']}]")
    al = report["alignment"]
    if "skipped" in al:
        lines.append(f"  alignment skipped: {al['skipped']}")
    else:
        real = f" | real {al['real']:.3f}" if "real" in al else ""
        lines.append(f"  alignment (self-judged) matched {al['matched']:.3f} | shuffled {al['shuffled']:.3f}{real}")
    if "diversity" in report:
        lines += format_diversity(report["diversity"])
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="crossflow eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt, sharded folder, .safetensors or saved folder)")
    p.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    p.add_argument("--num", type=int, default=None,
                   help="images: shapes prompts over seen combinations (default 256), or a prompt file cycled "
                        "to this many (default one per line)")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line, instead of shapes prompts")
    p.add_argument("--phrasing", default="train", choices=["train", "heldout"],
                   help="shapes captions in the training templates or in held-out wordings")
    p.add_argument("--holdout", action="append", default=[], metavar="ATTR=VALUE,...",
                   help="a held-out combination, e.g. color=green,shape=triangle (repeatable): reported apart")
    p.add_argument("--num-holdout", type=int, default=None,
                   help="prompts per held-out combination (default min(num, 64))")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"prompt and sampling seed (default {EVAL_SEED})")
    p.add_argument("--steps", type=int, default=DEFAULT_NUM_STEPS, help=f"solver steps (default {DEFAULT_NUM_STEPS})")
    p.add_argument("--cfg-scale", "--guidance-scale", dest="cfg_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                   help=f"classifier-free guidance scale (1 = none; default {DEFAULT_GUIDANCE_SCALE})")
    p.add_argument("--solver", default="euler", help="ODE solver, as sample.py takes it (default euler)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the VE's σ when drawing z_text")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ema", action="store_true", help="sample the raw weights instead of the EMA copy")
    p.add_argument("--reference", default=None,
                   help="webdataset shards (folder, glob or brace pattern) of real images for FID/KID "
                        "(default: the shapes prompts' own real images)")
    p.add_argument("--features", default="auto", choices=["auto", "inception", "shapes", "none"],
                   help="FID/KID feature network: auto = InceptionV3 if usable locally, else the shapes net")
    p.add_argument("--inception-weights", default=None, help="local InceptionV3 weights (torch-fidelity's file)")
    p.add_argument("--feature-cache", default=None, help="where the shapes feature net is cached "
                   "(default $CROSSFLOW_CACHE or ~/.cache/crossflow)")
    p.add_argument("--diversity-prompts", type=int, default=0, metavar="K",
                   help="also measure seed-to-seed variety on K shapes prompts that leave out position and size "
                        "(default 0 = off)")
    p.add_argument("--diversity-seeds", type=int, default=8,
                   help="images (seeds) per diversity prompt (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    ns = vars(p.parse_args(args))
    ns["progress"] = not ns.pop("no_progress")
    with exit_on_user_error():
        run_eval(**ns)


if __name__ == "__main__":
    main()
