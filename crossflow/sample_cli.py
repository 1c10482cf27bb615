"""``python sample.py --ckpt PATH --prompt "..."``: a thin CLI over CrossFlowPipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from crossflow.errors import CrossFlowError, exit_on_user_error
from crossflow.inference import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    CrossFlowPipeline,
    check_temperature,
    make_grid,
)
from crossflow.sampling import DEFAULT_ATOL, DEFAULT_RTOL, SOLVERS, Solver


def sample(
    ckpt: str,
    prompt: list[str],
    num: int = 4,
    steps: int = DEFAULT_NUM_STEPS,
    cfg_scale: float = DEFAULT_GUIDANCE_SCALE,
    temperature: float = 1.0,
    seed: int = 0,
    solver: Solver = "euler",
    out: str = "samples",
    device: str = "cpu",
    no_ema: bool = False,
    upscale: int = 4,
    lora: str | None = None,
    lora_scale: float = 1.0,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> Path:
    """Sample images from a CrossFlow checkpoint and write a PNG grid plus one PNG per image.

    Args:
        ckpt: Lightning checkpoint (.ckpt), exported .safetensors file, or a save_pretrained folder.
        prompt: One or more prompts (repeat --prompt, or pass a list).
        num: Images per prompt.
        steps: ODE solver steps from the text latent (t = 0) to the image (t = 1); dopri5 chooses its own.
        cfg_scale: Classifier-free guidance scale (1 = none).
        temperature: Scale τ of the VE's σ when drawing z_text (1 = as trained, 0 = μ only: one image per prompt).
        seed: Random seed: the same seed gives identical pixels.
        solver: euler (1 evaluation per step), midpoint or heun (2 per step), or dopri5 (adaptive; needs the
            ``ode`` extra, torchdiffeq).
        out: Output folder (grid.png and NNN.png files).
        device: cpu, cuda, cuda:1, ...
        no_ema: Use the raw training weights instead of the EMA weights.
        upscale: Nearest-neighbour upscale factor for the saved PNGs (small images are hard to see).
        lora: A LoRA adapter file (``lora.safetensors`` of a LoRA fine-tune) merged onto ``ckpt``, its base.
        lora_scale: Strength of the LoRA update (0 = the base model, 1 = as trained); without ``lora`` it scales
            a LoRA fine-tune checkpoint's own adapters.
        rtol: dopri5's relative tolerance (other solvers ignore it).
        atol: dopri5's absolute tolerance (other solvers ignore it).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if num <= 0:
        raise CrossFlowError(f"--num must be positive, got {num}")
    if steps <= 0:
        raise CrossFlowError(f"--steps must be positive, got {steps}")
    if cfg_scale < 1.0:
        raise CrossFlowError(f"--cfg-scale must be >= 1 (1 = no guidance), got {cfg_scale}")
    check_temperature(temperature, "--temperature")
    if not prompts or any(not p.strip() for p in prompts):
        raise CrossFlowError("--prompt must be a non-empty string")
    pipe = CrossFlowPipeline.from_pretrained(ckpt, device=device, use_ema=not no_ema, lora=lora, lora_scale=lora_scale)
    all_prompts = [p for p in prompts for _ in range(num)]
    generator = torch.Generator(device=device).manual_seed(seed)
    # dopri5 picks its step count as it goes: an open-ended bar.
    with tqdm(total=None if solver == "dopri5" else steps, desc="sampling", unit="step", file=sys.stderr) as bar:
        images = pipe(
            all_prompts, num_steps=steps, guidance_scale=cfg_scale, solver=solver, generator=generator, temperature=temperature,
            progress=lambda i: bar.update(1), rtol=rtol, atol=atol,
        )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    big = [img.resize((img.width * upscale, img.height * upscale), 0) for img in images]
    for i, img in enumerate(big):
        img.save(out_dir / f"{i:03d}.png")
    grid_path = out_dir / "grid.png"
    make_grid(big, columns=num).save(grid_path)
    print(f"wrote {len(images)} images for {len(prompts)} prompt(s) to {out_dir}/ (grid: {grid_path})")
    return grid_path


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`sample` (``--help`` shows each option's meaning and default)."""
    p = argparse.ArgumentParser(prog="sample.py", description="Sample images from a CrossFlow checkpoint.")
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt, exported .safetensors, or a save_pretrained folder")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    p.add_argument("--num", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--steps", type=int, default=DEFAULT_NUM_STEPS, help=f"solver steps (default {DEFAULT_NUM_STEPS})")
    p.add_argument("--cfg-scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                   help=f"classifier-free guidance scale, 1 = none (default {DEFAULT_GUIDANCE_SCALE})")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the text latent's σ (default 1 = as trained; 0 = μ only, one image per prompt)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical pixels")
    p.add_argument("--solver", choices=SOLVERS, default="euler",
                   help="ODE solver: euler (1 NFE/step), midpoint, heun (2 NFE/step), dopri5 (adaptive, needs "
                        "torchdiffeq: pip install 'crossflow[ode]') (default euler)")
    p.add_argument("--out", default="samples", help="output folder (default samples/)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--no-ema", action="store_true", help="use the raw training weights instead of the EMA weights")
    p.add_argument("--upscale", type=int, default=4, help="nearest-neighbour upscale of the saved PNGs (default 4)")
    p.add_argument("--lora", default=None,
                   help="a LoRA adapter file (lora.safetensors of a LoRA fine-tune) merged onto --ckpt, its base model")
    p.add_argument("--lora-scale", type=float, default=1.0,
                   help="strength of the LoRA update: 0 = base model, 1 = as trained (default 1)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help=f"dopri5's relative tolerance (default {DEFAULT_RTOL}; other solvers ignore it)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help=f"dopri5's absolute tolerance (default {DEFAULT_ATOL}; other solvers ignore it)")
    return p


def main(args: list[str] | None = None) -> None:
    ns = build_parser().parse_args(args)
    with exit_on_user_error():
        sample(**vars(ns))


if __name__ == "__main__":
    main()
