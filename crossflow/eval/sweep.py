"""``crossflow sweep``: shapes accuracy against sampling cost (NFE) over solvers, step counts and guidance scales.

    crossflow sweep --ckpt runs/demo/checkpoints/last.ckpt --out runs/sweep
    crossflow sweep --ckpt crossflow=runs/demo/checkpoints/last.ckpt --ckpt baseline=runs/baseline/checkpoints/last.ckpt \\
        --solvers euler heun midpoint dopri5 --steps 1 2 4 8 16 32 50 --cfg-scales 1.0 2.5 --num 128
    python -m crossflow.eval.sweep --ckpt CKPT --solvers euler --steps 4 50 --cfg-scales 2.5 --precision bf16

Every checkpoint (CrossFlow or ``kind: noise_baseline``, anything ``CrossFlowPipeline.from_pretrained`` loads)
samples the *same* shapes prompts (every attribute stated, training phrasing, from ``--seed``) with the same
seed and batch size in every setting, so rows differ only by the sampler. A setting's images are the ones
``crossflow eval --steps S --solver X --cfg-scale W --seed SEED --batch-size B`` draws. ``--ckpt NAME=PATH``
labels a model; a bare PATH is labelled by its folder (a file's run folder when it sits in ``checkpoints/``).

Settings: for the fixed-step solvers (euler, midpoint, heun) one row per ``--steps`` value; dopri5 chooses its
own steps (``--rtol``/``--atol``): one row per guidance scale, its steps column "adaptive".

Cost columns, per generated image:

- ``nfe``: calls of the guided velocity function by the ODE solver (``SolveResult.nfe``, counted, not
  predicted): euler = steps, midpoint = heun = 2 × steps (Heun evaluates its corrector at t = 1 on the last
  step too), dopri5 = 6 per attempted step + 2 to start. dopri5 picks one step size per batch (its error norm
  spans the batch), so its NFE can differ between batches: the column is the mean over images.
- ``model_evals``: network evaluations = nfe × 2 with guidance (w > 1: a conditional and an unconditional
  branch, run as one forward pass over 2B) and nfe × 1 without (w = 1).

``seconds`` / ``images_per_s`` time generation only (prompt encoding, the solve, decoding; not scoring) with
``time.perf_counter``, after one untimed warm-up batch per model so first-call overheads do not count;
``threads`` is torch's intra-op thread count, which these numbers depend on.

Writes ``sweep.json`` (rows, settings, git SHA, the fewest-steps summary), ``sweep.csv``, ``sweep.md`` and
``sweep.png`` (all-correct vs NFE, one panel per guidance scale; needs ``pip install 'crossflow[plot]'``) to
``--out``, and prints, per model and guidance scale, the 50-step Euler all-correct and the fewest steps of
each fixed-step solver that keep 95% of it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from crossflow.errors import CrossFlowError, exit_on_user_error
from crossflow.eval.evaluate import EVAL_SEED
from crossflow.eval.run import shapes_prompt_set
from crossflow.eval.shapes import score
from crossflow.inference import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, CrossFlowPipeline, to_pil
from crossflow.provenance import git_sha
from crossflow.sampling import DEFAULT_ATOL, DEFAULT_RTOL, NFE_PER_STEP, ODE_INSTALL_HINT, SOLVERS

DEFAULT_SOLVERS = ("euler", "heun", "midpoint", "dopri5")
DEFAULT_STEPS = (1, 2, 4, 8, 16, 32, 50)
DEFAULT_CFG_SCALES = (1.0, DEFAULT_GUIDANCE_SCALE)
PRECISIONS = ("fp32", "bf16")
ADAPTIVE = "dopri5"
"""The one solver that picks its own steps (sampling.py): one row per guidance scale, no steps value."""
REFERENCE_SOLVER, REFERENCE_STEPS = "euler", DEFAULT_NUM_STEPS
"""The fewest-steps summary measures every solver against the paper's (and sample.py's) sampler: Euler, 50 steps."""
KEEP_FRACTION = 0.95
SCORE_KEYS = ("color", "position", "size", "shape", "all_correct")
COLUMNS = ("model", "solver", "steps", "cfg", "nfe", "model_evals", *SCORE_KEYS, "seconds", "images_per_s", "threads")
PLOT_INSTALL_HINT = "pip install 'crossflow[plot]' (or pip install matplotlib)"


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint of the sweep and its label in the rows."""

    label: str
    path: str


def default_label(path: str) -> str:
    """A bare ``--ckpt PATH``'s label: a folder's own name; a file's folder, or its run folder when the file sits
    in ``checkpoints/`` (``runs/demo/checkpoints/last.ckpt`` -> ``demo``), since "checkpoints" names nothing."""
    resolved = Path(path).resolve()
    if resolved.is_dir():
        return resolved.name
    folder = resolved.parent
    return folder.parent.name if folder.name == "checkpoints" and folder.parent.name else folder.name


def parse_ckpt(spec: str) -> ModelSpec:
    """``NAME=PATH`` or a bare ``PATH`` (labelled by :func:`default_label`); the path must exist."""
    name, sep, path = spec.partition("=")
    # A path may hold "=" itself: only a separator-free prefix counts as a label.
    if not sep or not name or "/" in name or "\\" in name:
        name, path = "", spec
    if not path:
        raise CrossFlowError(f"bad --ckpt {spec!r}: expected NAME=PATH or PATH")
    if not Path(path).exists():
        raise CrossFlowError(f"checkpoint not found: {path}")
    return ModelSpec(name or default_label(path), path)


def _unique(values: Sequence[Any]) -> list[Any]:
    """Values in first-seen order without repeats (a repeated setting would only cost time)."""
    return list(dict.fromkeys(values))


def check_settings(
    solvers: Sequence[str], steps: Sequence[int], cfg_scales: Sequence[float], num: int, batch_size: int,
    precision: str, rtol: float, atol: float,
) -> None:
    """Refuse a bad sweep before any model loads, with the same rules as sample.py / crossflow eval."""
    if not solvers:
        raise CrossFlowError(f"--solvers is empty; give one or more of {', '.join(SOLVERS)}")
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        raise CrossFlowError(f"unknown solver {unknown[0]!r}; expected one of {', '.join(SOLVERS)}")
    if any(s != ADAPTIVE for s in solvers) and not steps:
        raise CrossFlowError("--steps is empty; the fixed-step solvers need one or more step counts")
    bad_steps = [s for s in steps if s <= 0]
    if bad_steps:
        raise CrossFlowError(f"--steps must be positive, got {bad_steps[0]}")
    if not cfg_scales:
        raise CrossFlowError("--cfg-scales is empty; give one or more guidance scales (1 = none)")
    bad_cfg = [w for w in cfg_scales if not w >= 1.0]  # also catches NaN
    if bad_cfg:
        raise CrossFlowError(f"--cfg-scales must be >= 1 (1 = no guidance; below 1 mixes in the unconditional "
                             f"model), got {bad_cfg[0]}")
    if num <= 0:
        raise CrossFlowError(f"--num must be positive, got {num}")
    if batch_size <= 0:
        raise CrossFlowError(f"--batch-size must be positive, got {batch_size}")
    if precision not in PRECISIONS:
        raise CrossFlowError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if ADAPTIVE in solvers:
        if not (rtol > 0 and atol > 0):
            raise CrossFlowError(f"--rtol and --atol must be positive, got rtol={rtol}, atol={atol}")
        try:  # imported here, before any timing, so its import cost never lands in a row
            import torchdiffeq  # noqa: F401
        except ImportError:
            raise CrossFlowError(f"solver 'dopri5' needs torchdiffeq: {ODE_INSTALL_HINT}") from None


def settings_for(solvers: Sequence[str], steps: Sequence[int], cfg_scales: Sequence[float]) -> list[tuple[str, int | None, float]]:
    """(solver, steps or None for dopri5, cfg) for every row of one model, guidance scale outermost."""
    out: list[tuple[str, int | None, float]] = []
    for cfg in cfg_scales:
        for solver in solvers:
            out += [(solver, None, cfg)] if solver == ADAPTIVE else [(solver, s, cfg) for s in steps]
    return out


# ---------------------------------------------------------------------------------------------- sampling


@contextlib.contextmanager
def _precision(device: torch.device, precision: str) -> Iterator[None]:
    """bf16: autocast (weights stay fp32, as bench/guidance_sweep.py samples); fp32: nothing."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def generate(
    pipe: CrossFlowPipeline,
    captions: Sequence[str],
    solver: str,
    num_steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int,
    precision: str = "fp32",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> tuple[torch.Tensor, float]:
    """Images (float (N, 3, S, S) in [0, 1], on the CPU) and the mean NFE per image.

    The pipeline's own ``__call__`` split open (prepare_source -> generate_latents -> decode) only to read the
    solver's NFE: with one seeded generator over the batches, the images equal crossflow eval's
    ``generate_images`` for the same seed and batch size.
    """
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    parts, evaluations = [], 0
    with torch.no_grad(), _precision(pipe.device, precision):
        for start in range(0, len(captions), batch_size):
            chunk = list(captions[start:start + batch_size])
            source = pipe.prepare_source(chunk, generator=generator)
            result = pipe.generate_latents(source.x0, num_steps, guidance_scale, solver,  # type: ignore[arg-type]
                                           rtol=rtol, atol=atol, return_result=True, cond=source.cond)
            parts.append(pipe.codec.decode(result.x).float().cpu())
            evaluations += result.nfe * len(chunk)  # each call of the velocity function serves the whole batch
    return torch.cat(parts), evaluations / len(captions)


def _synchronize(device: torch.device) -> None:
    # CUDA runs asynchronously: without a sync the clock would stop before the GPU has finished.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(pipe: CrossFlowPipeline, captions: Sequence[str], cfg_scales: Sequence[float], batch_size: int,
            precision: str) -> None:
    """One untimed batch, 1 Euler step, per forward shape the sweep uses (B unguided, 2B guided): kernel
    selection, allocator growth and the text encoder's cache fill up here instead of in the first row."""
    for cfg in _unique([1.0 if w == 1.0 else max(cfg_scales) for w in cfg_scales]):
        generate(pipe, captions[:batch_size], "euler", 1, cfg, seed=0, batch_size=batch_size, precision=precision)
    _synchronize(pipe.device)


def _as_number(value: float) -> float | int:
    """An NFE as an int when it is one (fixed-step solvers, or equal dopri5 batches), else 2 decimals."""
    return int(value) if float(value).is_integer() else round(value, 2)


def sweep_model(
    pipe: CrossFlowPipeline,
    label: str,
    settings: Sequence[tuple[str, int | None, float]],
    captions: Sequence[str],
    attributes: Sequence[Any],
    seed: int,
    batch_size: int,
    precision: str,
    rtol: float,
    atol: float,
    bar: tqdm | None = None,
) -> list[dict[str, Any]]:
    """One row per setting for one model (see the module docstring for the columns)."""
    warm_up(pipe, captions, [cfg for _, _, cfg in settings], batch_size, precision)
    rows = []
    for solver, steps, cfg in settings:
        if bar is not None:
            bar.set_postfix_str(f"{label} {solver} {steps or 'adaptive'} steps cfg {cfg:g}")
        tick = time.perf_counter()
        # dopri5 ignores num_steps (it only sets a trajectory grid we do not ask for): any valid value will do.
        images, nfe = generate(pipe, captions, solver, steps or 1, cfg, seed, batch_size, precision, rtol, atol)
        _synchronize(pipe.device)
        seconds = time.perf_counter() - tick
        scores = score(to_pil(images), attributes)  # scored as saved: rounded to 8 bits, like crossflow eval
        rows.append({
            "model": label, "solver": solver, "steps": steps, "cfg": cfg,
            "nfe": _as_number(nfe), "model_evals": _as_number(nfe * (2 if cfg > 1.0 else 1)),
            **{key: scores[key] for key in SCORE_KEYS},
            "seconds": round(seconds, 4), "images_per_s": round(len(captions) / max(seconds, 1e-9), 3),
            "threads": torch.get_num_threads(),
        })
        if bar is not None:
            bar.update(1)
    return rows


# --------------------------------------------------------------------------------------------- summaries


def fewest_steps(
    rows: Sequence[Mapping[str, Any]], model: str, solver: str, cfg: float, reference_all_correct: float,
    fraction: float = KEEP_FRACTION,
) -> int | None:
    """The smallest step count of ``solver`` (for ``model`` at guidance ``cfg``) whose all-correct is at least
    ``fraction`` × ``reference_all_correct``; None when no step count reaches it (or the solver has no rows)."""
    # A hair of slack so that a row exactly at the bar is not lost to float rounding (0.95 × 0.8 > 0.76).
    bar = fraction * reference_all_correct - 1e-12
    kept = [row["steps"] for row in rows
            if row["model"] == model and row["solver"] == solver and row["cfg"] == cfg and row["steps"] is not None
            and row["all_correct"] >= bar]
    return min(kept) if kept else None


def fewest_steps_summary(rows: Sequence[Mapping[str, Any]], fraction: float = KEEP_FRACTION) -> list[dict[str, Any]]:
    """Per model and guidance scale with a 50-step Euler row: its all-correct, and per fixed-step solver the
    fewest steps (and their NFE) keeping ``fraction`` of it."""
    out = []
    for model in _unique([row["model"] for row in rows]):
        for cfg in _unique([row["cfg"] for row in rows if row["model"] == model]):
            reference = next((row for row in rows if row["model"] == model and row["cfg"] == cfg
                              and row["solver"] == REFERENCE_SOLVER and row["steps"] == REFERENCE_STEPS), None)
            if reference is None:
                continue
            solvers = _unique([row["solver"] for row in rows if row["model"] == model and row["steps"] is not None])
            fewest: dict[str, dict[str, int] | None] = {}
            for solver in solvers:
                steps = fewest_steps(rows, model, solver, cfg, reference["all_correct"], fraction)
                fewest[solver] = None if steps is None else {"steps": steps, "nfe": steps * NFE_PER_STEP[solver]}
            out.append({"model": model, "cfg": cfg, "fraction": fraction,
                        "reference": {"solver": REFERENCE_SOLVER, "steps": REFERENCE_STEPS,
                                      "all_correct": reference["all_correct"]},
                        "fewest": fewest})
    return out


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """One line per model and guidance scale."""
    lines = []
    for entry in summary:
        parts = [f"{solver} none" if kept is None
                 else f"{solver} {kept['steps']} step{'s' * (kept['steps'] != 1)} ({kept['nfe']} NFE)"
                 for solver, kept in entry["fewest"].items()]
        lines.append(f"{entry['model']} cfg {entry['cfg']:g}: {REFERENCE_STEPS}-step Euler all-correct "
                     f"{entry['reference']['all_correct']:.3f}; fewest steps keeping >= {entry['fraction']:.0%}: "
                     + ", ".join(parts))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- outputs


def _cell(key: str, value: Any, missing: str) -> str:
    if value is None:
        return missing
    if key in SCORE_KEYS and isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a markdown table (dopri5's steps read "adaptive")."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(k, row[k], "adaptive") for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(out_dir: Path, report: Mapping[str, Any]) -> None:
    """sweep.json, sweep.csv (dopri5's steps empty) and sweep.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if row[k] is None else row[k] for k in COLUMNS} for row in report["rows"])
    settings = report["settings"]
    (out_dir / "sweep.md").write_text(
        f"# Quality vs NFE\n\n{settings['num']} shapes prompts (seed {settings['seed']}, training phrasing), "
        f"batch {settings['batch_size']}, {settings['precision']}, dopri5 rtol {settings['rtol']:g} atol "
        f"{settings['atol']:g}, git {report['git_sha']}. nfe: solver calls of the guided velocity per image; "
        "model_evals: nfe x 2 with guidance (cfg > 1).\n\n" + markdown_table(report["rows"]))


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """All-correct vs NFE (log-2 axis): one panel per guidance scale, one line per (model, fixed-step solver),
    dopri5 as one marker per model. Needs matplotlib (the ``plot`` extra), imported only here."""
    try:
        import matplotlib
    except ImportError:
        raise CrossFlowError(f"sweep.png needs matplotlib: {PLOT_INSTALL_HINT}") from None
    matplotlib.use("Agg")  # files only: never look for a display
    import matplotlib.pyplot as plt

    cfgs = _unique([row["cfg"] for row in rows])
    models = _unique([row["model"] for row in rows])
    solvers = _unique([row["solver"] for row in rows])
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    styles = {s: (["-", "--", ":", "-."][i % 4], "os^vDP"[i % 6]) for i, s in enumerate(solvers)}
    fig, axes = plt.subplots(1, len(cfgs), figsize=(5 * len(cfgs), 4), sharey=True, squeeze=False)
    for ax, cfg in zip(axes[0], cfgs, strict=True):
        for model in models:
            for solver in solvers:
                points = sorted((row["nfe"], row["all_correct"]) for row in rows
                                if row["model"] == model and row["solver"] == solver and row["cfg"] == cfg)
                if not points:
                    continue
                line, marker = styles[solver]
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, linestyle="none" if solver == ADAPTIVE else line, marker=marker, markersize=7,
                        color=colours[model], label=f"{model} {solver}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("NFE (solver evaluations per image)")
        ax.set_title(f"guidance {cfg:g}" + ("" if cfg > 1.0 else " (none)"))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("shapes all-correct")
    # One legend beside the panels (every panel has the same lines), where it can hide no point.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ command


def run_sweep(
    ckpt: Sequence[str],
    out: str = "runs/sweep",
    solvers: Sequence[str] = DEFAULT_SOLVERS,
    steps: Sequence[int] = DEFAULT_STEPS,
    cfg_scales: Sequence[float] = DEFAULT_CFG_SCALES,
    num: int = 128,
    seed: int = EVAL_SEED,
    batch_size: int = 128,
    precision: str = "fp32",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    device: str = "cpu",
    no_ema: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep every checkpoint over every setting, write sweep.json / .csv / .md / .png under ``out``; returns
    the report (``rows``, ``settings``, ``models``, ``git_sha``, ``fewest_steps``)."""
    solvers, cfg_scales = _unique(solvers), _unique([float(w) for w in cfg_scales])
    steps = sorted(_unique([int(s) for s in steps]))
    check_settings(solvers, steps, cfg_scales, num, batch_size, precision, rtol, atol)
    if not ckpt:
        raise CrossFlowError("give one or more --ckpt NAME=PATH")
    models = [parse_ckpt(spec) for spec in ckpt]  # every path checked before the first (slow) model load
    labels = [m.label for m in models]
    repeated = next((name for name in labels if labels.count(name) > 1), None)
    if repeated is not None:
        raise CrossFlowError(f"two checkpoints are labelled {repeated!r}; name them with --ckpt NAME=PATH")
    fixed_steps = steps if any(s != ADAPTIVE for s in solvers) else []
    settings = settings_for(solvers, fixed_steps, cfg_scales)

    rows: list[dict[str, Any]] = []
    model_info: list[dict[str, Any]] = []
    with tqdm(total=len(models) * len(settings), desc="sweep", unit="setting", disable=not progress,
              file=sys.stderr) as bar:
        for spec in models:
            pipe = CrossFlowPipeline.from_pretrained(spec.path, device=device, use_ema=not no_ema)
            # Same seed -> same prompts for every model of one image size (the jitter scales with the canvas).
            prompts = shapes_prompt_set(num, seed, "train", pipe.config.codec.image_size)
            assert prompts.attributes is not None
            rows += sweep_model(pipe, spec.label, settings, prompts.captions, prompts.attributes, seed, batch_size,
                                precision, rtol, atol, bar)
            model_info.append({"label": spec.label, "path": spec.path,
                               "kind": getattr(pipe.config, "kind", "crossflow"),
                               "image_size": pipe.config.codec.image_size})
            del pipe  # one model in memory at a time

    summary = fewest_steps_summary(rows)
    report: dict[str, Any] = {
        "command": "crossflow sweep", "git_sha": git_sha(), "models": model_info,
        "settings": {"solvers": solvers, "steps": fixed_steps, "cfg_scales": cfg_scales, "num": num, "seed": seed,
                     "batch_size": batch_size, "precision": precision, "rtol": rtol, "atol": atol,
                     "device": device, "use_ema": not no_ema, "phrasing": "train", "threads": torch.get_num_threads(),
                     "nfe": "solver calls of the guided velocity function per image (mean over images for dopri5)",
                     "model_evals": "nfe x 2 with guidance (cfg > 1: conditional + unconditional branch), else nfe"},
        "rows": rows,
        "fewest_steps": summary,
    }
    out_dir = Path(out)
    write_tables(out_dir, report)  # before the plot: a missing matplotlib must not cost the numbers
    print(markdown_table(rows), end="")
    if summary:
        print(format_summary(summary))
    else:
        print(f"(no fewest-steps summary: it needs euler with {REFERENCE_STEPS} in --steps as the reference)")
    plot(rows, out_dir / "sweep.png")
    print(f"wrote {out_dir}/sweep.json, sweep.csv, sweep.md and sweep.png")
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`run_sweep`."""
    p = argparse.ArgumentParser(prog="crossflow sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", default=[], metavar="[NAME=]PATH",
                   help="a checkpoint (.ckpt, sharded folder, .safetensors or saved folder), optionally labelled; "
                        "repeat for several models")
    p.add_argument("--solvers", nargs="*", default=list(DEFAULT_SOLVERS), metavar="SOLVER",
                   help=f"any of {', '.join(SOLVERS)} (default {' '.join(DEFAULT_SOLVERS)})")
    p.add_argument("--steps", nargs="*", type=int, default=list(DEFAULT_STEPS), metavar="N",
                   help=f"step counts of the fixed-step solvers (default {' '.join(map(str, DEFAULT_STEPS))})")
    p.add_argument("--cfg-scales", nargs="*", type=float, default=list(DEFAULT_CFG_SCALES), metavar="W",
                   help=f"guidance scales, 1 = none (default {' '.join(map(str, DEFAULT_CFG_SCALES))})")
    p.add_argument("--num", type=int, default=128, help="shapes prompts (default 128)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"prompt and sampling seed (default {EVAL_SEED})")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--precision", default="fp32", help="fp32, or bf16 autocast (default fp32)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"dopri5's relative tolerance (default {DEFAULT_RTOL})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"dopri5's absolute tolerance (default {DEFAULT_ATOL})")
    p.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--no-ema", action="store_true", help="sample the raw weights instead of the EMA copy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(args: list[str] | None = None) -> None:
    ns = vars(build_parser().parse_args(args))
    ns["progress"] = not ns.pop("no_progress")
    with exit_on_user_error():
        run_sweep(**ns)


if __name__ == "__main__":
    main()
