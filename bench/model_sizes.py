"""Parameter counts and forward FLOPs per sample of every flow-transformer preset (and the demo model).

Built on the meta device: nothing is allocated, so the 1B preset is counted on a laptop.
FLOPs: crossflow.perf.forward_flops_per_sample (what it counts is documented there).
Run: python bench/model_sizes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

from crossflow.config import ModelConfig  # noqa: E402
from crossflow.models.codec import CodecConfig  # noqa: E402
from crossflow.models.crossflow import CrossFlowModel  # noqa: E402
from crossflow.models.transformer import PRESETS, FlowTransformer, FlowTransformerConfig  # noqa: E402
from crossflow.perf import forward_flops_per_sample  # noqa: E402


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    rows = []
    for name in PRESETS:
        for c, size, patch, label in ((4, 32, 2, "VAE latent 4×32×32, patch 2 (256 px)"), (3, 32, 4, "pixels 3×32×32, patch 4")):
            cfg = FlowTransformerConfig.from_preset(name, in_channels=c, input_size=size, patch_size=patch)
            with torch.device("meta"):
                model = FlowTransformer(cfg)
            rows.append([name, label, cfg.width, cfg.depth, cfg.num_heads, cfg.num_patches,
                         f"{count(model) / 1e6:.1f} M", f"{forward_flops_per_sample(cfg) / 1e9:.2f}"])
    body = table(["preset", "latent", "width", "depth", "heads", "tokens", "params", "fwd GFLOPs/sample"], rows)

    demo = ModelConfig()  # configs/demo.yaml uses these defaults: MiniLM (384-d, 24 tokens), pixels 32, tiny
    with torch.device("meta"):
        full = CrossFlowModel(demo, text_dim=384)
    body += "\n\nThe demo model (configs/demo.yaml), trainable parts: " + ", ".join(
        f"{part} {count(getattr(full, part)) / 1e6:.2f} M" for part in ("variational", "flow", "alignment")
    ) + f"; total {count(full) / 1e6:.2f} M (+ the frozen all-MiniLM-L6-v2 text encoder, 22.7 M)."
    paper = ModelConfig(codec=CodecConfig(kind="vae", image_size=256), preset="xl", patch_size=2)
    paper.text_encoder.max_length = 77
    paper.variational.width, paper.variational.depth, paper.variational.num_heads, paper.variational.token_dim = 1024, 6, 16, 64
    with torch.device("meta"):
        big = CrossFlowModel(paper, text_dim=768)
    body += "\nThe paper-scale model (configs/t2i_256px_xl.yaml), trainable parts: " + ", ".join(
        f"{part} {count(getattr(big, part)) / 1e6:.1f} M" for part in ("variational", "flow", "alignment")
    ) + f"; total {count(big) / 1e9:.3f} B (+ CLIP ViT-L/14 text tower, 123 M, frozen)."
    update_section("model_sizes", "Model presets: parameters and FLOPs", "python bench/model_sizes.py", body)


if __name__ == "__main__":
    main()
