"""SDPA kernels on CPU: forward+backward time of the flash and math paths at the demo's attention shapes.

Why crossflow.models.layers picks the math kernel when training on CPU in bf16: the fused CPU flash
kernel's backward is the slow one there. Also times one whole demo training step with each choice.
Run: python bench/attention_cpu.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402
from throughput import train_rate  # noqa: E402

from crossflow.lit_module import CrossFlowLitModule  # noqa: E402
from crossflow.models import layers  # noqa: E402

# (batch, heads, tokens, head dim): the demo's flow transformer (64 patches + indicator) and its VE (24 tokens).
SHAPES = {"flow (64, 4, 65, 32)": (64, 4, 65, 32), "VE (64, 4, 24, 32)": (64, 4, 24, 32)}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def attention_ms(shape: tuple[int, ...], dtype: torch.dtype, backend: SDPBackend, repeats: int, grad: bool) -> float:
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=grad) for _ in range(3))

    def run() -> None:
        with sdpa_kernel(backend), torch.set_grad_enabled(grad):
            out = F.scaled_dot_product_attention(q, k, v)
        if grad:
            out.float().sum().backward()

    for _ in range(3):
        run()
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for label, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            for grad in (True, False):
                times = {name: attention_ms(shape, dtype, b, args.repeats, grad) for name, b in BACKENDS.items()}
                what = "fwd+bwd" if grad else "fwd"
                rows.append([label, str(dtype).removeprefix("torch."), what, *(f"{t:.2f}" for t in times.values())])
    body = table(["attention", "dtype", "pass", "flash ms", "math ms"], rows)

    torch.manual_seed(0)
    module = CrossFlowLitModule()  # the demo model
    chosen = train_rate(module, 64, args.repeats, "bf16")
    with mock.patch.object(layers, "_needs_math_kernel", lambda q: False):
        flash = train_rate(module, 64, args.repeats, "bf16")
    body += (
        "\n\nWhole demo training step (bf16 autocast, batch 64, cached text states): "
        f"{64 / flash * 1e3:.0f} ms with the flash kernel, **{64 / chosen * 1e3:.0f} ms** with the math kernel "
        "that `crossflow.models.layers` picks when training on CPU in bf16/fp16 (sampling keeps the flash forward)."
    )
    update_section("attention_cpu", "Attention kernels on CPU", "python bench/attention_cpu.py", body)
    print(body)


if __name__ == "__main__":
    main()
