"""The weight space of instance fine-tunes (weights2weights-style) on the shapes model, against the text latent.

Instances (crossflow.data.shapes.Instance): a shape in a continuous hue, size and aspect ratio — identities the
prompt vocabulary cannot name — all bound to one caption, by default "a large white circle in the center" with every
image in the centre: the demo model turns words it never saw ("a photo of sks") and captions without a position into
scattered pixels, so the bank starts from a caption it draws cleanly and each LoRA moves that object to its instance
(pilots in docs/experiments.md, "Weight space pilots").

1. **Bank.** ``--instances`` + ``--heldout`` instances (default 300 + 50), one rank-``--rank`` LoRA each on the q and
   v row blocks of every flow block's attention (k untouched, VE and everything else frozen), all trained in one
   Lightning run (crossflow.weight_space.training; ``--train-steps`` steps of ``--batch-size``, 4 renders per
   instance per batch). The training cost (wall-clock, s/step) is recorded in the bank file and the table.
2. **Space.** Each instance model as its dense ΔW of q and v (unique, unlike the LoRA factors), flattened;
   standardised per weight over the first ``--instances`` models; PCA (torch.svd_lowrank), ``--k`` = 20 components.
   The last ``--heldout`` models stay out of the fit.
3. **Measurements** (crossflow.eval.instances reads shape, hue, size, aspect off the pixels; "same identity" is its
   DEFAULT_TOLERANCE: same shape, hue within 20°, size within 0.03·S, aspect within a factor 1.35). Every model is
   sampled with ``--seeds`` (8) z_text draws, ``--num-steps`` Euler steps, guidance ``--guidance`` (1: the instance
   models train the conditional branch only).

   - *fidelity* (reference): a held-out instance's own bank model — and its projection on the k PCs — drawn 8 times;
     the readings' summary (majority shape, circular-mean hue, median size / aspect) matches the instance.
   - (a) *sampling*: ``--models`` (50) models from the Gaussian over PC coefficients; identity *consistent* = all 8
     readings match one another pairwise. Bar: ≥ 90%.
   - (b) *direction*: least squares of ``--attribute`` (aspect, read as log(width/height)) on the training models'
     coefficients; each held-out model's projection moves by ``--amount`` (0.4 in log aspect, a factor 1.5) along
     it, towards the far side of the range (up if its predicted value is below the training median, else down),
     with delayed injection from ``--t-inject`` (0: edited throughout). *Changed*: the summary's attribute moved in
     the asked direction by ≥ ``--min-change`` (default amount / 2); *held*: the other attributes (shape, hue, size)
     still match the unedited model's summary. Bars: changed ≥ 80%, held ≥ 90%.
   - (c) *inversion*: one render of each held-out instance -> its PC coefficients (``--inversion-steps`` Adam steps on
     the flow-matching loss, ``--inversion-batch`` t / z_text draws a step); the inverted model's 8 images' summary
     matches the instance. Bar: ≥ 80%. Time per inversion recorded.

4. **The text-latent comparison.** The same instances all share one caption, so "the text latents of the instance
   prompts" would be one point. What the text latent *can* carry is measured instead by giving each instance its own
   learned offset of the prompt's VE mean (textual-inversion-style, crossflow.weight_space.bank.TextOffsetBank),
   trained in the same run recipe on the frozen base model; then the same PCA (k components of the offsets), the
   same (a), (b), (c) and fidelity. What the flow cannot draw from any z_text (a hue between palette colours, an
   aspect it never saw) shows up as low fidelity there, and the weight space's advantage is the gap.

Defaults follow issue 7's counts (300 + 50 instances, k = 20, 50 models, 8 seeds). Banks are cached in ``--workdir`` (default runs/bench_weight_space): a rerun with
the same settings skips the training. Images (sampled models, edits, inversions) go to docs/ (``--out-dir``).

Cost, measured on the 4000-step `make demo` checkpoint (2026-12-02, a 2-core CPU with native bf16): bank training in
bf16 at batch 64 on one thread, 0.245 s/step (LoRA) and 0.239 s/step (text offsets) -> 10000 steps ≈ 41 + 40 min
(the two banks train side by side with ``--train-only``, one process per ``--kinds``); in fp32 on an AVX2-only CPU
0.67 s/step (measured beside other jobs). The measurements then take about 16 minutes for both kinds at 2 threads
(inversion ≈ 6 s each).

Run: python bench/weight_space.py [--ckpt runs/demo/checkpoints/last.ckpt] [--instances 300]
     [--heldout 50] [--rank 2] [--shared-init] [--time-shift 1] [--k 20] [--train-steps 10000] [--precision bf16-mixed] [--models 50]
     [--seeds 8] [--attribute aspect] [--amount 0.4] [--t-inject 0] [--inversion-steps 200] [--kinds lora text]
     [--train-only] [--smoke]
``--smoke`` runs a randomly initialised demo-shaped model at toy sizes in a temporary folder (< 1 minute) and prints
the section instead of writing docs/results.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402
from smoke import output_dir, random_pipeline  # noqa: E402

from crossflow.data.shapes import POSITIONS, Instance, sample_instances  # noqa: E402
from crossflow.eval.instances import (  # noqa: E402
    ATTRIBUTE_NAMES,
    DEFAULT_TOLERANCE,
    attribute_matches,
    attribute_values,
    consistent,
    instance_match,
    measure_instance,
    summary,
)
from crossflow.inference import DEFAULT_NUM_STEPS, CrossFlowPipeline, make_grid, to_pil  # noqa: E402
from crossflow.weight_space.bank import (  # noqa: E402
    BankRecord,
    LoraBank,
    TextOffsetBank,
    load_bank,
    save_bank,
)
from crossflow.weight_space.generate import DEFAULT_INSTANCE_GUIDANCE, render_references, sample_instance  # noqa: E402
from crossflow.weight_space.inversion import invert  # noqa: E402
from crossflow.weight_space.objective import PromptLatent, encode_prompt  # noqa: E402
from crossflow.weight_space.space import WeightSpace, explained_variance, fit_bank_space  # noqa: E402
from crossflow.weight_space.training import BankTrainConfig, train_bank  # noqa: E402

SECTION = "weight_space"
COMMAND = "python bench/weight_space.py"
DEFAULT_CAPTION = "a large white circle in the center"
"""A caption the demo model draws cleanly, position stated (see the module docstring)."""
DEFAULT_CKPT = "runs/demo/checkpoints/last.ckpt"
SAMPLING_BAR, CHANGED_BAR, HELD_BAR, INVERSION_BAR = 0.9, 0.8, 0.9, 0.8
# What must hold while one attribute is edited: the identity's other attributes.
FAMILY = {"aspect": "aspect", "size": "size", "hue_cos": "hue", "hue_sin": "hue",
          "circle": "shape", "square": "shape", "triangle": "shape"}
KIND_NAMES = {"lora": "weight space (q/v LoRA ΔW)", "text": "text latent (VE-mean offset)"}


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


@dataclass
class Study:
    """One kind's bank, space and the pipeline its models run on."""

    kind: str
    pipe: CrossFlowPipeline
    record: BankRecord
    vectors: torch.Tensor
    space: WeightSpace
    prompt: PromptLatent
    results: dict[str, float | str] = field(default_factory=dict)
    examples: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def images_of(study: Study, vector: torch.Tensor, args: argparse.Namespace, seed: int, **kw: object) -> torch.Tensor:
    """``--seeds`` images of one model; the same seed gives every model the same z_text noise."""
    return sample_instance(study.pipe, study.prompt, study.kind, vector, args.seeds,  # type: ignore[arg-type]
                           torch.Generator().manual_seed(seed), num_steps=args.num_steps,
                           guidance_scale=args.guidance, targets=study.record.targets, **kw)  # type: ignore[arg-type]


ATTRIBUTE_FAMILIES = ("shape", "hue", "size", "aspect")


def by_attribute(counts: dict[str, int], total: int) -> str:
    """'shape .50 / hue 1.00 / ...': which attribute breaks a measure."""
    return " / ".join(f"{name} {count / total:.2f}" for name, count in counts.items())


def consistent_by_attribute(readings: list) -> dict[str, bool]:
    """Per attribute: do all readings agree pairwise on it (a missing reading breaks every attribute)?"""
    if any(r is None for r in readings):
        return dict.fromkeys(ATTRIBUTE_FAMILIES, False)
    pairs = [attribute_matches(readings[i], readings[j], DEFAULT_TOLERANCE)
             for i in range(len(readings)) for j in range(i + 1, len(readings))]
    return {name: all(p[name] for p in pairs) for name in ATTRIBUTE_FAMILIES}


def identity_of(images: torch.Tensor) -> tuple[Instance | None, bool]:
    readings = [measure_instance(image) for image in images]
    return summary(readings), consistent(readings)


# ---------------------------------------------------------------------------------------------- the parts


def build(kind: str, base: CrossFlowPipeline, instances: list[Instance], args: argparse.Namespace, workdir: Path,
          label: str) -> Study:
    """Train (or load from ``workdir``) the kind's bank, and fit its space."""
    pipe = CrossFlowPipeline(base.config, copy.deepcopy(base.model), base.text_encoder, base.codec)
    path = workdir / f"bank_{kind}.safetensors"
    config = BankTrainConfig(kind=kind, rank=args.rank, steps=args.train_steps, batch_size=args.batch_size,  # type: ignore[arg-type]
                             images_per_instance=args.images_per_instance, caption=args.caption,
                             position=None if args.position == "random" else args.position, seed=args.seed,
                             lr=args.lr, precision=args.precision, shared_init=args.shared_init,
                             time_shift=args.time_shift)
    bank: LoraBank | TextOffsetBank | None = None
    if path.exists() and not args.smoke:
        bank, record = load_bank(path, pipe.model)
        wanted = {"steps": config.steps, "batch_size": config.batch_size, "lr": config.learning_rate,
                  "images_per_instance": config.images_per_instance, "caption": config.caption,
                  "position": config.position, "seed": config.seed, "precision": config.precision,
                  **({"shared_init": True} if config.shared_init else {}),
                  **({"time_shift": config.time_shift} if config.time_shift != 1.0 else {})}
        if record.instances != instances or record.rank != (args.rank if kind == "lora" else None) or any(
                record.training.get(key) != value for key, value in wanted.items()):
            print(f"{path} was trained with other settings: retraining")
            if isinstance(bank, LoraBank):
                bank.detach(pipe.model)
            bank = None
    if bank is None:
        print(f"training the {kind} bank: {len(instances)} instances, {args.train_steps} steps")
        bank, record = train_bank(pipe, instances, config, base_checkpoint=label, progress=not args.smoke)
        save_bank(bank, record, path)
    vectors = bank.vectors()
    space = fit_bank_space(record, vectors, args.k, holdout=args.heldout, seed=args.seed)
    return Study(kind, pipe, record, vectors, space, encode_prompt(pipe, record.prompt))


def part_fidelity(study: Study, heldout: list[int], args: argparse.Namespace) -> None:
    """Do the bank's own held-out models (and their projections on the k PCs) draw their instance?"""
    own = projected = 0
    per_attribute = dict.fromkeys(ATTRIBUTE_FAMILIES, 0)
    for index in tqdm(heldout, desc=f"{study.kind} fidelity", disable=args.smoke):
        instance = study.record.instances[index]
        full = images_of(study, study.vectors[index], args, seed=args.seed)
        proj = images_of(study, study.space.decode(study.space.encode(study.vectors[index])), args, seed=args.seed)
        drawn = identity_of(full)[0]
        own += instance_match(drawn, instance)
        projected += instance_match(identity_of(proj)[0], instance)
        if drawn is not None:
            for name, ok in attribute_matches(drawn, instance, DEFAULT_TOLERANCE).items():
                per_attribute[name] += ok
    study.results["fidelity_own"] = own / len(heldout)
    study.results["fidelity_projected"] = projected / len(heldout)
    study.results["fidelity_by_attribute"] = by_attribute(per_attribute, len(heldout))


def part_sampling(study: Study, args: argparse.Namespace) -> None:
    """(a) models drawn from the PC Gaussian: one identity across the seeds?"""
    coeffs = study.space.sample(args.models, torch.Generator().manual_seed(args.seed + 1))
    hits, rows = 0, []
    per_attribute = dict.fromkeys(ATTRIBUTE_FAMILIES, 0)
    for c in tqdm(coeffs, desc=f"{study.kind} sampled models", disable=args.smoke):
        images = images_of(study, study.space.decode(c), args, seed=args.seed)
        readings = [measure_instance(image) for image in images]
        agree = consistent_by_attribute(readings)  # one pairwise pass; all of it is `consistent(readings)`
        hits += all(agree.values())
        for name, ok in agree.items():
            per_attribute[name] += ok
        if len(rows) < args.examples:
            rows.append(images[: args.examples_per_row])
    study.results["sampling_consistent"] = hits / args.models
    study.results["sampling_by_attribute"] = by_attribute(per_attribute, args.models)
    study.examples["samples"] = rows


def part_direction(study: Study, heldout: list[int], args: argparse.Namespace) -> None:
    """(b) an attribute direction from the training models, applied to the held-out ones."""
    space, family = study.space, FAMILY[args.attribute]
    direction = space.direction(args.attribute)
    median = statistics.median(space.labels[args.attribute])
    min_change = args.min_change if args.min_change is not None else args.amount / 2
    changed = held = 0
    rows: list[torch.Tensor] = []
    t_inject = args.t_inject if study.kind == "lora" else 0.0  # a text point acts only at t = 0
    for index in tqdm(heldout, desc=f"{study.kind} {args.attribute} edits", disable=args.smoke):
        coeffs = space.encode(study.vectors[index])
        sign = 1.0 if float(direction.predict(coeffs)) < median else -1.0
        edited = space.edit(coeffs, direction, sign * args.amount)
        before_vector = space.decode(coeffs)
        before = images_of(study, before_vector, args, seed=args.seed)
        after = images_of(study, space.decode(edited), args, seed=args.seed, t_inject=t_inject,
                          early=before_vector if t_inject > 0 else None)
        was, now = identity_of(before)[0], identity_of(after)[0]
        if was is None or now is None:
            continue  # no object before or after: neither changed nor held
        if family == "shape":
            changed += sign * (attribute_values(now, args.attribute) - attribute_values(was, args.attribute)) > 0
        else:
            changed += sign * (attribute_values(now, args.attribute) - attribute_values(was, args.attribute)) >= min_change
        matches = attribute_matches(now, was, DEFAULT_TOLERANCE)
        held += all(ok for name, ok in matches.items() if name != family)
        if len(rows) < 2 * args.examples:
            rows += [before[: args.examples_per_row], after[: args.examples_per_row]]
    study.results.update({"direction_r2": direction.r2, "changed": changed / len(heldout),
                          "held": held / len(heldout), "min_change": min_change})
    study.examples["edits"] = rows


def part_inversion(study: Study, heldout: list[int], args: argparse.Namespace) -> None:
    """(c) one image of a held-out instance -> PC coefficients -> does the model draw that instance?"""
    rng = np.random.default_rng(args.seed + 7)
    hits, seconds, rows = 0, [], []
    for index in tqdm(heldout, desc=f"{study.kind} inversions", disable=args.smoke):
        instance = study.record.instances[index]
        source = render_references([instance], study.pipe.config.codec.image_size, rng,
                                   study.record.training.get("position"))
        z_image = study.pipe.codec.encode(source.to(study.pipe.device))
        result = invert(study.pipe, study.space, z_image, study.prompt, steps=args.inversion_steps,
                        lr=args.inversion_lr, batch_size=args.inversion_batch,
                        generator=torch.Generator().manual_seed(args.seed + index),
                        time_shift=float(study.record.training.get("time_shift", 1.0)))
        seconds.append(result.seconds)
        images = images_of(study, study.space.decode(result.coefficients), args, seed=args.seed)
        hits += instance_match(identity_of(images)[0], instance)
        if len(rows) < args.examples:
            rows.append(torch.cat([source, images[: args.examples_per_row - 1]]))
    study.results.update({"inversion_match": hits / len(heldout), "seconds_per_inversion": statistics.mean(seconds)})
    study.examples["inversions"] = rows


# ------------------------------------------------------------------------------------------------ the report


def save_grid(out: Path, name: str, rows: list[torch.Tensor]) -> Path | None:
    if not rows:
        return None
    out.mkdir(parents=True, exist_ok=True)
    width = max(len(r) for r in rows)
    images = [im for r in rows for im in list(to_pil(r)) + [to_pil(torch.zeros_like(r[:1]))[0]] * (width - len(r))]
    path = out / f"weight_space_{name}.png"
    make_grid(images, columns=width).save(path)
    return path


def report(studies: list[Study], args: argparse.Namespace, label: str, files: dict[str, str]) -> str:
    def row(name: str, key: str, bar: str = "—") -> list[object]:
        return [name, *(s.results.get(key, "—") for s in studies), bar]

    header = ["measure", *(KIND_NAMES[s.kind] for s in studies), "bar"]
    rows = [
        ["bank: training time (s)", *(f"{float(s.record.training['seconds']):.1f}" for s in studies), "—"],
        ["bank: s / step", *(float(s.record.training["seconds_per_step"]) for s in studies), "—"],
        ["space: variance explained by k PCs", *(s.results["explained"] for s in studies), "—"],
        row("fidelity: held-out bank model draws its instance", "fidelity_own"),
        row("fidelity: its projection on the k PCs", "fidelity_projected"),
        row("fidelity by attribute (held-out bank models)", "fidelity_by_attribute"),
        row("(a) sampled models with one identity over the seeds", "sampling_consistent", f"≥ {SAMPLING_BAR:.0%}"),
        row("(a) by attribute: the seeds agree on it", "sampling_by_attribute"),
        row(f"(b) {args.attribute} direction: R² on the training models", "direction_r2"),
        row(f"(b) {args.attribute} changed in the asked direction", "changed", f"≥ {CHANGED_BAR:.0%}"),
        row("(b) other attributes held", "held", f"≥ {HELD_BAR:.0%}"),
        row("(c) single-image inversion reproduces the instance", "inversion_match", f"≥ {INVERSION_BAR:.0%}"),
        row("(c) seconds per inversion", "seconds_per_inversion"),
    ]
    verdicts = []
    for s in studies:
        r = s.results
        verdicts.append(
            f"- {KIND_NAMES[s.kind]}: (a) {verdict(float(r['sampling_consistent']) >= SAMPLING_BAR)}; (b) changed "
            f"{verdict(float(r['changed']) >= CHANGED_BAR)}, held {verdict(float(r['held']) >= HELD_BAR)}; "
            f"(c) {verdict(float(r['inversion_match']) >= INVERSION_BAR)}")
    first = studies[0]
    settings = (
        f"Model: {label}. {len(first.space.metadata['fitted'])} training instances + {args.heldout} held out, caption "
        f"\"{first.record.prompt}\", images at position {args.position}; LoRA rank {args.rank} on q, v of every flow block "
        f"(A initialised {'from one shared draw' if args.shared_init else 'independently per instance'}); banks trained in one run each, "
        f"{args.train_steps} steps of batch {args.batch_size} ({args.images_per_instance} renders per instance"
        f"{'' if args.time_shift == 1 else f', t shifted by {args.time_shift:g}'}); "
        f"k = {args.k} PCs over standardised vectors. {args.seeds} images per model, {args.num_steps} Euler steps, "
        f"guidance {args.guidance:g}. Edit: {args.attribute} by ±{args.amount:g} (its linear prediction; aspect in "
        f"log units), changed if ≥ {first.results.get('min_change', '—')}, delayed injection from t = "
        f"{args.t_inject:g} (LoRA only). Inversion: {args.inversion_steps} Adam steps, lr {args.inversion_lr:g}, "
        f"batch {args.inversion_batch}. Identity tolerance: hue {DEFAULT_TOLERANCE.hue:g}°, size "
        f"{DEFAULT_TOLERANCE.size:g}·S, aspect ×{DEFAULT_TOLERANCE.aspect:g}.")
    pictures = "\n".join(f"![{name}]({path})" for name, path in files.items())
    return f"""{settings}

{table(header, rows)}

{chr(10).join(verdicts)}

Images (rows: models; columns: seeds): sampled models; edits (before row, after row); inversions (the source first).

{pictures}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=Path(DEFAULT_CKPT), help="the base checkpoint")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_weight_space"), help="bank files (cached)")
    parser.add_argument("--kinds", nargs="+", choices=("lora", "text"), default=["lora", "text"])
    parser.add_argument("--instances", type=int, default=300, help="instances in the PCA fit")
    parser.add_argument("--heldout", type=int, default=50, help="further instances, held out of the fit")
    parser.add_argument("--instance-seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--caption", default=DEFAULT_CAPTION, help="every instance image's caption")
    parser.add_argument("--position", default="center", choices=(*POSITIONS, "random"),
                        help="where every instance image sits ('random': the five positions at random)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images-per-instance", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None, help="bank learning rate (default: 3e-3 LoRA, 1e-2 text)")
    parser.add_argument("--time-shift", type=float, default=1.0,
                        help="shift of the banks' training t (the demo base trains at 0.25; 1: uniform, the default)")
    parser.add_argument("--precision", default="32-true",
                        help="Lightning precision of the bank training (bf16-mixed where the CPU has native bf16)")
    parser.add_argument("--models", type=int, default=50, help="models sampled from the PC Gaussian")
    parser.add_argument("--seeds", type=int, default=8, help="images per model")
    parser.add_argument("--attribute", choices=ATTRIBUTE_NAMES, default="aspect")
    parser.add_argument("--amount", type=float, default=0.4, help="edit size, in the attribute's units (aspect: log)")
    parser.add_argument("--min-change", type=float, default=None, help="a change that counts (default amount / 2)")
    parser.add_argument("--t-inject", type=float, default=0.0, help="delayed injection of the edit (LoRA)")
    parser.add_argument("--inversion-steps", type=int, default=200)
    parser.add_argument("--inversion-lr", type=float, default=0.05)
    parser.add_argument("--inversion-batch", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=DEFAULT_NUM_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_INSTANCE_GUIDANCE)
    parser.add_argument("--examples", type=int, default=6, help="models shown per picture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=None, help="where the pictures go (default docs/; --smoke: a temp dir)")
    parser.add_argument("--shared-init", action="store_true",
                        help="every instance's LoRA A starts from one random draw (a shared row space for the PCA)")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or find cached) the banks in --workdir and stop: run one process per --kinds "
                             "to train the banks side by side, then one without this flag to measure")
    parser.add_argument("--smoke", action="store_true",
                        help="random demo-shaped model, 6 + 2 instances, 3 steps; prints the section instead of "
                             "writing docs/results.md")
    args = parser.parse_args()
    if args.smoke:
        args.instances, args.heldout, args.k, args.train_steps, args.batch_size = 6, 2, 3, 3, 8
        args.images_per_instance, args.models, args.seeds, args.num_steps = 2, 2, 2, 3
        args.inversion_steps, args.examples = 2, 2
        pipe, label = random_pipeline(args.seed), "none: random demo-shaped model (--smoke)"
    else:
        if not args.ckpt.exists():
            parser.error(f"checkpoint not found: {args.ckpt}")
        pipe, label = CrossFlowPipeline.from_pretrained(args.ckpt, device=args.device), f"`{args.ckpt}`"
    if args.heldout < 1 or args.instances < 2 or not 1 <= args.k <= args.instances:
        parser.error("need --heldout >= 1, --instances >= 2 and 1 <= --k <= --instances")
    if not 0 <= args.t_inject <= 1:
        parser.error("--t-inject must be in [0, 1]")
    args.examples_per_row = args.seeds
    instances = sample_instances(args.instances + args.heldout, args.instance_seed)
    heldout = list(range(args.instances, args.instances + args.heldout))
    start = time.perf_counter()
    with output_dir(args.out_dir, args.smoke, "weight_space_") as out:
        workdir = out / "banks" if args.smoke else args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        studies = []
        for kind in args.kinds:
            study = build(kind, pipe, instances, args, workdir, label)
            if args.train_only:
                print(f"{kind} bank ready in {workdir}: {float(study.record.training['seconds']):.0f} s of training")
                continue
            study.results["explained"] = round(sum(explained_variance(study.space)), 4)
            part_fidelity(study, heldout, args)
            part_sampling(study, args)
            part_direction(study, heldout, args)
            part_inversion(study, heldout, args)
            studies.append(study)
        if args.train_only:
            return
        files: dict[str, str] = {}
        for name in ("samples", "edits", "inversions"):
            for study in studies:
                path = save_grid(out, f"{study.kind}_{name}", study.examples.get(name, []))
                if path is not None:
                    files[f"{KIND_NAMES[study.kind]}: {name}"] = path.name
        body = report(studies, args, label, files)
        if args.smoke:
            print(body)
            print(f"(smoke: {len(files)} pictures and the banks written under {out}; "
                  f"{time.perf_counter() - start:.1f} s)")
            return
    command = " ".join(["python bench/weight_space.py", *sys.argv[1:]]) if len(sys.argv) > 1 else COMMAND
    update_section(SECTION, "The weight space of instance fine-tunes (weights2weights-style)", command, body)


if __name__ == "__main__":
    main()
