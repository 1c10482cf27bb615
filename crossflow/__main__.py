"""``crossflow <command> ...`` (also ``python -m crossflow``): one entry point for every CrossFlow tool.

Each command is the ``main`` of its module, imported only when run (the training stack is slow to import).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("crossflow.cli", "train or fine-tune (LightningCLI: crossflow train fit --config configs/demo.yaml)"),
    "prepare": ("crossflow.prepare", "turn image folders / jsonl / csv / web shards into training shards"),
    "sample": ("crossflow.sample_cli", "generate images from a checkpoint"),
    "eval": ("crossflow.eval.run", "generate for a prompt set and measure: shapes accuracy, FID/KID, alignment"),
    "edit": ("crossflow.editing.cli", "latent and weight-space tools: interpolate, arithmetic, invert, sdedit, cycle, drag, sigma, attention, w2w-*"),
    "sweep": ("crossflow.eval.sweep", "shapes accuracy vs NFE over solvers, step counts and guidance scales"),
    "evaluate": ("crossflow.eval.evaluate", "score a checkpoint with the shapes evaluator"),
    "export": ("crossflow.checkpoint", "export a checkpoint's weights to safetensors"),
    "shapes": ("crossflow.data.shards", "write the embedded shapes dataset as shards"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: crossflow <command> [options]   (crossflow <command> --help)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"crossflow {command}", *rest]  # argparse-based mains read their program name from here
    result = importlib.import_module(COMMANDS[command][0]).main(rest)
    if isinstance(result, int) and result:
        raise SystemExit(result)


if __name__ == "__main__":
    main()
