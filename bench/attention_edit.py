"""Attention-output editing (FluxSpace-style) on the shapes model: does the edit change what it names, and only that?

Three edit kinds, each on ``--cases`` sources (default 200, the issue's count): a colour edit to ``--color-target``
(red) on prompts of another colour, a position edit to ``--position-target`` (top left) on prompts placed elsewhere,
a shape edit to ``--shape-target`` (square) on prompts of another shape. Prompts are seeded, in the training phrasing
with all four attributes stated ("a small blue circle in the center"); the edit prompt is the same caption with the
one attribute changed. Every case has its own noise ε, shared by every method (so z_base = μ_base + σ_base·ε and
z_edit = μ_edit + σ_edit·ε). The source is the plain sample from z_base; ``--num-prompts`` candidates are drawn and
the first ``--cases`` whose source the evaluator (crossflow.eval.shapes.measure) reads right on all four attributes
are kept (``--smoke``: every source with an object, a random model reads nothing right).

Methods, each at every λ of ``--lams`` (default 0, 0.5, 1, 2; λ = 0 is the source itself for all of them):

prompt
    z_base + λ·(z_edit − z_base): λ = 1 is the plain prompt change with the same noise.
arithmetic
    z_text arithmetic (crossflow.editing.latent_ops.latent_arithmetic, re-standardised): μ(caption) + λ·(μ(short
    target) − μ(short source)), e.g. + λ·(μ("a red circle") − μ("a blue circle")), the case's σ and ε.
coarse
    crossflow.editing.attention.coarse_text_latent: z_base + λ·(d − proj_{z_prior} d), z_prior = μ(empty prompt).
fine
    crossflow.editing.attention.attention_edit_latents, no mask: at ``--blocks`` (default all) from step
    ``--start-step`` on, out_base += λ·(out_edit − proj_{out_prior} out_edit).
fine τ
    the same with the token mask at τ = ``--tau`` (default 0.5).
fine rel
    the relative form (AttentionEdit(relative=True)): out_base += λ·(ℓ'_edit − ℓ'_base), ℓ' = the output orthogonal
    to the prior's, at ``--rel-blocks`` (default 0 1 2 3) from step ``--start-step``; its bars are read at λ =
    ``--rel-lam`` (default 1). Blocks and λ come from a 48-case sweep of the colour edit on the x-prediction demo
    model (the first 48 of the colour cases below; docs/experiments.md "Attention-output edits": blocks 0, 1 at λ 2
    were best on the earlier velocity-prediction model and recolour only .02–.17 of cases on the current one).

Per edited image: *success* = the evaluator reads the target value; *kept* = it reads the source's other attributes
(colour edit: shape and size; position edit: colour, shape and size; shape edit: colour and size); *still* = the
object's bounding-box centre (the drawn centre for every shape) moved ≤ 2 px (colour and shape edits; a position edit
is meant to move); *background* = the mean |change| over pixels outside both objects (each mask grown by 1 px) ≤ 4
on 0..255 and no second blob over 3 px (crossflow.editing.measure.count_blobs); *all* = every one of these. Per case
and method: *monotone* = the edited attribute's continuous read-out rises with λ over the λ's, source included
(Spearman ρ ≥ 0.9; colour: the object's mean RGB projected from the source colour's palette RGB to the target's,
crossflow.editing.measure.attribute_progress; position: its centroid projected likewise; shape: how much of its
bounding box it fills, projected from the source shape's nominal fill to the target's — disc π/4, square 1,
triangle ½). Bars (issue 7) for each kind, at λ = 1: success ≥ 80%; still and kept ≥ 90%; background unchanged
≥ 90%; monotone ≥ 90% — read for the two attention edits; prompt, arithmetic and coarse are the comparison on the
same cases.

Defaults: 50 Euler steps, guidance 2.5, fp32. Cost: 3 kinds × (sources + 5 methods × 3 λ's) renders per case, the
attention edits at 1.5× a plain guided batch (3 states instead of 2).
Run: python bench/attention_edit.py --ckpt runs/bench_compare/crossflow-tiny/checkpoints/last.ckpt
     [--cases 200] [--num-prompts 300] [--lams 0 0.5 1 2] [--tau 0.5] [--blocks 0 1 2 3] [--start-step 0]
     [--kinds colour position shape] [--bf16] [--smoke]
``--smoke`` runs a randomly initialised demo-shaped model (no checkpoint) at toy sizes, writes its example image to a
temporary folder and prints the section instead of writing docs/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import join_parts, section_parts, table, update_section  # noqa: E402
from smoke import output_dir, random_pipeline  # noqa: E402

from crossflow.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, TRAIN_TEMPLATES, fill_template  # noqa: E402
from crossflow.editing.attention import (  # noqa: E402
    AttentionEdit,
    attention_edit_latents,
    coarse_text_latent,
    prior_text_latent,
)
from crossflow.editing.latent_ops import TextPosterior, latent_arithmetic, text_posterior, to_latent_shape  # noqa: E402
from crossflow.editing.measure import attribute_progress, count_blobs, object_mask, spearman  # noqa: E402
from crossflow.eval.shapes import measure  # noqa: E402
from crossflow.inference import (  # noqa: E402
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    make_grid,
    to_pil,
)

SECTION = "attention_edit"
KINDS = ("colour", "position", "shape")
INTRO = ("FluxSpace-style edits (crossflow.editing.attention) against a plain prompt change and z_text arithmetic on "
         "the same cases and noise; see bench/attention_edit.py for the definitions. Each kind below is written by "
         "its own `--kinds` run and states its checkpoint and settings.")
COMMAND = "python bench/attention_edit.py --ckpt {ckpt} [--kinds colour position shape]"
TEMPLATE = TRAIN_TEMPLATES[0]  # "a [{size} ]{color} {shape}[ {pos}]": the captions the model trained on
BATCH = 64
STILL_PX = 2.0
BACKGROUND_TOL = 4.0  # mean |change| outside the objects, 0..255
SPECK = 3  # a second blob of more than this many pixels is a second object
MONOTONE_RHO = 0.9
SUCCESS_BAR, KEEP_BAR, BACKGROUND_BAR, MONOTONE_BAR = 0.8, 0.9, 0.9, 0.9
NOMINAL_FILL = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}
METHODS = ("prompt", "arithmetic", "coarse", "fine", "fine τ", "fine rel")
VALUES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "position": tuple(POSITIONS), "shape": SHAPES,
                                      "size": tuple(SIZES)}


def caption(color: str, shape: str, size: str | None = None, position: str | None = None) -> str:
    """A caption in the training phrasing, size and position stated only when given."""
    return fill_template(TEMPLATE, {"color": color, "shape": shape, "size": size,
                                    "pos": f"in the {position}" if position else None})


@dataclass(frozen=True)
class Kind:
    """One edit kind: which attribute changes, to what, and what must stay."""

    name: str
    attribute: str
    target: str

    @property
    def kept(self) -> tuple[str, ...]:
        """Attributes the evaluator must read as on the source (position is judged in pixels, unless it is edited)."""
        return tuple(a for a in ("color", "shape", "size") if a != self.attribute)

    @property
    def still(self) -> bool:
        """Must the object stay where it is?"""
        return self.attribute != "position"

    def short(self, attrs: dict[str, str], value: str) -> str:
        """The arithmetic term for ``value``: the edited attribute with the fewest other words that name it."""
        if self.attribute == "position":
            return caption(attrs["color"], attrs["shape"], position=value)
        return caption(**{"color": attrs["color"], "shape": attrs["shape"], self.attribute: value})


@dataclass
class Run:
    pipe: CrossFlowPipeline
    checkpoint: str
    num_steps: int
    guidance: float
    bf16: bool
    seed: int
    progress: bool = True

    def precision(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.pipe.device.type, torch.bfloat16, enabled=self.bf16)

    def settings(self) -> str:
        return (f"Checkpoint {self.checkpoint}, {self.num_steps} Euler steps, guidance {self.guidance}, "
                f"{'bf16 autocast' if self.bf16 else 'fp32'}, seed {self.seed}; measured {datetime.date.today()}.")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ------------------------------------------------------------------------------------------------ rendering


def batched(run: Run, n: int, fn: Callable[[slice], torch.Tensor], desc: str) -> torch.Tensor:
    """``fn(batch slice) -> images`` over n items in batches of BATCH; (n, 3, S, S) in [0, 1] on the CPU."""
    out = []
    for start in tqdm(range(0, n, BATCH), desc=desc, unit="batch", disable=not run.progress, leave=False):
        with run.precision():
            out.append(fn(slice(start, min(start + BATCH, n))).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def render(run: Run, z: torch.Tensor) -> torch.Tensor:
    """Text latents (latent shape) -> images, plain guided sampling."""
    with run.pipe.eval_mode():
        latents = run.pipe.generate_latents(z.to(run.pipe.device), run.num_steps, run.guidance)
    assert isinstance(latents, torch.Tensor)
    return run.pipe.codec.decode(latents)


# ------------------------------------------------------------------------------------------------ read-outs


def box_center(image: torch.Tensor) -> np.ndarray:
    """Bounding-box centre (x, y) of the object in pixels (NaN without one): the drawn centre for every shape."""
    mask = object_mask(image)
    if not mask.any():
        return np.full(2, np.nan)
    rows, cols = np.nonzero(mask)
    return np.array([(cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2])


def box_fill(image: torch.Tensor) -> float:
    """Share of its bounding box the object fills (disc π/4, square 1, triangle ½); NaN without an object."""
    mask = object_mask(image)
    if not mask.any():
        return float("nan")
    rows, cols = np.nonzero(mask)
    return float(mask.sum()) / float((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))


def grow(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel (8-neighbourhood)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[r:r + h, c:c + w] for r in range(3) for c in range(3)], axis=0)


def background_change(source: torch.Tensor, edited: torch.Tensor) -> float:
    """Mean |edited − source| (0..255) over the pixels outside both objects, each grown by 1 px."""
    outside = ~(grow(object_mask(source)) | grow(object_mask(edited)))
    if not outside.any():
        return 0.0
    diff = (edited.float() - source.float()).abs().mean(dim=0).numpy() * 255.0
    return float(diff[outside].mean())


def progress(kind: Kind, images: list[torch.Tensor], source_value: str) -> np.ndarray:
    """The edited attribute's continuous read-out per image: 0 at the source value, 1 at the target."""
    if kind.attribute == "shape":
        start, end = NOMINAL_FILL[source_value], NOMINAL_FILL[kind.target]
        return (np.array([box_fill(im) for im in images]) - start) / (end - start)
    return attribute_progress(images, kind.attribute, source_value, kind.target)


@dataclass
class Scores:
    success: np.ndarray
    kept: np.ndarray
    still: np.ndarray
    background: np.ndarray

    @property
    def all(self) -> np.ndarray:
        return self.success & self.kept & self.still & self.background


def score(kind: Kind, attrs: list[dict[str, str]], sources: torch.Tensor, edited: torch.Tensor) -> Scores:
    readings = [measure(image) for image in edited]
    success = np.array([r[kind.attribute] == kind.target for r in readings])
    kept = np.array([all(r[a] == s[a] for a in kind.kept) for r, s in zip(readings, attrs, strict=True)])
    shift = np.array([np.hypot(*(box_center(e) - box_center(s))) for s, e in zip(sources, edited, strict=True)])
    still = np.nan_to_num(shift, nan=np.inf) <= STILL_PX if kind.still else np.ones(len(attrs), dtype=bool)
    background = np.array([background_change(s, e) <= BACKGROUND_TOL and count_blobs(e, SPECK + 1) <= 1
                           for s, e in zip(sources, edited, strict=True)])
    return Scores(success, kept, still, background)


# ------------------------------------------------------------------------------------------------ one kind


@dataclass
class Cases:
    attrs: list[dict[str, str]]
    z_base: torch.Tensor
    z_edit: torch.Tensor
    base: TextPosterior
    eps: torch.Tensor
    sources: torch.Tensor
    note: str


def draw_cases(run: Run, kind: Kind, index: int, args: argparse.Namespace) -> Cases:
    """Seeded candidates whose edited attribute is not the target, their noise, sources, and the kept ones."""
    rng = np.random.default_rng(run.seed + 101 * index)
    attrs = []
    while len(attrs) < args.num_prompts:
        a = {name: str(rng.choice(VALUES[name])) for name in ("color", "shape", "size", "position")}
        if a[kind.attribute] != kind.target:
            attrs.append(a)
    base = text_posterior(run.pipe, [caption(**a) for a in attrs])
    edit = text_posterior(run.pipe, [caption(**{**a, kind.attribute: kind.target}) for a in attrs])
    generator = torch.Generator().manual_seed(run.seed + 101 * index)
    eps = torch.randn(base.mu.shape, generator=generator).to(base.mu)  # one ε per case, shared by every method
    z_base = to_latent_shape(run.pipe, base.sample(eps).to(run.pipe.device))
    z_edit = to_latent_shape(run.pipe, edit.sample(eps).to(run.pipe.device))
    sources = batched(run, len(attrs), lambda sl: render(run, z_base[sl]), f"{kind.name} sources")
    readings = [measure(image) for image in sources]
    kept = [i for i, (r, a) in enumerate(zip(readings, attrs, strict=True)) if r == a][:args.cases]
    note = f"{len(kept)} of {len(attrs)} candidate sources read right on all four attributes, the first {args.cases} kept"
    if args.smoke and not kept:
        kept = [i for i, r in enumerate(readings) if r["shape"] != "none"][:args.cases]
        note = f"smoke: none read right, the first {len(kept)} of {len(attrs)} sources with an object kept unfiltered"
    pick = torch.tensor(kept, dtype=torch.long)
    return Cases([attrs[i] for i in kept], z_base[pick.to(z_base.device)], z_edit[pick.to(z_base.device)],
                 TextPosterior(base.mu[pick], base.sigma[pick]), eps[pick], sources[pick], note)


def edit_images(run: Run, kind: Kind, cases: Cases, method: str, lam: float, args: argparse.Namespace,
                z_prior: torch.Tensor) -> torch.Tensor:
    n = len(cases.attrs)
    if method == "prompt":
        return batched(run, n, lambda sl: render(run, cases.z_base[sl] + lam * (cases.z_edit[sl] - cases.z_base[sl])),
                       f"{kind.name} prompt λ={lam:g}")
    if method == "arithmetic":
        target = text_posterior(run.pipe, [kind.short(a, kind.target) for a in cases.attrs])
        source = text_posterior(run.pipe, [kind.short(a, a[kind.attribute]) for a in cases.attrs])
        z = latent_arithmetic([(1.0, cases.base), (lam, target), (-lam, source)]).sample(cases.eps)
        z = to_latent_shape(run.pipe, z.to(run.pipe.device))
        return batched(run, n, lambda sl: render(run, z[sl]), f"{kind.name} arithmetic λ={lam:g}")
    if method == "coarse":
        z = coarse_text_latent(cases.z_base, cases.z_edit, z_prior, lam)
        return batched(run, n, lambda sl: render(run, z[sl]), f"{kind.name} coarse λ={lam:g}")
    relative = method == "fine rel"
    blocks = tuple(args.rel_blocks) if relative else None if args.blocks is None else tuple(args.blocks)
    edit = AttentionEdit(lam=lam, tau=args.tau if method == "fine τ" else None, start_step=args.start_step,
                         blocks=blocks, relative=relative)
    return batched(run, n, lambda sl: attention_edit_latents(run.pipe, cases.z_base[sl], cases.z_edit[sl], edit,
                                                             run.num_steps, run.guidance).images,
                   f"{kind.name} {method} λ={lam:g}")


def part_kind(run: Run, kind: Kind, index: int, args: argparse.Namespace) -> tuple[str, list[torch.Tensor]]:
    cases = draw_cases(run, kind, index, args)
    n = len(cases.attrs)
    if n == 0:
        return f"### {kind.name.capitalize()} edit → {kind.target}\n\n{cases.note}: nothing to edit, not measured.\n", []
    z_prior = prior_text_latent(run.pipe)
    lams = [lam for lam in args.lams if lam != 0]
    rows, verdicts, examples = [], [], [cases.sources[:4]]
    for method in METHODS:
        frames = {0.0: cases.sources}
        per_lam: dict[float, Scores] = {}
        for lam in lams:
            frames[lam] = edit_images(run, kind, cases, method, lam, args, z_prior)
            per_lam[lam] = score(kind, cases.attrs, cases.sources, frames[lam])
        order = sorted(frames)
        monotone = np.array([
            spearman(progress(kind, [frames[lam][i] for lam in order], cases.attrs[i][kind.attribute]), order)
            >= MONOTONE_RHO for i in range(n)])
        for lam in lams:
            s = per_lam[lam]
            rows.append([method, f"{lam:g}", n, float(s.success.mean()), float(s.kept.mean()),
                         float(s.still.mean()) if kind.still else "—", float(s.background.mean()),
                         float(s.all.mean()), float(monotone.mean())])
        bar_lam = args.rel_lam if method == "fine rel" else 1.0
        if bar_lam in per_lam:
            examples.append(frames[bar_lam][:4])
            if method.startswith("fine"):
                s = per_lam[bar_lam]
                keep = (s.kept & s.still).mean()
                verdicts.append(
                    f"- {method} at λ = {bar_lam:g}: success {s.success.mean():.3f} (≥ {SUCCESS_BAR:.0%} → "
                    f"**{verdict(s.success.mean() >= SUCCESS_BAR)}**); "
                    f"{'kept and still' if kind.still else 'kept'} {keep:.3f} (≥ {KEEP_BAR:.0%} → "
                    f"**{verdict(keep >= KEEP_BAR)}**); background {s.background.mean():.3f} (≥ {BACKGROUND_BAR:.0%} → "
                    f"**{verdict(s.background.mean() >= BACKGROUND_BAR)}**); monotone in λ {monotone.mean():.3f} "
                    f"(≥ {MONOTONE_BAR:.0%} → **{verdict(monotone.mean() >= MONOTONE_BAR)}**)")
    kept_names = ", ".join(kind.kept)
    still = f"; *still*: the box centre moved ≤ {STILL_PX:g} px" if kind.still else ""
    lam_set = ", ".join(f"{lam:g}" for lam in sorted(set(args.lams) | {0.0}))
    body = f"""### {kind.name.capitalize()} edit → {kind.target}

{cases.note}. Edit prompt: the source caption with {kind.attribute} = {kind.target}.
*Kept*: {kept_names} read as on the source{still}. *Monotone*: over λ ∈ {{{lam_set}}}, per case and method.

{table(["method", "λ", "n", "success", "kept", "still", "background", "all", "monotone"], rows)}

{chr(10).join(verdicts)}
"""
    return body, examples


# ------------------------------------------------------------------------------------------------ the script


def save_example(out: Path, name: str, rows: list[torch.Tensor]) -> Path | None:
    """One kind's example grid: source, then each method at λ = 1 (columns: the first 4 cases)."""
    if not rows:
        return None
    width = max(len(r) for r in rows)
    images = [im for r in rows for im in list(to_pil(r)) + [to_pil(torch.zeros_like(r[:1]))[0]] * (width - len(r))]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"attention_edit_{name}.png"
    make_grid(images, columns=width).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint or saved model folder (CrossFlowPipeline.from_pretrained)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="edit kinds to run now; the others keep their part of docs/results.md")
    parser.add_argument("--cases", type=int, default=200, help="sources per kind (the first read right)")
    parser.add_argument("--num-prompts", type=int, default=300, help="candidate prompts per kind")
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0], help="edit strengths")
    parser.add_argument("--tau", type=float, default=0.5, help="the mask threshold of the 'fine τ' method")
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="edited flow blocks (default all)")
    parser.add_argument("--start-step", type=int, default=0, help="attention edits from this step on")
    parser.add_argument("--rel-blocks", type=int, nargs="+", default=[0, 1, 2, 3], help="blocks of the 'fine rel' edit")
    parser.add_argument("--rel-lam", type=float, default=1.0, help="the λ at which the 'fine rel' bars are read")
    parser.add_argument("--color-target", default="red", choices=tuple(COLORS))
    parser.add_argument("--position-target", default="top left", choices=tuple(POSITIONS))
    parser.add_argument("--shape-target", default="square", choices=SHAPES)
    parser.add_argument("--num-steps", type=int, default=DEFAULT_NUM_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=None, help="where the example PNG goes (default docs/; --smoke: a temp dir)")
    parser.add_argument("--smoke", action="store_true",
                        help="random demo-shaped model, 2 cases of 3 candidates per kind, 3 steps; prints the section "
                             "instead of writing docs/results.md")
    args = parser.parse_args()
    if args.smoke:
        args.cases, args.num_prompts, args.num_steps = 2, 3, 3
        pipe, label = random_pipeline(args.seed), "none: random demo-shaped model (--smoke)"
    elif args.ckpt is None:
        parser.error("--ckpt is required (or --smoke)")
    else:
        pipe, label = CrossFlowPipeline.from_pretrained(args.ckpt, device=args.device), f"`{args.ckpt}`"
    if args.cases < 1 or args.num_prompts < args.cases:
        parser.error("need --cases >= 1 and --num-prompts >= --cases")
    if 1.0 not in args.lams or len(set(args.lams) | {0.0}) < 3:
        parser.error("--lams must include 1 (the bars read it) and give at least 3 values with 0")
    if args.rel_lam not in args.lams:
        parser.error("--rel-lam must be one of --lams")
    if not 0 < args.tau < 1:
        parser.error("--tau must be in (0, 1)")
    depth = len(pipe.model.flow.blocks)
    if not all(0 <= b < depth for b in (args.blocks or []) + args.rel_blocks):
        parser.error(f"--blocks and --rel-blocks must be in 0..{depth - 1}")
    if not 0 <= args.start_step < args.num_steps:
        parser.error(f"--start-step must be in [0, {args.num_steps - 1}]")

    targets = {"colour": ("color", args.color_target), "position": ("position", args.position_target),
               "shape": ("shape", args.shape_target)}
    run = Run(pipe, label, args.num_steps, args.guidance, args.bf16, args.seed, progress=not args.smoke)
    settings = run.settings() + (f" Attention edits at blocks {args.blocks or 'all'}, from step {args.start_step}; "
                                 f"'fine τ' masks at τ = {args.tau:g}; 'fine rel' at blocks {args.rel_blocks}; {args.cases} cases of {args.num_prompts} "
                                 "candidate prompts.")
    parts = {}
    with output_dir(args.out_dir, args.smoke, "attention_edit_") as out:
        for index, name in enumerate(args.kinds):
            kind = Kind(name, *targets[name])
            text, rows = part_kind(run, kind, index, args)
            example = save_example(out, name, rows)
            if example is not None:
                text += (f"\nExample (source, then prompt, arithmetic, coarse, fine, fine τ at λ = 1, fine rel at "
                         f"λ = {args.rel_lam:g}; the first 4 cases, not chosen by outcome):\n\n![{name} edit example]({example.name})\n")
            # Each kind is its own part (its settings with it), so kinds can run as separate processes.
            parts[name] = settings + "\n\n" + text
            print(parts[name], flush=True)
            if args.smoke:
                print(f"(smoke: example written to {example})")
    if args.smoke:
        return
    body = INTRO + "\n\n" + join_parts(list(KINDS), {**section_parts(SECTION), **parts})
    update_section(SECTION, "Attention-output editing (FluxSpace-style) on the shapes model",
                   COMMAND.format(ckpt=args.ckpt), body)


if __name__ == "__main__":
    main()
