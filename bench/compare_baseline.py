"""CrossFlow vs the standard noise->image flow-matching baseline at equal training compute (issue 5).

Both models train on the same shapes shards (with two attribute combinations held out: configs/data/holdout_combos.yaml),
with the same transformer body (preset), optimizer, schedule, batch and number of steps, at two flow-transformer
sizes (micro and tiny). Then, per model: the shapes evaluator on seen and held-out combinations, FID/KID
(crossflow eval), with and without guidance, and seed-to-seed variety; and for the tiny pair, quality vs number of
function evaluations for every solver (crossflow sweep). Everything lands in docs/results.md (+ a PNG in docs/).

Runs whose checkpoints exist are reused, so an interrupted bench continues. Training runs can be spread over
processes: ``--stage train --only crossflow-tiny`` in one shell, ``--only baseline-tiny`` in another.
About 2 hours on 2 CPU cores.

Run: python bench/compare_baseline.py [--workdir runs/bench_compare] [--steps 2000] [--stage all|train|eval]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

from crossflow.data.shards import write_shapes_shards  # noqa: E402
from runs import checkpoint_callbacks, train, train_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = "configs/data/holdout_combos.yaml"
MODELS = {  # name -> (model config, flow-transformer preset)
    "crossflow-micro": ("configs/demo.yaml", "micro"),
    "baseline-micro": ("configs/baseline_demo.yaml", "micro"),
    "crossflow-tiny": ("configs/demo.yaml", "tiny"),
    "baseline-tiny": ("configs/baseline_demo.yaml", "tiny"),
}


def holdout_entries() -> list[dict[str, str]]:
    """The held-out combinations of the overlay config, so bench and config never disagree."""
    import yaml

    return yaml.safe_load((ROOT / OVERLAY).read_text())["data"]["generate_shapes"]["holdout"]


def holdout_specs() -> list[str]:
    """The same entries as ``crossflow eval --holdout`` strings."""
    return [",".join(f"{k}={v}" for k, v in e.items()) for e in holdout_entries()]


def write_data(root: Path) -> None:
    """The overlay's data (20,000 train / 1,000 val, seeds 0 / 1, combinations held out), written once."""
    for split, num, seed in (("train", 20000, 0), ("val", 1000, 1)):
        if not (root / split).exists():
            write_shapes_shards(str(root / split), num, seed=seed, holdout=holdout_entries())


def train_model(work: Path, name: str, steps: int) -> Path:
    config, preset = MODELS[name]
    run_dir = work / name
    return train([config, OVERLAY], run_dir, work / "data" / "train", work / "data" / "val", steps,
                 [*checkpoint_callbacks(run_dir, 0.999), f"--model.model.preset={preset}"])


def eval_model(work: Path, name: str, guidance: float, args: argparse.Namespace) -> dict:
    """``crossflow eval`` of one model at one guidance scale (50 Euler steps), its report reused if present."""
    out = work / "eval" / f"{name}_g{guidance}"
    report = out / "report.json"
    if not report.exists():
        from crossflow.eval.run import run_eval

        with torch.autocast("cpu", torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext():
            run_eval(str(work / name / "checkpoints" / "last.ckpt"), str(out), num=args.num,
                     holdout=holdout_specs(), num_holdout=args.num_holdout, cfg_scale=guidance,
                     diversity_prompts=args.diversity_prompts, diversity_seeds=8, progress=False)
    return json.loads(report.read_text())


def training_precision(work: Path) -> str:
    """The precision the runs trained in, from their resolved configs (the CLI turns bf16 into fp32 on CPUs that
    only emulate bf16)."""
    import yaml

    found = {str(yaml.safe_load((work / name / "config.yaml").read_text())["trainer"]["precision"]) for name in MODELS}
    return " / ".join(sorted(found))


def param_count(ckpt: Path) -> float:
    """Trainable parameters of a run's model in millions (the frozen text encoder excluded)."""
    from crossflow.inference import read_model_weights

    _, state = read_model_weights(ckpt)
    return sum(v.numel() for k, v in state.items() if "alignment." not in k) / 1e6


def comparison_table(work: Path, args: argparse.Namespace) -> tuple[str, dict]:
    rows, raw = [], {}
    specs = holdout_specs()
    for name in MODELS:
        ckpt = work / name / "checkpoints" / "last.ckpt"
        params = f"{param_count(ckpt):.2f} M"  # one checkpoint read per model, not per row
        for guidance in (1.0, args.guidance):
            r = raw[name, guidance] = eval_model(work, name, guidance, args)
            seen, held = r["shapes"]["seen"], r["shapes"]["held_out"]
            per = r["shapes"]["per_holdout"]
            div = r["diversity"]["omitted"]
            rows.append([
                name, params, f"{train_seconds(ckpt)} s", guidance, seen["color"],
                seen["position"], seen["size"], seen["shape"], seen["all_correct"], held["all_correct"],
                *(per[s]["all_correct"] for s in specs), f"{r['fid_kid']['fid']:.2f}",
                f"{r['fid_kid']['kid_mean']:.4f}", div["position"]["entropy_mean"], div["size"]["entropy_mean"],
            ])
    ref = raw["crossflow-tiny", 1.0]
    header = ["model", "params (no alignment head)", "train time", "guidance", "colour", "position", "size", "shape",
              "all-correct (seen)", "all-correct (held out)", *(f"held out: {s}" for s in specs), "FID", "KID",
              "position entropy", "size entropy"]
    floors = (f"FID floor (real images of the same prompts vs the reference) {ref['fid_kid']['fid_floor']:.2f}, "
              f"KID floor {ref['fid_kid']['kid_floor_mean']:.4f}; diversity reference (the data itself): position "
              f"entropy {ref['diversity']['reference']['omitted']['position']['entropy_mean']:.3f}, size entropy "
              f"{ref['diversity']['reference']['omitted']['size']['entropy_mean']:.3f}")
    return table(header, rows) + "\n\n" + floors + ".\n\n" + winners(raw, args.guidance), raw


def winners(raw: dict, guidance: float) -> str:
    """Computed lines: which model wins each size and guidance setting, by seen all-correct and by FID."""
    lines = []
    for size in ("micro", "tiny"):
        for g in (1.0, guidance):
            cf, bl = raw[f"crossflow-{size}", g], raw[f"baseline-{size}", g]
            acc = {"CrossFlow": cf["shapes"]["seen"]["all_correct"], "baseline": bl["shapes"]["seen"]["all_correct"]}
            held = {"CrossFlow": cf["shapes"]["held_out"]["all_correct"],
                    "baseline": bl["shapes"]["held_out"]["all_correct"]}
            fid = {"CrossFlow": cf["fid_kid"]["fid"], "baseline": bl["fid_kid"]["fid"]}
            lines.append(
                f"- {size}, guidance {g:g}: all-correct (seen) {max(acc, key=acc.get)} "
                f"({acc['CrossFlow']:.3f} vs {acc['baseline']:.3f}); held out {max(held, key=held.get)} "
                f"({held['CrossFlow']:.3f} vs {held['baseline']:.3f}); FID {min(fid, key=fid.get)} "
                f"({fid['CrossFlow']:.2f} vs {fid['baseline']:.2f}, lower is better)")
    return "Who wins (CrossFlow vs baseline):\n\n" + "\n".join(lines)


def run_sweep(work: Path, args: argparse.Namespace) -> dict:
    """Quality vs NFE for every solver, the tiny pair (crossflow sweep), reused if present."""
    out = work / "sweep"
    result = out / "sweep.json"
    if not result.exists():
        from crossflow.eval.sweep import main as sweep_main

        sweep_main([
            "--ckpt", f"crossflow={work / 'crossflow-tiny' / 'checkpoints' / 'last.ckpt'}",
            "--ckpt", f"baseline={work / 'baseline-tiny' / 'checkpoints' / 'last.ckpt'}",
            "--solvers", "euler", "heun", "midpoint", "dopri5", "--steps", "1", "2", "4", "8", "16", "32", "50",
            "--cfg-scales", str(args.guidance), "--num", str(args.sweep_num), "--precision", args.precision,
            "--out", str(out),
        ])
    docs_png = ROOT / "docs" / "sweep_solvers.png"
    shutil.copy(out / "sweep.png", docs_png)
    return json.loads(result.read_text())


def sweep_table(sweep: dict) -> str:
    from crossflow.eval.sweep import markdown_table

    return markdown_table(sweep["rows"])


def fewest_steps_lines(sweep: dict) -> str:
    """The fewest steps keeping 95% of 50-step Euler all-correct, per model and solver, against the goal (<= 8 steps
    with any solver). A reference near 0 (a model that has not learned the task) makes every step count "keep" it."""
    lines = []
    for entry in sweep["fewest_steps"]:
        ref = entry["reference"]["all_correct"]
        parts = [f"{solver}: never" if kept is None else f"{solver}: {kept['steps']} steps ({kept['nfe']} NFE)"
                 for solver, kept in entry["fewest"].items()]
        kept = {solver: k["steps"] for solver, k in entry["fewest"].items() if k is not None}
        best = min(kept, key=kept.get) if kept else None
        goal = (f"met by {best} at {kept[best]} steps" if best is not None and kept[best] <= 8
                else "NOT met")
        if ref < 0.2:
            goal += " (but the 50-step reference itself is near zero, so keeping 95% of it says nothing)"
        lines.append(f"- {entry['model']}, guidance {entry['cfg']:g}: 50-step Euler all-correct {ref:.3f}; fewest "
                     f"steps keeping >= 95% of it: {', '.join(parts)}. Goal (<= 8 steps): {goal}.")
    return "\n".join(lines)


def evaluate(work: Path, args: argparse.Namespace) -> None:
    if args.only:  # evaluate some models ahead (their reports are reused); the section needs all of them
        for name in args.only:
            for guidance in (1.0, args.guidance):
                eval_model(work, name, guidance, args)
        if {"crossflow-tiny", "baseline-tiny"} <= set(args.only):
            run_sweep(work, args)
        return
    comparison, _ = comparison_table(work, args)
    sweep = run_sweep(work, args)
    body = f"""Both models: the same shapes shards ({OVERLAY}: 20,000 training samples, green triangles and small
magenta squares never shown), flow-transformer preset, AdamW (lr 1e-3, 200 warm-up steps, cosine to 0.1x), batch 64,
{args.steps} steps, EMA 0.999, trained in {training_precision(work)}; CrossFlow is configs/demo.yaml (VE text latent -> image, alignment
and KL terms), the baseline configs/baseline_demo.yaml (Gaussian noise -> image, text by cross-attention through
2 trainable layers over the same frozen all-MiniLM-L6-v2 states, CFG by condition dropout p = 0.1). Training time is
wall clock on this machine, one thread per run, two runs at a time.

Evaluation (`crossflow eval`): {args.num} fresh prompts over the seen combinations and {args.num_holdout} per held-out
combination (seed 2024), 50 Euler steps, {args.precision}; FID / KID over all of them against real images of the same prompt set
drawn from another seed, through the shapes feature network (crossflow/eval/features.py); position / size entropy:
seed-to-seed variety over 8 seeds for {args.diversity_prompts} prompts that state colour and shape only
(crossflow/eval/diversity.py; 0 = every seed the same, 1 = uniform). Equal compute means equal steps x batch on the
same body; the wall-clock times differ because CrossFlow also runs its VE (5.2 M parameters, most of them one flat
projection to the latent) and the runs shared 2 cores with other work, so they are not a clean cost measure.
What we read into these numbers, and why: docs/experiments.md ("CrossFlow vs the noise baseline").

{comparison}

### Quality vs steps per solver (tiny pair, guidance {args.guidance})

`crossflow sweep` over {args.sweep_num} prompts; images/s is wall clock of generation ({torch.get_num_threads()} CPU thread(s)), {args.precision}, measured
while other bench jobs used the second core (relative speeds hold; absolute ones are pessimistic). Plot:
[docs/sweep_solvers.png](sweep_solvers.png).

{sweep_table(sweep)}

{fewest_steps_lines(sweep)}
"""
    update_section("compare_baseline", "CrossFlow vs the noise->image baseline at equal compute; solvers and steps",
                   "python bench/compare_baseline.py", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/bench_compare")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every model (batch 64; half the "
                        "demo's 4000, so the four runs fit one session on 2 CPU cores)")
    parser.add_argument("--stage", choices=["all", "train", "eval"], default="all")
    parser.add_argument("--only", choices=list(MODELS), action="append",
                        help="train / evaluate only these models (the results section is written without --only)")
    parser.add_argument("--num", type=int, default=256, help="seen-combination prompts per evaluation")
    parser.add_argument("--num-holdout", type=int, default=64, help="prompts per held-out combination")
    parser.add_argument("--guidance", type=float, default=2.5, help="the guided setting (and the sweep's)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="sampling precision of the evaluations (auto: bf16 where the CPU has it natively)")
    parser.add_argument("--diversity-prompts", type=int, default=16)
    parser.add_argument("--sweep-num", type=int, default=128, help="prompts per setting of the solver sweep")
    args = parser.parse_args()
    if args.precision == "auto":
        from crossflow.cli import cpu_bf16_is_emulated

        args.precision = "fp32" if cpu_bf16_is_emulated() else "bf16"
    work = Path(args.workdir)
    write_data(work / "data")
    ckpts = {}
    for name in args.only or MODELS:
        if args.stage in ("all", "train"):
            ckpts[name] = train_model(work, name, args.steps)
    if args.stage in ("all", "eval"):
        evaluate(work, args)


if __name__ == "__main__":
    main()
