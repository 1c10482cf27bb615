"""Turn a CrossFlow checkpoint into a folder for sampling and fine-tuning.

``python -m crossflow.checkpoint export --ckpt runs/demo/checkpoints/last.ckpt --out exported/demo`` writes
``config.json`` + ``model.safetensors`` (EMA weights by default). The input may be a Lightning ``.ckpt``, a
``.safetensors`` file or a saved folder; loading never executes pickled code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossflow.errors import exit_on_user_error
from crossflow.inference import CrossFlowPipeline


def export(ckpt: str, out: str, no_ema: bool = False) -> Path:
    """Write ``out/config.json`` and ``out/model.safetensors`` from any checkpoint ``ckpt``."""
    pipe = CrossFlowPipeline.from_pretrained(ckpt, use_ema=not no_ema)
    directory = pipe.save_pretrained(out)
    print(f"exported {ckpt} ({'raw' if no_ema else 'EMA where present'} weights) to {directory}/")
    return directory


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crossflow.checkpoint", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("export", help="checkpoint -> config.json + model.safetensors")
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt, .safetensors file or saved folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-ema", action="store_true", help="export the raw training weights instead of the EMA")
    ns = parser.parse_args(args)
    with exit_on_user_error():
        export(ns.ckpt, ns.out, ns.no_ema)


if __name__ == "__main__":
    main()
