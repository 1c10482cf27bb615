"""Measure an instance (crossflow.data.shapes.Instance) back from pixels, and decide whether two are the same identity.

An instance is a shape with a continuous hue, size and aspect ratio (weights2weights-style studies,
crossflow/weight_space). Read from the object's blob (:func:`crossflow.eval.shapes.foreground_blob`):

- shape: the dataset's own classifier (it reads stretched shapes too: a round trip over 3000 random instances at
  32 px made no error);
- hue: the circular mean of the hue of the blob's bright core;
- size: from the blob's area, √(area / c) with the unstretched shape's area constant c (disc π, square 4,
  triangle 2: a stretch by √a one way and 1/√a the other keeps the area);
- aspect: from second moments, σ_x / σ_y divided by the unstretched shape's own ratio (1, or √3/2 for the apex-up
  triangle). Moments average over every pixel, so they are ~1.5x steadier than the bounding box at 32 px.

:data:`DEFAULT_TOLERANCE` says what "same identity" means; its widths come from the round trip (render -> measure)
over 2000 random instances plus a grid of the extreme sizes and aspects at 32 px, 30 positions each: size error
≤ 0.015 S against the truth and ≤ 0.025 S between two renders of one instance; aspect error ≤ a factor 1.25 against
the truth (99%: 1.13) and ≤ 1.32 between two renders (a 7×8 against an 8×7 square); hue within 0.2°.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from crossflow.data.shapes import Instance
from crossflow.eval.shapes import foreground_blob, shape_of_blob, to_rgb_array

# Area of the unstretched shape over its half-extent squared, and its σ_x / σ_y (apex-up triangle, base = height:
# var x = h²/6, var y = 2h²/9).
_AREA_CONSTANT = {"circle": math.pi, "square": 4.0, "triangle": 2.0}
_MOMENT_RATIO = {"circle": 1.0, "square": 1.0, "triangle": math.sqrt(3.0) / 2.0}


class InstanceLike(Protocol):
    """Anything with an instance's four attributes (an :class:`Instance` or an :class:`InstanceMeasurement`)."""

    shape: str
    hue: float
    size: float
    aspect: float


@dataclass(frozen=True)
class InstanceMeasurement:
    """An instance's attributes as read from one image, and where the object is (not part of its identity)."""

    shape: str
    hue: float
    """Degrees in [0, 360)."""
    size: float
    """Half-extent as a fraction of S."""
    aspect: float
    """Width / height."""
    center: tuple[float, float]
    """Centre of mass (x, y) as fractions of S."""
    pixels: int
    """Blob area in pixels."""

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "hue": round(self.hue, 2), "size": round(self.size, 4),
                "aspect": round(self.aspect, 4), "center": [round(c, 4) for c in self.center], "pixels": self.pixels}


@dataclass(frozen=True)
class InstanceTolerance:
    """How far two readings may differ and still be the same identity."""

    hue: float = 20.0
    """Degrees, on the circle."""
    size: float = 0.03
    """Half-extent, as a fraction of S (about 1 px at 32 px)."""
    aspect: float = 1.35
    """A factor: aspects a, b match when max(a/b, b/a) ≤ this (two renders of one instance differ by up to 1.32)."""

    def __post_init__(self) -> None:
        if not (self.hue > 0 and self.size > 0 and self.aspect > 1):
            raise ValueError(f"tolerances must be positive (aspect a factor > 1), got {self}")


DEFAULT_TOLERANCE = InstanceTolerance()


def rgb_to_hue(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> hue in degrees [0, 360) (HSV hexcone; 0 for greys)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = np.where(high > low, high - low, 1.0)
    hue = np.where(high == r, ((g - b) / chroma) % 6.0, np.where(high == g, (b - r) / chroma + 2.0, (r - g) / chroma + 4.0))
    return np.where(high > low, hue * 60.0, 0.0) % 360.0


def circular_mean(degrees: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean direction of angles in degrees, in [0, 360)."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    w = np.ones_like(radians) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.rad2deg(np.arctan2((w * np.sin(radians)).sum(), (w * np.cos(radians)).sum())) % 360.0)


def hue_distance(a: float, b: float) -> float:
    """Angular distance between two hues in degrees, in [0, 180]."""
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def measure_instance(image: Any) -> InstanceMeasurement | None:
    """Read shape, hue, size and aspect of the object in ``image`` (PIL, uint8 HWC or float CHW/HWC in [0, 1]);
    None when nothing is drawn."""
    rgb = to_rgb_array(image)
    blob = foreground_blob(image)
    if not blob.any():
        return None
    side = float(min(blob.shape))
    shape = shape_of_blob(blob)
    pixels = rgb[blob]
    brightness = pixels.max(axis=1)
    # As the palette classifier does: blurred rims are the colour mixed with black; weight by chroma so that
    # grey-ish pixels (no hue to speak of) count little.
    core = pixels[brightness >= 0.8 * np.percentile(brightness, 90)]
    chroma = core.max(axis=1) - core.min(axis=1)
    hue = circular_mean(rgb_to_hue(core), weights=chroma + 1e-6)
    rows, cols = np.nonzero(blob)
    area = float(blob.sum())
    # A pixel is a unit square, not a point: its own variance 1/12 is added to the variance of the centres.
    var_x, var_y = cols.var() + 1 / 12, rows.var() + 1 / 12
    return InstanceMeasurement(
        shape=shape,
        hue=hue,
        size=math.sqrt(area / _AREA_CONSTANT[shape]) / side,
        aspect=math.sqrt(var_x / var_y) / _MOMENT_RATIO[shape],
        center=(float(cols.mean() + 0.5) / blob.shape[1], float(rows.mean() + 0.5) / blob.shape[0]),
        pixels=int(area),
    )


def attribute_errors(a: InstanceLike, b: InstanceLike) -> dict[str, float]:
    """Per-attribute differences: shape 0/1, hue in degrees, size in fractions of S, aspect as log(a / b)."""
    return {
        "shape": float(a.shape != b.shape),
        "hue": hue_distance(a.hue, b.hue),
        "size": abs(a.size - b.size),
        "aspect": abs(math.log(a.aspect / b.aspect)),
    }


def attribute_matches(a: InstanceLike, b: InstanceLike, tolerance: InstanceTolerance = DEFAULT_TOLERANCE
                      ) -> dict[str, bool]:
    """Which attributes of ``a`` and ``b`` agree within ``tolerance``."""
    errors = attribute_errors(a, b)
    return {
        "shape": errors["shape"] == 0.0,
        "hue": errors["hue"] <= tolerance.hue,
        "size": errors["size"] <= tolerance.size,
        "aspect": errors["aspect"] <= math.log(tolerance.aspect) + 1e-12,
    }


def instance_match(measured: InstanceLike | None, instance: InstanceLike,
                   tolerance: InstanceTolerance = DEFAULT_TOLERANCE) -> bool:
    """True when ``measured`` is the identity ``instance`` (or another reading of it) within ``tolerance``; a
    missing reading (no object) never matches."""
    return measured is not None and all(attribute_matches(measured, instance, tolerance).values())


def consistent(readings: Sequence[InstanceMeasurement | None], tolerance: InstanceTolerance = DEFAULT_TOLERANCE) -> bool:
    """True when every reading matches every other (one identity across seeds); a missing one breaks it."""
    if any(r is None for r in readings):
        return False
    return all(instance_match(readings[i], readings[j], tolerance)  # type: ignore[arg-type]
               for i in range(len(readings)) for j in range(i + 1, len(readings)))


def summary(readings: Sequence[InstanceMeasurement | None]) -> Instance | None:
    """One identity for several readings: the majority shape, the circular mean hue, median size and aspect (of the
    readings with that shape); None when none holds an object."""
    present = [r for r in readings if r is not None]
    if not present:
        return None
    shapes = [r.shape for r in present]
    shape = max(dict.fromkeys(shapes), key=shapes.count)
    same = [r for r in present if r.shape == shape]
    return Instance(shape=shape, hue=circular_mean(np.array([r.hue for r in same])) % 360.0,
                    size=min(max(float(np.median([r.size for r in same])), 1e-3), 0.499),
                    aspect=min(max(float(np.exp(np.median([math.log(r.aspect) for r in same]))), 0.1), 10.0))


def attribute_values(instance: InstanceLike | Mapping[str, Any], name: str) -> float:
    """A continuous read-out of one attribute for regression targets and edit checks: ``aspect`` as log(aspect)
    (symmetric in tall / wide), ``size``, ``hue_cos`` / ``hue_sin`` (the hue as a point on the circle), or
    ``circle`` / ``square`` / ``triangle`` (1 for that shape, else 0)."""
    get = instance.get if isinstance(instance, Mapping) else lambda key: getattr(instance, key)
    if name == "aspect":
        return math.log(float(get("aspect")))
    if name == "size":
        return float(get("size"))
    if name in ("hue_cos", "hue_sin"):
        angle = math.radians(float(get("hue")))
        return math.cos(angle) if name == "hue_cos" else math.sin(angle)
    if name in _AREA_CONSTANT:
        return float(get("shape") == name)
    raise ValueError(f"unknown attribute {name!r}; expected one of {list(ATTRIBUTE_NAMES)}")


ATTRIBUTE_NAMES: tuple[str, ...] = ("aspect", "size", "hue_cos", "hue_sin", "circle", "square", "triangle")
"""Continuous attributes :func:`attribute_values` reads (the names a weight-space direction is fit for)."""
