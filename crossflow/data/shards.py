"""Write the shapes dataset to webdataset tar shards (``shapes-000000.tar``, ...), and a small CLI.

Each sample holds ``png`` (image bytes), ``txt`` (caption) and ``json`` (attributes, stated attributes,
caption), keyed ``%08d`` by its index, so any webdataset pipeline (ours or the user's) reads it as is.

    python -m crossflow.data.shards --out data/shapes --num 100000 --seed 0
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from crossflow.data.shapes import P_OMIT, Phrasing, ShapesGenerator

SHARD_PREFIX = "shapes-"
_SHARD_NAME = re.compile(rf"{SHARD_PREFIX}(\d{{6}})\.tar$")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _existing_shards(out_dir: str) -> list[str]:
    return sorted(
        p for p in glob.glob(os.path.join(out_dir, f"{SHARD_PREFIX}*.tar")) if _SHARD_NAME.search(p)
    )


def _prepare_dir(out_dir: str, overwrite: bool) -> None:
    """Create ``out_dir``; refuse to mix with an earlier run's shards unless told to replace them."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot create shard directory {out_dir!r}: {error.strerror or error}.") from error
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ValueError(f"Shard directory {out_dir!r} is not writable.")
    old = _existing_shards(out_dir)
    if old and not overwrite:
        # Stale higher-numbered shards would silently join a smaller new dataset in any glob or pattern.
        raise ValueError(
            f"{out_dir!r} already holds {len(old)} shapes shard(s); pass overwrite=True (CLI: --overwrite) to replace them."
        )
    for path in old:
        os.remove(path)


def write_shapes_shards(
    out_dir: str,
    num_samples: int,
    seed: int,
    samples_per_shard: int = 5000,
    image_size: int = 32,
    phrasing: Phrasing = "train",
    holdout: Sequence[Mapping[str, str]] = (),
    progress: bool = True,
    overwrite: bool = False,
    blend_fraction: float = 0.0,
    p_omit_size: float = P_OMIT,
    p_omit_position: float = P_OMIT,
    supersample: int = 1,
) -> list[str]:
    """Generate ``num_samples`` shapes samples from ``seed`` into tar shards; returns the shard paths in order.

    With ``blend_fraction`` > 0 the blends (:class:`~crossflow.data.shapes.Blend`) also carry a ``blend.json``
    member, B's caption and α (crossflow.data.decode reads it back). ``p_omit_size`` / ``p_omit_position``: how often
    a caption leaves size / position out (DESIGN.md's spec: 0.15 each). ``supersample`` > 1 anti-aliases the
    outlines (:class:`~crossflow.data.shapes.ShapesGenerator`); 1 is the spec's crisp rendering."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}.")
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}.")
    # Build the generator first so bad arguments fail before anything touches the disk.
    generator = ShapesGenerator(seed, image_size=image_size, phrasing=phrasing, holdout=holdout,
                                blend_fraction=blend_fraction, p_omit_size=p_omit_size,
                                p_omit_position=p_omit_position, supersample=supersample)
    _prepare_dir(out_dir, overwrite)
    written: list[str] = []
    pattern = os.path.join(out_dir, f"{SHARD_PREFIX}%06d.tar")
    # A fixed mtime makes the tar bytes depend only on the seed and arguments.
    with wds.ShardWriter(
        pattern, maxcount=samples_per_shard, verbose=0, post=written.append, mtime=0
    ) as sink:
        for index in tqdm(range(num_samples), desc="shapes shards", unit="sample", disable=not progress):
            sample = generator.sample()
            members = {
                "__key__": f"{index:08d}",
                "png": _png_bytes(sample.image),
                "txt": sample.caption,
                "json": sample.to_json(),
            }
            if sample.blend is not None:
                members["blend.json"] = sample.blend.to_json()
            sink.write(members)
    return written


def shard_pattern(out_dir: str) -> str:
    """A webdataset brace pattern covering the contiguous shards in ``out_dir`` (e.g. ``shapes-{000000..000003}.tar``)."""
    shards = _existing_shards(out_dir)
    if not shards:
        raise ValueError(f"No {SHARD_PREFIX}NNNNNN.tar shards found in {out_dir!r}.")
    numbers = [int(_SHARD_NAME.search(path).group(1)) for path in shards]  # type: ignore[union-attr]
    if numbers != list(range(len(numbers))):
        raise ValueError(f"Shards in {out_dir!r} are not numbered 0..{len(numbers) - 1} without gaps.")
    if len(numbers) == 1:
        return shards[0]
    return os.path.join(out_dir, f"{SHARD_PREFIX}{{{0:06d}..{len(numbers) - 1:06d}}}.tar")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset as webdataset shards.")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--num", type=int, required=True, help="number of samples")
    parser.add_argument("--seed", type=int, required=True, help="generator seed")
    parser.add_argument("--samples-per-shard", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--phrasing", choices=("train", "heldout"), default="train")
    parser.add_argument(
        "--holdout",
        default="[]",
        help='JSON list of partial combinations, e.g. \'[{"color": "red", "shape": "triangle"}]\'',
    )
    parser.add_argument("--blend-fraction", type=float, default=0.0,
                        help="fraction of samples rendered between two captions that differ in colour, position or "
                             "size (training for smooth interpolation; default 0)")
    parser.add_argument("--p-omit-size", type=float, default=P_OMIT,
                        help=f"how often a caption leaves the size out (default {P_OMIT}, the dataset's spec)")
    parser.add_argument("--p-omit-position", type=float, default=P_OMIT,
                        help=f"how often a caption leaves the position out (default {P_OMIT})")
    parser.add_argument("--overwrite", action="store_true", help="replace shapes shards already in --out")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write shards, print a one-line summary; bad input prints one error line (exit 2)."""
    args = _parse_args(argv)
    try:
        holdout = json.loads(args.holdout)
        if not isinstance(holdout, list) or not all(isinstance(entry, dict) for entry in holdout):
            raise ValueError("--holdout must be a JSON list of objects.")
        shards = write_shapes_shards(
            args.out,
            args.num,
            args.seed,
            samples_per_shard=args.samples_per_shard,
            image_size=args.image_size,
            phrasing=args.phrasing,
            holdout=holdout,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            blend_fraction=args.blend_fraction,
            p_omit_size=args.p_omit_size,
            p_omit_position=args.p_omit_position,
        )
    except (ValueError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.num} samples ({args.image_size}px, {args.phrasing} phrasing, seed {args.seed}) "
        f"to {len(shards)} shard(s): {shard_pattern(args.out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
