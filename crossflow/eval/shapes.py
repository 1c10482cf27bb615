"""Measure the shapes dataset's attributes back from pixels, and score images against their prompts.

Pure numpy and hand-written geometry, independent of any model, so it can judge generated images: the
object is the largest 4-connected blob of bright pixels; its colour is the nearest palette colour, its
position the nearest of the five centres, its size a threshold on its extent, its shape a reading of how it
fills its bounding box. Spec: DESIGN.md, "The shapes dataset (the embedded default)".
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from crossflow.data.shapes import ATTRIBUTES, COLORS, POSITIONS, SHAPES, SIZES, ShapeAttributes

FOREGROUND_THRESHOLD = 80.0
"""A pixel is foreground when its brightest channel exceeds this (0..255). Every palette colour has a
channel >= 220 and the background is 0, so 80 tolerates noise, blur and dim outputs, and pure noise on
black (sigma ~10) never reaches it."""
RELATIVE_THRESHOLD = 0.4
"""...and exceeds this fraction of the image's peak brightness. Blur (a 3x3 binomial kernel) leaves a
shape's own corner pixels at ~0.56 of its colour and lifts outside neighbours to ~0.25: 0.4 splits them, so
the thresholded blob keeps its exact outline instead of growing a noisy rim."""
NONE = "none"
"""The value every attribute takes when an image has no foreground at all (always scored wrong)."""

_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[name] for name in _PALETTE_NAMES], dtype=np.float64)
_PALETTE_BRIGHTNESS = float(_PALETTE.max(axis=1).mean())
# Size threshold: halfway between the small and large half-extents (fractions of S).
_SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2
# Triangle cues (apex up): its widest rows are at the bottom of its box (measured >= 0.67 even under
# heavy blur; discs and squares <= 0.61), and its top half holds ~1/3 of the area of its bottom half.
_TRIANGLE_MIN_WIDEST_HEIGHT = 0.72
_TRIANGLE_MAX_TOP_BOTTOM = 0.55
# Square vs disc: a square fills its box's corners, a disc leaves them empty. Fill alone cannot tell them
# apart at S=32 (a radius-4.5 disc is an octagon missing only its 4 corner pixels), so corners decide.
_SQUARE_MIN_FILL = 0.85


def to_rgb_array(image: Any) -> np.ndarray:
    """PIL image, uint8 HWC array or float CHW/HWC array in [0, 1] -> float (H, W, 3) array in 0..255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"Expected one image with 3 dimensions (HWC or CHW), got shape {array.shape}.")
    if array.shape[-1] not in (1, 3) and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.shape[-1] != 3:
        raise ValueError(f"Expected 1 or 3 colour channels, got image shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0
    return array.astype(np.float64)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean (H, W) mask, as a mask (all False if empty)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        component = [start]
        queue = deque([start])
        while queue:
            row, col = queue.popleft()
            for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                if 0 <= r < height and 0 <= c < width and mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    component.append((r, c))
                    queue.append((r, c))
        if len(component) > len(best):
            best = component
    out = np.zeros_like(mask, dtype=bool)
    if best:
        rows, cols = zip(*best, strict=True)
        out[list(rows), list(cols)] = True
    return out


def _classify_color(pixels: np.ndarray) -> str:
    """Nearest palette colour to the blob's bright core, after normalising brightness."""
    brightness = pixels.max(axis=1)
    # Blurred edges are the colour mixed with black: keep the bright core so they cannot pull white to grey.
    core = pixels[brightness >= 0.8 * np.percentile(brightness, 90)]
    color = np.median(core, axis=0)
    color = color * (_PALETTE_BRIGHTNESS / max(float(color.max()), 1e-6))  # a dim red is still red
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - color) ** 2).sum(axis=1)))]


def _top_bottom_ratio(crop: np.ndarray) -> float:
    """Area of the box's top half over its bottom half: ~1 for a disc or square, ~1/3 for an apex-up triangle."""
    rows = crop.shape[0]
    top = crop[: rows // 2].sum()
    bottom = crop[(rows + 1) // 2 :].sum()  # an odd middle row belongs to neither half
    return float(top) / max(float(bottom), 1.0)


def _widest_rows_height(crop: np.ndarray) -> float:
    """Mean height (0 top, 1 bottom) of the rows within 90% of the widest: ~0.5 for a disc or square, ~0.9
    for an apex-up triangle, and blur barely moves it."""
    widths = crop.sum(axis=1)
    rows = np.flatnonzero(widths >= 0.9 * widths.max())
    return float((rows.mean() + 0.5) / len(widths))


def _trim(crop: np.ndarray) -> np.ndarray:
    """Drop each outer row/column holding at most one pixel: a noise speck glued to an edge would
    otherwise push the box corners off a square."""
    if crop.shape[0] > 2 and crop[0].sum() <= 1:
        crop = crop[1:]
    if crop.shape[0] > 2 and crop[-1].sum() <= 1:
        crop = crop[:-1]
    if crop.shape[1] > 2 and crop[:, 0].sum() <= 1:
        crop = crop[:, 1:]
    if crop.shape[1] > 2 and crop[:, -1].sum() <= 1:
        crop = crop[:, :-1]
    return crop


def _corner_depth(crop: np.ndarray) -> float:
    """Mean number of empty pixels along the diagonal from each box corner to the blob."""
    depths = []
    for corner in (crop, crop[:, ::-1], crop[::-1, :], crop[::-1, ::-1]):
        diagonal = np.diagonal(corner)
        filled = np.flatnonzero(diagonal)
        depths.append(int(filled[0]) if filled.size else len(diagonal))
    return float(np.mean(depths))


def _classify_shape(crop: np.ndarray) -> str:
    """Square, circle or triangle from how the blob fills its bounding box (``crop`` is that box)."""
    if (
        _widest_rows_height(crop) >= _TRIANGLE_MIN_WIDEST_HEIGHT
        or _top_bottom_ratio(crop) <= _TRIANGLE_MAX_TOP_BOTTOM
    ):
        return "triangle"
    core = _trim(crop)
    # A disc of radius r leaves ~0.29 r - 0.5 empty pixels on each corner diagonal of its box; a square
    # none, or one once blur rounds its corners. Split between the two, at least half a pixel.
    disc_depth = 0.29 * max(core.shape) / 2 - 0.5
    is_square = _corner_depth(core) < max(0.5, 0.6 * disc_depth) and core.mean() >= _SQUARE_MIN_FILL
    return "square" if is_square else "circle"


def _blob(rgb: np.ndarray) -> np.ndarray:
    brightness = rgb.max(axis=2)
    threshold = max(FOREGROUND_THRESHOLD, RELATIVE_THRESHOLD * float(np.percentile(brightness, 99)))
    return largest_component(brightness > threshold)


def foreground_blob(image: Any) -> np.ndarray:
    """Boolean (H, W) mask of the object: the largest 4-connected blob of bright pixels."""
    return _blob(to_rgb_array(image))


def measure(image: Any) -> dict[str, str]:
    """Read shape, colour, size and position off an image; every value is "none" if nothing is drawn."""
    rgb = to_rgb_array(image)
    blob = _blob(rgb)
    if not blob.any():
        return dict.fromkeys(ATTRIBUTES, NONE)
    rows, cols = np.nonzero(blob)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = blob.shape
    side = float(min(height, width))
    # The bounding box centre is the drawn centre for all three shapes (a triangle's centroid is not).
    center = np.array([(left + right) / 2 / width, (top + bottom) / 2 / height])
    names = tuple(POSITIONS)
    distances = [float(np.hypot(*(center - np.array(POSITIONS[name])))) for name in names]
    half_extent = max(bottom - top, right - left) / 2 / side
    return {
        "shape": _classify_shape(blob[top:bottom, left:right]),
        "color": _classify_color(rgb[blob]),
        "size": "large" if half_extent > _SIZE_THRESHOLD else "small",
        "position": names[int(np.argmin(distances))],
    }


def _as_attributes(item: ShapeAttributes | Mapping[str, Any]) -> ShapeAttributes:
    if isinstance(item, ShapeAttributes):
        return item
    return ShapeAttributes(**{name: item[name] for name in ATTRIBUTES})


def score(
    images: Sequence[Any],
    attributes: Sequence[ShapeAttributes | Mapping[str, Any]],
    stated: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Per-attribute accuracy over the prompts stating it, all-correct rate over stated ones, and n.

    ``stated`` defaults to each dict's "stated" entry (as in a sample's JSON), else to all four attributes.
    An attribute no prompt states scores NaN.
    """
    if len(images) != len(attributes):
        raise ValueError(f"Got {len(images)} images but {len(attributes)} attribute sets; they must match.")
    if stated is not None and len(stated) != len(attributes):
        raise ValueError(f"Got {len(stated)} stated lists for {len(attributes)} prompts; they must match.")
    hits = dict.fromkeys(ATTRIBUTES, 0)
    counts = dict.fromkeys(ATTRIBUTES, 0)
    all_correct = 0
    for index, (image, item) in enumerate(zip(images, attributes, strict=True)):
        truth = _as_attributes(item).to_dict()
        if stated is not None:
            names = tuple(stated[index])
        elif isinstance(item, Mapping) and "stated" in item:
            names = tuple(item["stated"])
        else:
            names = ATTRIBUTES
        unknown = set(names) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(
                f"Unknown stated attribute(s) {sorted(unknown)}; expected names from {ATTRIBUTES}."
            )
        measured = measure(image)
        correct = True
        for name in names:
            counts[name] += 1
            if measured[name] == truth[name]:
                hits[name] += 1
            else:
                correct = False
        all_correct += correct
    n = len(images)
    scores: dict[str, float] = {
        name: hits[name] / counts[name] if counts[name] else math.nan for name in ATTRIBUTES
    }
    scores["all_correct"] = all_correct / n if n else math.nan
    scores["n"] = n
    return scores


def shape_accuracy_by_size(
    images: Sequence[Any], attributes: Sequence[ShapeAttributes | Mapping[str, Any]]
) -> dict[str, tuple[int, int]]:
    """Shape read correctly, split by the stated (size, shape): ``{"small square": (hits, count), ...}``.

    Where the shape errors are: at 32 px a small (9 px) square differs from a small disc in its four corner
    pixels, so the small cells are the first to fail (docs/experiments.md, round 4). Cells no prompt states
    are left out.
    """
    if len(images) != len(attributes):
        raise ValueError(f"Got {len(images)} images but {len(attributes)} attribute sets; they must match.")
    cells: dict[str, list[int]] = {f"{size} {shape}": [0, 0] for size in SIZES for shape in SHAPES}
    for image, item in zip(images, attributes, strict=True):
        truth = _as_attributes(item)
        cell = cells[f"{truth.size} {truth.shape}"]
        cell[0] += measure(image)["shape"] == truth.shape
        cell[1] += 1
    return {name: (hits, count) for name, (hits, count) in cells.items() if count}


def format_by_size(cells: Mapping[str, tuple[int, int]]) -> str:
    """One line: ``shape by size: small circle 39/46 | small square 10/42 | ...``."""
    return "shape by size: " + " | ".join(f"{name} {hits}/{count}" for name, (hits, count) in cells.items())


def format_scores(scores: Mapping[str, float]) -> str:
    """One line: ``n=200 | color 0.980 | shape 0.870 | size 0.840 | position 1.000 | all-correct 0.780``."""
    parts = [f"n={int(scores['n'])}"]
    for name in ("color", "shape", "size", "position", "all_correct"):
        value = scores[name]
        parts.append(f"{name.replace('_', '-')} {'n/a' if math.isnan(value) else f'{value:.3f}'}")
    return " | ".join(parts)


def shape_of_blob(blob: np.ndarray) -> str:
    """The shape (circle, square or triangle) of an object mask (H, W), from how it fills its bounding box; also
    reads shapes stretched to another aspect ratio (crossflow.eval.instances)."""
    rows, cols = np.nonzero(blob)
    if rows.size == 0:
        raise ValueError("the mask is empty: there is no object to classify")
    return _classify_shape(blob[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
