"""Continuous read-outs of a shapes image, for judging *paths* through latent space (interpolation, editing).

The evaluator (:mod:`crossflow.eval.shapes`) names each attribute ("red", "top left"); a path needs numbers
that move between the names: the object's mean colour and its centroid, projected onto the segment from one
endpoint's value to the other's (:func:`progress_along`), and a rank correlation of that progress with the
frame index (:func:`spearman`) to ask "does it move monotonically from A to B?".

    progress = attribute_progress(frames, "color", "red", "blue")  # 0 at red's RGB, 1 at blue's
    monotone = spearman(progress) >= 0.9

The object is the evaluator's own (:func:`crossflow.eval.shapes.foreground_blob`: the largest 4-connected blob
of pixels brighter than the black background), so a read-out here and a verdict there see the same pixels.
Pure numpy (torch tensors are accepted as images), no Lightning, no model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from crossflow.data.shapes import COLORS, POSITIONS
from crossflow.eval.shapes import FOREGROUND_THRESHOLD, RELATIVE_THRESHOLD, foreground_blob, to_rgb_array

PROGRESS_ATTRIBUTES: tuple[str, ...] = ("color", "position")
"""The attributes :func:`attribute_progress` reads as a continuous value (shape and size have no such axis)."""


def object_mask(image: Any) -> np.ndarray:
    """Boolean (H, W) mask of the object (the evaluator's foreground blob; all False on a blank image).

    ``image``: PIL, uint8 HWC array, or float CHW/HWC array or CPU tensor in [0, 1].
    """
    return foreground_blob(_as_array(image))


def mean_color(image: Any) -> np.ndarray:
    """Mean RGB (3,) of the object's pixels in 0..255, edges included; NaN if there is no object."""
    image = _as_array(image)
    # The mask from the image as given: foreground_blob would read an already-converted 0..255 float array as [0, 1].
    mask, rgb = foreground_blob(image), to_rgb_array(image)
    if not mask.any():
        return np.full(3, np.nan)
    return rgb[mask].mean(axis=0)


def centroid(image: Any) -> np.ndarray:
    """Centre of mass (x, y) (2,) of the object's mask in pixels, y down, pixel (row i, col j) at (j + ½, i + ½)
    as the shapes renderer draws them; NaN if there is no object.

    The mask's centroid, not the evaluator's bounding-box centre: it moves smoothly when a blob grows on one side,
    which is what a path needs (a triangle's centroid sits below its drawn centre by a fixed offset — harmless for
    :func:`progress_along` between two images of the same shape).
    """
    mask = object_mask(image)
    if not mask.any():
        return np.full(2, np.nan)
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


def foreground_pixels(image: Any) -> np.ndarray:
    """Boolean (H, W) mask of every pixel the evaluator counts as foreground, before it keeps the largest blob:
    brightest channel above max(FOREGROUND_THRESHOLD, RELATIVE_THRESHOLD × the image's 99th-percentile brightness),
    the threshold of :func:`crossflow.eval.shapes.foreground_blob` (whose result is this mask's largest blob)."""
    brightness = to_rgb_array(_as_array(image)).max(axis=2)
    return brightness > max(FOREGROUND_THRESHOLD, RELATIVE_THRESHOLD * float(np.percentile(brightness, 99)))


def blob_sizes(image: Any) -> list[int]:
    """Pixel counts of the 4-connected blobs of :func:`foreground_pixels`, largest first (empty for a blank image).

    The first is the evaluator's object (:func:`object_mask`); the rest are what else was drawn: a second copy
    of the object, a remnant an edit left behind, specks.
    """
    mask = foreground_pixels(image)
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    sizes = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        stack, count = [start], 0
        while stack:
            row, col = stack.pop()
            count += 1
            for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                if 0 <= r < height and 0 <= c < width and mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    stack.append((r, c))
        sizes.append(count)
    return sorted(sizes, reverse=True)


def count_blobs(image: Any, min_pixels: int = 1) -> int:
    """How many 4-connected foreground blobs (:func:`blob_sizes`) have at least ``min_pixels`` pixels.

    ``count_blobs(image, min_pixels=4) == 1``: one object and no second blob bigger than a 3-pixel speck.
    """
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
    return sum(size >= min_pixels for size in blob_sizes(image))


def progress_along(values: Any, start: Any, end: Any) -> np.ndarray:
    """Scalar projection of each value onto the segment start→end, scaled so ``start`` ↦ 0 and ``end`` ↦ 1.

    ``values`` (N, D) (or (D,) for one), ``start`` and ``end`` (D,). Not clipped: overshoot reads < 0 or > 1, and
    a component orthogonal to the segment is ignored. NaN rows (no object) stay NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    if start.shape != end.shape or start.ndim != 1:
        raise ValueError(f"start and end must be vectors of one length, got shapes {start.shape} and {end.shape}")
    if values.shape[-1] != start.shape[0]:
        raise ValueError(f"values of shape {values.shape} do not match endpoints of length {start.shape[0]}")
    direction = end - start
    length2 = float(direction @ direction)
    if length2 == 0.0:
        raise ValueError("start and end coincide: no direction to measure progress along")
    return (values - start) @ direction / length2


def spearman(values: Sequence[float] | np.ndarray, against: Sequence[float] | np.ndarray | None = None) -> float:
    """Spearman rank correlation of ``values`` with ``against`` (default: 0, 1, 2, …, the frame index).

    Ties get their average rank. NaN when it is undefined: fewer than 2 values, a NaN among them, or a constant
    sequence (a path that never moves is not monotone progress).
    """
    y = np.asarray(values, dtype=np.float64).ravel()
    x = np.arange(len(y), dtype=np.float64) if against is None else np.asarray(against, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"values ({len(y)}) and against ({len(x)}) differ in length")
    if len(y) < 2 or np.isnan(y).any() or np.isnan(x).any() or np.ptp(y) == 0 or np.ptp(x) == 0:
        return math.nan
    try:
        from scipy.stats import spearmanr  # not a declared dependency (it comes with the ode extra)
    except ImportError:
        return _spearman_torchmetrics(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def _spearman_torchmetrics(x: np.ndarray, y: np.ndarray) -> float:
    """The fallback without scipy: torchmetrics (a declared dependency) also averages tied ranks."""
    import torch
    from torchmetrics.functional import spearman_corrcoef

    return float(spearman_corrcoef(torch.from_numpy(y), torch.from_numpy(x)))


def attribute_progress(images: Sequence[Any], attribute: str, value_a: str, value_b: str) -> np.ndarray:
    """Progress (F,) of each image from attribute value ``value_a`` (0) to ``value_b`` (1).

    ``color``: the object's mean RGB projected from the palette RGB of ``value_a`` to that of ``value_b``;
    ``position``: its centroid projected from the nominal centre of ``value_a`` to that of ``value_b``
    (:data:`crossflow.data.shapes.POSITIONS` × the image width). The references are the dataset's nominal values,
    not the endpoint frames, so the scale does not depend on how well the endpoints came out; a Spearman
    correlation of the result is unaffected by that choice anyway (only the direction matters).
    """
    if attribute not in PROGRESS_ATTRIBUTES:
        raise ValueError(f"no continuous read-out for {attribute!r}; expected one of {PROGRESS_ATTRIBUTES}")
    if attribute == "color":
        start, end = np.array(COLORS[value_a], float), np.array(COLORS[value_b], float)
        return progress_along(np.stack([mean_color(im) for im in images]), start, end)
    size = to_rgb_array(_as_array(images[0])).shape[1]
    start, end = np.array(POSITIONS[value_a]) * size, np.array(POSITIONS[value_b]) * size
    return progress_along(np.stack([centroid(im) for im in images]), start, end)


def _as_array(image: Any) -> Any:
    """A torch tensor (on any device, any float dtype) -> numpy; anything else passes through."""
    if hasattr(image, "detach") and hasattr(image, "cpu"):
        return image.detach().float().cpu().numpy()
    return image
