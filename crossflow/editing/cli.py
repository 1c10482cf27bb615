"""``crossflow edit <verb>``: move through a CrossFlow model's text-latent space from the command line.

    crossflow edit interpolate --ckpt CKPT --a "a small red circle" --b "a small blue circle" --frames 11
    crossflow edit arithmetic  --ckpt CKPT --expr "a red circle + a square - a circle" --seeds 8
    crossflow edit invert      --ckpt CKPT --image img.png                # image -> z_text -> image again
    crossflow edit sdedit      --ckpt CKPT --image img.png --prompt "a green square" --t0 0.5 --method sde
    crossflow edit cycle       --ckpt CKPT --image img.png --source-prompt "a red square" --target-prompt "a blue square"
    crossflow edit drag        --ckpt CKPT --image img.png --prompt "a red square" --from 8 8 --to 24 24 --method sde
    crossflow edit sigma       --ckpt CKPT --prompt "a red circle"       # is there noise in the VE to use?
    crossflow edit attention   --ckpt CKPT --prompt "a blue circle" --edit "a red circle" --lam 1.0 --tau 0.5
    crossflow edit w2w-train   --ckpt CKPT --instances 350 --rank 2 --train-steps 3000   # a bank of instance LoRAs
    crossflow edit w2w-pca     --bank runs/edit/bank.safetensors --k 20 --holdout 50      # their weight space
    crossflow edit w2w-sample  --ckpt CKPT --space runs/edit/space.safetensors --num 8     # new identities
    crossflow edit w2w-edit    --ckpt CKPT --space SPACE --bank BANK --instance 310 --attribute aspect --amount 0.3
    crossflow edit w2w-invert  --ckpt CKPT --space SPACE --image img.png                  # one image -> a model

Every verb writes PNGs (and JSON where there are numbers) to ``--out`` and prints what it wrote. The library
behind it: crossflow/editing/latent_ops.py (posteriors, interpolation, arithmetic) and crossflow/editing/sde.py
(SDE sampling, inversion, cycle-consistent encoding, SDEdit), crossflow/editing/drag.py and
crossflow/editing/attention.py (FluxSpace-style attention-output and text-latent edits), crossflow/weight_space
(the w2w-* verbs: weights2weights-style spaces of instance fine-tunes; docs/weight_space.md).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from crossflow.editing import latent_ops, sde
from crossflow.errors import CrossFlowError, exit_on_user_error
from crossflow.inference import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    check_temperature,
    make_grid,
    to_pil,
)


def _pipe(args: argparse.Namespace) -> CrossFlowPipeline:
    return CrossFlowPipeline.from_pretrained(args.ckpt, device=args.device)


def _generator(args: argparse.Namespace) -> torch.Generator:
    return torch.Generator(device=args.device).manual_seed(args.seed)


def _out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _images(paths: list[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise CrossFlowError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except OSError as err:
            raise CrossFlowError(f"cannot read image {path}: {err}") from None
    return images


def _save_row(images: torch.Tensor, path: Path) -> Path:
    make_grid(to_pil(images), columns=len(images)).save(path)
    return path


def _decode(pipe: CrossFlowPipeline, latents: torch.Tensor) -> torch.Tensor:
    return pipe.codec.decode(latents).float().cpu()


def cmd_interpolate(args: argparse.Namespace) -> dict[str, Any]:
    pipe, out = _pipe(args), _out(args)
    frames, alphas = latent_ops.interpolate_with_alphas(
        pipe, args.a, args.b, num_frames=args.frames, mode=args.mode, naive=args.naive, num_steps=args.steps,
        guidance_scale=args.cfg_scale, generator=_generator(args), spacing=args.spacing,
        arc_rounds=args.arc_rounds)
    latent_ops.save_strip(frames, out / "strip.png")
    latent_ops.save_gif(frames, out / "interpolation.gif")
    return {"frames": args.frames, "mode": args.mode, "naive": args.naive, "spacing": args.spacing,
            "arc_rounds": args.arc_rounds if args.spacing == "arc" else 0,
            "alphas": [round(float(a), 4) for a in alphas],
            "adjacent_l2": [round(float(d), 4) for d in latent_ops.adjacent_distances(frames)],
            "smoothness_ratio (max / median adjacent L2)": round(latent_ops.smoothness_ratio(frames), 4),
            "files": ["strip.png", "interpolation.gif"]}


def cmd_arithmetic(args: argparse.Namespace) -> dict[str, Any]:
    pipe, out = _pipe(args), _out(args)
    images = latent_ops.arithmetic(pipe, args.expr, num_seeds=args.seeds, num_steps=args.steps,
                                   guidance_scale=args.cfg_scale, generator=_generator(args),
                                   restandardise=not args.no_restandardise)
    _save_row(images, out / "arithmetic.png")
    return {"expression": args.expr, "terms": latent_ops.parse_expression(args.expr), "seeds": args.seeds,
            "files": ["arithmetic.png"]}


def cmd_invert(args: argparse.Namespace) -> dict[str, Any]:
    images = _images(args.image)  # before the slow model load
    pipe, out = _pipe(args), _out(args)
    source = sde.encode_images(pipe, images)
    z_text = sde.invert_image(pipe, source, num_steps=args.steps, guidance_scale=args.cfg_scale, solver=args.solver,
                              restore=not args.keep_clipped)
    recon = pipe.generate_latents(z_text, num_steps=args.steps, guidance_scale=args.cfg_scale,
                                  solver="heun" if args.solver == "heun" else "euler")
    if pipe.codec.latent_bounds is not None:  # compared as the saved image holds it
        recon = recon.clamp(*pipe.codec.latent_bounds)
    _save_row(torch.cat([_decode(pipe, source), _decode(pipe, recon)]), out / "source_and_reconstruction.png")
    from safetensors.torch import save_file

    save_file({"z_text": z_text.contiguous().cpu()}, str(out / "z_text.safetensors"))
    mse = ((recon.float() - source) ** 2).mean(dim=(1, 2, 3))
    return {"latent_mse_per_image": [float(m) for m in mse], "steps": args.steps, "solver": args.solver,
            "restored_clipped": not args.keep_clipped and pipe.codec.latent_bounds is not None,
            "files": ["source_and_reconstruction.png", "z_text.safetensors"]}


def cmd_sdedit(args: argparse.Namespace) -> dict[str, Any]:
    images = _images(args.image)  # before the slow model load
    pipe, out = _pipe(args), _out(args)
    source = sde.encode_images(pipe, images)
    prompts = args.prompt * len(source) if len(args.prompt) == 1 else args.prompt
    edited = sde.edit_sdedit(pipe, source, prompts, args.t0, method=args.method, rho=args.rho,
                             guidance_scale=args.cfg_scale, generator=_generator(args), num_steps=args.steps)
    _save_row(torch.cat([_decode(pipe, source), _decode(pipe, edited)]), out / "source_and_edit.png")
    return {"prompts": prompts, "t0": args.t0, "method": args.method, "rho": args.rho,
            "files": ["source_and_edit.png"]}


def cmd_cycle(args: argparse.Namespace) -> dict[str, Any]:
    images = _images(args.image)  # before the slow model load
    pipe, out = _pipe(args), _out(args)
    source = sde.encode_images(pipe, images)
    n = len(source)
    src = args.source_prompt * n if len(args.source_prompt) == 1 else args.source_prompt
    tgt = args.target_prompt * n if len(args.target_prompt) == 1 else args.target_prompt
    edited = sde.cycle_edit(pipe, source, src, tgt, rho=args.rho, num_steps=args.steps,
                            guidance_scale=args.cfg_scale, generator=_generator(args))
    _save_row(torch.cat([_decode(pipe, source), _decode(pipe, edited)]), out / "source_and_edit.png")
    return {"source_prompts": src, "target_prompts": tgt, "rho": args.rho, "files": ["source_and_edit.png"]}


def cmd_drag(args: argparse.Namespace) -> dict[str, Any]:
    from crossflow.editing.drag import edit_drag

    images = _images(args.image)
    pipe, out = _pipe(args), _out(args)
    source = sde.encode_images(pipe, images)
    n = len(source)
    edited = edit_drag(pipe, source, args.prompt, [tuple(args.src)] * n, [tuple(args.dst)] * n, t0=args.t0,
                       patch=args.patch, method=args.method, rho=args.rho, guidance_scale=args.cfg_scale,
                       num_steps=args.steps, generator=_generator(args))
    _save_row(torch.cat([_decode(pipe, source), _decode(pipe, edited)]), out / "source_and_drag.png")
    return {"from": args.src, "to": args.dst, "patch": args.patch, "t0": args.t0, "method": args.method,
            "rho": args.rho, "files": ["source_and_drag.png"]}


def cmd_attention(args: argparse.Namespace) -> dict[str, Any]:
    from crossflow.editing import attention

    pipe, out = _pipe(args), _out(args)
    prompts = [args.prompt] * args.seeds
    blocks = None if args.coarse else attention.AttentionEdit(
        args.lam, args.tau, args.start_step, None if args.blocks is None else tuple(args.blocks),
        relative=args.relative,
    ).check(len(pipe.model.flow.blocks), args.steps)  # block indices against the model, before any sampling
    # The same seed for both: the edit's z_base is the plain sample's z_text, so "before" is its λ = 0 image.
    before = pipe(prompts, num_steps=args.steps, guidance_scale=args.cfg_scale, generator=_generator(args),
                  output_type="pt")
    assert isinstance(before, torch.Tensor)
    sampling: dict[str, Any] = dict(num_steps=args.steps, guidance_scale=args.cfg_scale, generator=_generator(args))
    if args.coarse:
        result = attention.edit_coarse(pipe, prompts, args.edit, args.lam, prior_prompt=args.prior_prompt, **sampling)
        settings: dict[str, Any] = {"variant": "coarse (text latent)", "prior_prompt": args.prior_prompt}
    else:
        result = attention.edit_attention(pipe, prompts, args.edit, args.lam, args.tau, args.start_step, args.blocks,
                                          **sampling)
        settings = {"variant": "attention output", "tau": args.tau, "start_step": args.start_step,
                    "blocks": list(blocks or ()),
                    "edited_block_calls": result.edited_calls,
                    "mask_coverage": None if result.mask_coverage is None else round(result.mask_coverage, 4)}
    _save_row(before, out / "before.png")
    _save_row(result.images, out / "after.png")
    change = (result.images - before).abs().mean(dim=(1, 2, 3))
    return {"prompt": args.prompt, "edit": args.edit, "lam": args.lam, **settings, "seeds": args.seeds,
            "steps": args.steps, "cfg_scale": args.cfg_scale,
            "mean_abs_pixel_change_per_image": [round(float(c), 5) for c in change],
            "files": ["before.png", "after.png"]}


def _tau(text: str) -> float | None:
    """--tau: a number, or 'none' for no mask."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or 'none', got {text!r}") from None


def _check_attention_args(args: argparse.Namespace) -> None:
    """The attention verb's flags, checked before the model loads (block indices need the model: checked there)."""
    from crossflow.editing.attention import check_lambda, check_tau

    check_lambda(args.lam)
    if args.coarse:
        if args.tau is not None or args.start_step != 0 or args.blocks is not None or args.relative:
            raise CrossFlowError("--tau, --start-step, --blocks and --relative set the attention edit; --coarse edits "
                                 "the text latent and takes only --lam (and --prior-prompt)")
        return
    check_tau(args.tau)
    if not 0 <= args.start_step < args.steps:
        raise CrossFlowError(f"--start-step must be in [0, {args.steps - 1}] (--steps {args.steps}), got {args.start_step}")
    if args.blocks is not None and min(args.blocks) < 0:
        raise CrossFlowError(f"block {min(args.blocks)} is out of range: block indices start at 0")


def cmd_sigma(args: argparse.Namespace) -> dict[str, Any]:
    pipe = _pipe(args)
    return latent_ops.sigma_stats(latent_ops.text_posterior(pipe, args.prompt))


# ------------------------------------------------------------------------------------------- weight space (w2w-*)


def _w2w_space(args: argparse.Namespace, pipe: CrossFlowPipeline | None = None) -> Any:
    """The --space file, checked against the --ckpt model when one is loaded."""
    from crossflow.weight_space.bank import check_base
    from crossflow.weight_space.space import WeightSpace

    space = WeightSpace.load(args.space)
    if pipe is not None:
        check_base(space.metadata.get("base_config"), pipe.model, f"space {args.space}")
    return space


def _w2w_sample(pipe: CrossFlowPipeline, space: Any, prompt: Any, vector: torch.Tensor, args: argparse.Namespace,
                **kw: Any) -> torch.Tensor:
    from crossflow.weight_space.generate import sample_instance

    return sample_instance(pipe, prompt, space.metadata.get("kind", "lora"), vector, args.seeds, _generator(args),
                           num_steps=args.steps, guidance_scale=args.cfg_scale,
                           targets=tuple(space.metadata.get("targets", ("q", "v"))),
                           temperature=args.text_temperature, **kw)


def _identity(images: torch.Tensor) -> dict[str, Any]:
    """What the instance evaluator reads off a model's images: one identity, and whether every seed agrees."""
    from crossflow.eval.instances import consistent, measure_instance, summary

    readings = [measure_instance(image) for image in images]
    identity = summary(readings)
    return {"identity": None if identity is None else {k: round(v, 4) if isinstance(v, float) else v
                                                       for k, v in identity.to_dict().items()},
            "consistent": consistent(readings), "objects_found": sum(r is not None for r in readings)}


def cmd_w2w_train(args: argparse.Namespace) -> dict[str, Any]:
    from crossflow.data.shapes import sample_instances
    from crossflow.weight_space.bank import save_bank
    from crossflow.weight_space.generate import render_references, sample_instance
    from crossflow.weight_space.objective import encode_prompt
    from crossflow.weight_space.training import BankTrainConfig, train_bank

    config = BankTrainConfig(kind=args.kind, rank=args.rank, steps=args.train_steps, batch_size=args.batch_size,
                             images_per_instance=args.images_per_instance, lr=args.lr, token=args.token,
                             caption=args.caption, position=args.position, seed=args.seed,
                             precision=args.precision, shared_init=args.shared_init)
    instances = sample_instances(args.instances, args.instance_seed)
    pipe, out = _pipe(args), _out(args)
    bank, record = train_bank(pipe, instances, config, base_checkpoint=str(args.ckpt))
    save_bank(bank, record, out / "bank.safetensors")
    # A look at the first instances: their reference (left), then their models' samples.
    prompt, vectors, rows = encode_prompt(pipe, record.prompt), bank.vectors(), []
    shown = min(args.preview, len(instances))
    for index in range(shown):
        samples = sample_instance(pipe, prompt, record.kind, vectors[index], args.seeds, _generator(args),
                                  num_steps=args.steps, guidance_scale=args.cfg_scale, targets=record.targets,
                                  temperature=args.text_temperature)
        rows += [render_references([instances[index]], pipe.config.codec.image_size, position=args.position), samples]
    if shown:
        make_grid(to_pil(torch.cat(rows)), columns=args.seeds + 1).save(out / "preview.png")
    return {"kind": record.kind, "instances": len(instances), "rank": record.rank, "token": record.token,
            **{k: record.training[k] for k in ("steps", "seconds", "seconds_per_step", "final_flow_mse", "lr")},
            "files": ["bank.safetensors"] + (["preview.png"] if shown else [])}


def cmd_w2w_pca(args: argparse.Namespace) -> dict[str, Any]:
    from crossflow.eval.instances import ATTRIBUTE_NAMES
    from crossflow.weight_space.bank import read_bank, vectors_from_file
    from crossflow.weight_space.space import explained_variance, fit_bank_space

    record, tensors = read_bank(args.bank)
    space = fit_bank_space(record, vectors_from_file(record, tensors), args.k, args.holdout, seed=args.seed)
    out = _out(args)
    space.save(out / "space.safetensors")
    explained = explained_variance(space)
    return {"kind": record.kind, "k": space.k, "models": len(space.metadata["fitted"]),
            "heldout": space.metadata["heldout"], "explained_variance": [round(v, 5) for v in explained],
            "explained_total": round(sum(explained), 5),
            "direction_r2": {name: round(space.direction(name).r2, 4) for name in ATTRIBUTE_NAMES},
            "files": ["space.safetensors"]}


def cmd_w2w_sample(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from crossflow.weight_space.objective import encode_prompt

    pipe, out = _pipe(args), _out(args)
    space = _w2w_space(args, pipe)
    prompt = encode_prompt(pipe, space.metadata["prompt"])
    coeffs = space.sample(args.num, torch.Generator().manual_seed(args.seed), args.temperature)
    rows, models = [], []
    for c in tqdm(coeffs, desc="models"):
        images = _w2w_sample(pipe, space, prompt, space.decode(c), args)  # the same seeds for every model
        rows.append(images)
        models.append({"coefficients": [round(float(v), 4) for v in c], **_identity(images)})
    make_grid(to_pil(torch.cat(rows)), columns=args.seeds).save(out / "samples.png")
    return {"models": models, "consistent_fraction": sum(m["consistent"] for m in models) / len(models),
            "seeds": args.seeds, "temperature": args.temperature, "text_temperature": args.text_temperature,
            "files": ["samples.png"]}


def cmd_w2w_edit(args: argparse.Namespace) -> dict[str, Any]:
    from crossflow.weight_space.bank import read_bank, vectors_from_file
    from crossflow.weight_space.objective import encode_prompt

    pipe, out = _pipe(args), _out(args)
    space = _w2w_space(args, pipe)
    direction = space.direction(args.attribute)
    if args.bank is not None:
        record, tensors = read_bank(args.bank)
        if not 0 <= args.instance < len(record.instances):
            raise CrossFlowError(f"--instance must be in [0, {len(record.instances) - 1}], got {args.instance}")
        coeffs = space.encode(vectors_from_file(record, tensors)[args.instance])
        source: dict[str, Any] = {"instance": args.instance, "attributes": record.instances[args.instance].to_dict(),
                                  "heldout": args.instance in space.metadata.get("heldout", [])}
    else:  # a new identity from the space's Gaussian
        coeffs = space.sample(1, torch.Generator().manual_seed(args.seed))[0]
        source = {"instance": None}
    edited = space.edit(coeffs, direction, args.amount)
    prompt = encode_prompt(pipe, space.metadata["prompt"])
    before = _w2w_sample(pipe, space, prompt, space.decode(coeffs), args)
    early = space.decode(coeffs) if args.t_inject > 0 else None  # delayed injection keeps the model's own layout
    after = _w2w_sample(pipe, space, prompt, space.decode(edited), args, t_inject=args.t_inject, early=early)
    _save_row(before, out / "before.png")
    _save_row(after, out / "after.png")
    return {**source, "attribute": args.attribute, "amount": args.amount, "t_inject": args.t_inject,
            "direction_r2": round(direction.r2, 4),
            "predicted": {"before": round(float(direction.predict(coeffs)), 4),
                          "after": round(float(direction.predict(edited)), 4)},
            "measured": {"before": _identity(before), "after": _identity(after)}, "files": ["before.png", "after.png"]}


def cmd_w2w_invert(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.torch import save_file

    from crossflow.weight_space.inversion import invert
    from crossflow.weight_space.objective import encode_prompt

    images = _images([args.image])  # before the slow model load
    pipe, out = _pipe(args), _out(args)
    space = _w2w_space(args, pipe)
    prompt = encode_prompt(pipe, space.metadata["prompt"])
    source = sde.encode_images(pipe, images)
    result = invert(pipe, space, source, prompt, steps=args.iters, lr=args.lr, batch_size=args.batch_size,
                    prior_weight=args.prior_weight, generator=_generator(args), progress=True)
    save_file({"coefficients": result.coefficients.contiguous()}, str(out / "coefficients.safetensors"))
    samples = _w2w_sample(pipe, space, prompt, space.decode(result.coefficients), args)
    _save_row(torch.cat([_decode(pipe, source), samples]), out / "source_and_samples.png")
    return {"iters": args.iters, "seconds": round(result.seconds, 2), "losses": [round(v, 6) for v in result.losses],
            "source": _identity(_decode(pipe, source)), "samples": _identity(samples),
            "coefficients": [round(float(v), 4) for v in result.coefficients],
            "files": ["coefficients.safetensors", "source_and_samples.png"]}


def _check_w2w_args(args: argparse.Namespace) -> None:
    """The w2w verbs' flags and files, checked before any model loads."""
    from crossflow.weight_space.generate import check_t_inject

    if hasattr(args, "t_inject"):
        check_t_inject(args.t_inject)
    if hasattr(args, "temperature"):
        check_temperature(args.temperature, "--temperature", "the scale of the PC coefficients' std")
    if hasattr(args, "text_temperature"):
        check_temperature(args.text_temperature, "--text-temperature", "the scale of the z_text draws' σ")
    for name in ("space", "bank"):
        path = getattr(args, name, None)
        if path is not None and not Path(path).is_file():
            raise CrossFlowError(f"{name} file not found: {path}")
    for name in ("k", "num", "iters", "train_steps", "rank"):
        if getattr(args, name, 1) < 1:
            raise CrossFlowError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if getattr(args, "instances", 2) < 2:
        raise CrossFlowError(f"--instances must be at least 2 (a space needs two models), got {args.instances}")
    if args.verb == "w2w-edit" and (args.bank is None) != (args.instance is None):
        raise CrossFlowError("--bank and --instance go together (the instance to edit); give neither to edit a "
                             "model sampled from the space")


def _common(p: argparse.ArgumentParser, steps: int = DEFAULT_NUM_STEPS, cfg: float = DEFAULT_GUIDANCE_SCALE,
            ckpt: bool = True) -> None:
    if ckpt:
        p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt, sharded folder, .safetensors or saved folder)")
    p.add_argument("--out", default="runs/edit", help="output folder (default runs/edit)")
    p.add_argument("--steps", type=int, default=steps, help=f"solver steps (default {steps})")
    p.add_argument("--cfg-scale", type=float, default=cfg, help=f"guidance scale (default {cfg})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossflow edit", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    commands: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}

    def verb(name: str, fn: Callable[[argparse.Namespace], dict[str, Any]], help: str, **kw: Any) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        _common(p, **kw)
        p.set_defaults(fn=fn)
        commands[name] = fn
        return p

    p = verb("interpolate", cmd_interpolate, "frames between two prompts (shared noise), PNG strip + GIF")
    p.add_argument("--a", required=True, help="first prompt")
    p.add_argument("--b", required=True, help="second prompt")
    p.add_argument("--frames", type=int, default=11)
    p.add_argument("--mode", choices=["lerp", "slerp"], default="lerp", help="how the VE means are blended")
    p.add_argument("--naive", action="store_true", help="lerp two independent z_text draws instead (the baseline)")
    p.add_argument("--spacing", choices=["uniform", "arc"], default="uniform",
                   help="α evenly spaced, or at equal image-space steps (arc: (1 + --arc-rounds)× the renders)")
    p.add_argument("--arc-rounds", type=int, default=latent_ops.DEFAULT_ARC_ROUNDS,
                   help="with --spacing arc: rounds of re-placing the frames (default %(default)s)")

    p = verb("arithmetic", cmd_arithmetic, "z = sum of weighted VE means, e.g. 'a red circle + a square - a circle'")
    p.add_argument("--expr", required=True, help="terms joined by + / -, optional weights: '0.5*a red circle'")
    p.add_argument("--seeds", type=int, default=8, help="images of the result (default 8)")
    p.add_argument("--no-restandardise", action="store_true", help="keep the raw sum's scale")

    p = verb("invert", cmd_invert, "image -> z_text by the ODE backwards, then forward again", cfg=1.0)
    p.add_argument("--image", nargs="+", required=True, help="image file(s) at the model's resolution")
    p.add_argument("--solver", choices=["euler", "heun", "fixed-point"], default="euler",
                   help="inversion solver; fixed-point inverts forward Euler's step exactly (11 NFE a step), "
                        "regeneration then runs Euler")
    p.add_argument("--keep-clipped", action="store_true",
                   help="invert the pixels on the range's bounds as they are, instead of first giving them the "
                        "values the model draws beyond the range (an image file clips them; see restore_clipped)")

    p = verb("sdedit", cmd_sdedit, "SDEdit: start at x_t0 = (1 - t0) z_text(prompt) + t0 z_image(source)")
    p.add_argument("--image", nargs="+", required=True)
    p.add_argument("--prompt", nargs="+", required=True, help="the new prompt (one, or one per image)")
    p.add_argument("--t0", type=float, default=0.5, help="how much of the source to keep (0: none, 1: all)")
    p.add_argument("--method", choices=["ode", "sde"], default="sde")
    p.add_argument("--rho", type=float, default=sde.DEFAULT_RHO, help="SDE: fraction of noise re-drawn per step")

    p = verb("cycle", cmd_cycle, "cycle-consistent edit: encode under the source prompt, replay under the target")
    p.add_argument("--image", nargs="+", required=True)
    p.add_argument("--source-prompt", nargs="+", required=True)
    p.add_argument("--target-prompt", nargs="+", required=True)
    p.add_argument("--rho", type=float, default=sde.DEFAULT_RHO)

    p = verb("drag", cmd_drag, "move the patch around --from to --to at t0, re-noise the source, complete")
    p.add_argument("--image", nargs="+", required=True)
    p.add_argument("--prompt", required=True, help="what the image shows (its VE posterior supplies the noise)")
    p.add_argument("--from", dest="src", type=int, nargs=2, required=True, metavar=("X", "Y"),
                   help="source point in latent pixels (= image pixels for the pixel codec)")
    p.add_argument("--to", dest="dst", type=int, nargs=2, required=True, metavar=("X", "Y"))
    p.add_argument("--patch", type=int, default=12, help="side of the moved square (default 12)")
    p.add_argument("--t0", type=float, default=0.6)
    p.add_argument("--method", choices=["ode", "sde"], default="sde")
    p.add_argument("--rho", type=float, default=sde.DEFAULT_RHO)

    p = verb("sigma", cmd_sigma, "the VE posterior's σ statistics for prompts (how much noise there is to edit with)")
    p.add_argument("--prompt", nargs="+", required=True)

    p = verb("attention", cmd_attention,
             "edit a prompt's images towards another prompt in the attention outputs (FluxSpace), or in z_text (--coarse)")
    p.add_argument("--prompt", required=True, help="what to generate (the 'before' images)")
    p.add_argument("--edit", required=True, help="the edit prompt, e.g. the same caption with another colour")
    p.add_argument("--lam", type=float, default=1.0, help="edit strength λ (0: the plain images; default 1)")
    p.add_argument("--tau", type=_tau, default=None,
                   help="mask threshold in (0, 1): edit only the tokens the edit changes most; 'none' (default): no mask")
    p.add_argument("--start-step", type=int, default=0, help="edit from this sampler step on (default 0: every step)")
    p.add_argument("--blocks", type=int, nargs="+", default=None, help="flow block indices to edit (default: all)")
    p.add_argument("--relative", action="store_true",
                   help="add λ·(edit − base) of the prior-orthogonal outputs, not λ·edit (on the shapes demo: "
                        "--relative --blocks 0 1 --lam 2 edits colour best; docs/attention_edit.md)")
    p.add_argument("--coarse", action="store_true",
                   help="the coarse variant: z = z_base + λ·(d − proj_{z_prior} d), d = z_edit − z_base, no hook")
    p.add_argument("--prior-prompt", default="", help="--coarse: z_prior is this prompt's VE mean (default: empty)")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (default 4)")

    # weights2weights-style spaces of instance fine-tunes (crossflow/weight_space, docs/weight_space.md).
    from crossflow.data.shapes import INSTANCE_TOKEN
    from crossflow.eval.instances import ATTRIBUTE_NAMES
    from crossflow.weight_space.generate import DEFAULT_INSTANCE_GUIDANCE
    from crossflow.weight_space.inversion import (
        DEFAULT_INVERSION_BATCH,
        DEFAULT_INVERSION_LR,
        DEFAULT_INVERSION_STEPS,
    )

    w2w = {"cfg": DEFAULT_INSTANCE_GUIDANCE}  # instance models train the conditional branch only
    p = verb("w2w-train", cmd_w2w_train, "train a bank of instance LoRAs (or text-latent offsets) in one run", **w2w)
    p.add_argument("--instances", type=int, default=350, help="instances in the bank (default 350: 300 + 50 held out)")
    p.add_argument("--instance-seed", type=int, default=0, help="seed of the instances' attributes")
    p.add_argument("--kind", choices=["lora", "text"], default="lora",
                   help="lora: rank-r q/v updates per instance; text: an offset of the prompt's VE mean (comparison)")
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=3000, help="optimizer steps of the whole bank")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images-per-instance", type=int, default=4, help="renders of one instance per batch")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3 lora, 1e-2 text)")
    p.add_argument("--token", default=INSTANCE_TOKEN, help=f"the rare token (default {INSTANCE_TOKEN!r})")
    p.add_argument("--caption", default=None,
                   help="the caption of every instance image (default: 'a photo of <token>')")
    p.add_argument("--position", default=None, help="where every instance image sits (default: the five at random)")
    p.add_argument("--precision", default="32-true",
                   help="Lightning precision of the bank training, e.g. bf16-mixed (faster on a CPU with native "
                        "bf16, or on a GPU)")
    p.add_argument("--shared-init", action="store_true",
                   help="every instance's LoRA A starts from one random draw (the ΔWs then share a row space)")
    p.add_argument("--preview", type=int, default=4, help="instances shown in preview.png (0: none)")
    p.add_argument("--seeds", type=int, default=4, help="samples per previewed instance")

    p = verb("w2w-pca", cmd_w2w_pca, "standardise a bank's instance models and keep the top k principal components",
             ckpt=False)
    p.add_argument("--bank", required=True, help="bank file from w2w-train")
    p.add_argument("--k", type=int, default=20, help="principal components kept (default 20)")
    p.add_argument("--holdout", type=int, default=0, help="leave the bank's last N instances out of the fit")

    p = verb("w2w-sample", cmd_w2w_sample, "new identities: models sampled from the space's Gaussian", **w2w)
    p.add_argument("--space", required=True, help="space file from w2w-pca")
    p.add_argument("--num", type=int, default=8, help="models to sample (one row each)")
    p.add_argument("--seeds", type=int, default=8, help="images per model")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the sampled coefficients' std")

    p = verb("w2w-edit", cmd_w2w_edit, "move a model along an attribute direction (least squares on the PC coefficients)",
             **w2w)
    p.add_argument("--space", required=True)
    p.add_argument("--attribute", choices=ATTRIBUTE_NAMES, default="aspect",
                   help="aspect is log(width/height), hue_cos/hue_sin the hue on the circle, shapes 0/1")
    p.add_argument("--amount", type=float, default=0.3, help="change of the attribute's linear prediction, in its units")
    p.add_argument("--bank", default=None, help="with --instance: edit that bank instance's model (projected on the space)")
    p.add_argument("--instance", type=int, default=None, help="index of the instance in --bank")
    p.add_argument("--t-inject", type=float, default=0.0,
                   help="delayed injection: the unedited model for t < this, the edited one after (0: edited throughout)")
    p.add_argument("--seeds", type=int, default=4, help="images before and after (the same seeds)")

    p = verb("w2w-invert", cmd_w2w_invert, "one image -> the PC coefficients whose model explains it best", **w2w)
    p.add_argument("--space", required=True)
    p.add_argument("--image", required=True, help="an image at the model's resolution")
    p.add_argument("--iters", type=int, default=DEFAULT_INVERSION_STEPS, help="Adam steps on the coefficients")
    p.add_argument("--lr", type=float, default=DEFAULT_INVERSION_LR, help="Adam step in whitened coefficient units")
    p.add_argument("--batch-size", type=int, default=DEFAULT_INVERSION_BATCH, help="t and z_text draws per step")
    p.add_argument("--prior-weight", type=float, default=0.0, help="weight of the Gaussian prior on the coefficients")
    p.add_argument("--seeds", type=int, default=4, help="samples of the inverted model")
    for name in ("w2w-train", "w2w-sample", "w2w-edit", "w2w-invert"):
        # The seed-to-seed spread of an instance model's outlines comes from this noise (docs/weight_space.md).
        verbs.choices[name].add_argument(
            "--text-temperature", type=float, default=1.0,
            help="scale of the z_text draws' σ when sampling (1: as trained; 0: μ alone, one image whatever the seed)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        run(args)


def run(args: argparse.Namespace) -> None:
    """One verb, already parsed."""
    if args.steps <= 0:
        raise CrossFlowError(f"--steps must be positive, got {args.steps}")
    if getattr(args, "ckpt", None) is not None and not Path(args.ckpt).exists():
        raise CrossFlowError(f"checkpoint not found: {args.ckpt}")
    # Cheap checks before the model loads (the library checks again, for Python callers).
    if getattr(args, "t0", 0.0) < 0 or getattr(args, "t0", 0.0) > 1:
        raise CrossFlowError(f"--t0 must be in [0, 1], got {args.t0}")
    if not 0 <= getattr(args, "rho", 0.0) <= 1:
        raise CrossFlowError(f"--rho must be in [0, 1], got {args.rho}")
    if getattr(args, "frames", 2) < 2:
        raise CrossFlowError(f"--frames must be at least 2, got {args.frames}")
    if getattr(args, "seeds", 1) < 1:
        raise CrossFlowError(f"--seeds must be positive, got {args.seeds}")
    if args.verb == "arithmetic":
        latent_ops.parse_expression(args.expr)
    if args.verb == "attention":
        _check_attention_args(args)
    if args.verb.startswith("w2w-"):
        _check_w2w_args(args)
    result = args.fn(args)
    if args.verb != "sigma":
        out = _out(args)
        (out / f"{args.verb}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {', '.join(str(out / f) for f in result['files'])} and {out / (args.verb + '.json')}")
    print(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=2))


if __name__ == "__main__":
    main()
