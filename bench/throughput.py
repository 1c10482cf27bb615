"""Train-step and sampling throughput of the demo model (configs/demo.yaml) on this machine.

Measures the real LightningModule objective + fused AdamW step (no Lightning loop overhead: that part is
logged as perf/samples_per_s during training), with cached text-encoder states as in steady-state training,
and CrossFlowPipeline sampling at the demo defaults (50 Euler steps).
Run: python bench/throughput.py [--steps 20] [--precision bf16|fp32]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

from crossflow.data.shapes import make_prompts  # noqa: E402
from crossflow.inference import CrossFlowPipeline  # noqa: E402
from crossflow.lit_module import CrossFlowLitModule  # noqa: E402


def train_rate(module: CrossFlowLitModule, batch_size: int, steps: int, precision: str) -> float:
    prompts = make_prompts(batch_size, seed=0)
    images = torch.stack([torch.from_numpy(np.asarray(p.image)).permute(2, 0, 1).float() / 255 for p in prompts])
    captions = [p.caption for p in prompts]
    opt = module.configure_optimizers()["optimizer"]
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

    def step() -> None:
        with ctx():
            loss = module.compute_losses({"image": images, "caption": captions})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - t0)


def sample_rate(module: CrossFlowLitModule, batch_size: int, num_steps: int, guidance: float, precision: str) -> float:
    pipe = CrossFlowPipeline(module.model_config, module.model.eval(), module.text_encoder, module.codec)
    prompts = [p.caption for p in make_prompts(batch_size, seed=1)]
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    with ctx():
        pipe(prompts[:4], num_steps=2, guidance_scale=guidance)
        t0 = time.perf_counter()
        pipe(prompts, num_steps=num_steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(0))
    module.model.train()
    return batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    module = CrossFlowLitModule()  # the demo defaults: MiniLM, pixels 32, tiny preset
    rows = []
    for precision in ("fp32", "bf16"):
        rows.append([precision, "train step (batch 64)", f"{train_rate(module, args.batch_size, args.steps, precision):.0f}"])
        for guidance in (1.0, 2.0):
            rate = sample_rate(module, 256, 50, guidance, precision)
            rows.append([precision, f"sampling, 50 Euler steps, cfg {guidance} (batch 256)", f"{rate:.1f}"])
    body = table(["precision", "what", "samples/s"], rows)
    body += ("\n\nGuidance > 1 evaluates the model twice per step (conditional + unconditional branch). The training "
             "loop in Lightning adds data loading, logging and EMA on top: see `perf/samples_per_s` in a run's log.")
    update_section("throughput", "Demo model throughput on CPU", "python bench/throughput.py", body)


if __name__ == "__main__":
    main()
