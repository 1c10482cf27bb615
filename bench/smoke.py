"""What the editing benches share for ``--smoke``: a random demo-shaped model and a throw-away output folder."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from crossflow.inference import CrossFlowPipeline

DOCS = Path(__file__).resolve().parent.parent / "docs"


def random_pipeline(seed: int = 0) -> CrossFlowPipeline:
    """A randomly initialised model of the demo's shape (ModelConfig defaults: 32 px pixels, MiniLM, tiny flow)."""
    from crossflow.config import ModelConfig
    from crossflow.models.flow_model import build_model
    from crossflow.models.text_encoder import FrozenTextEncoder

    config = ModelConfig()
    torch.manual_seed(seed)
    text_encoder = FrozenTextEncoder(config.text_encoder)
    model = build_model(config, text_dim=text_encoder.hidden_size)
    with torch.no_grad():  # off the zero init, so the flow (and its attention) shapes the output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return CrossFlowPipeline(config, model.eval(), text_encoder)


@contextlib.contextmanager
def output_dir(out_dir: str | None, smoke: bool, prefix: str) -> Iterator[Path]:
    """``out_dir`` if given; with ``smoke`` a temporary folder (never overwrite the docs' examples with a random
    model's); else docs/."""
    if out_dir is not None:
        yield Path(out_dir)
    elif smoke:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
    else:
        yield DOCS
