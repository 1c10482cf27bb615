"""Path read-outs (crossflow.editing.measure) on hand-drawn shapes images: mask, mean colour, centroid, progress, Spearman."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossflow.data.shapes import COLORS, POSITIONS, ShapeAttributes, render
from crossflow.editing.measure import (
    _spearman_torchmetrics,
    attribute_progress,
    blob_sizes,
    centroid,
    count_blobs,
    mean_color,
    object_mask,
    progress_along,
    spearman,
)

S = 32


def _square(center: tuple[float, float], color: tuple[float, float, float], half: float = 4.0) -> np.ndarray:
    """A uint8 (S, S, 3) image with a filled axis-aligned square, pixel centres inside |d| <= half."""
    coords = np.arange(S) + 0.5
    inside = (np.abs(coords[None, :] - center[0]) <= half) & (np.abs(coords[:, None] - center[1]) <= half)
    image = np.zeros((S, S, 3), dtype=np.uint8)
    image[inside] = np.round(color).astype(np.uint8)
    return image


def test_red_square_reads_its_colour_position_and_pixels() -> None:
    image = render(ShapeAttributes("square", "red", "large", "top left"), S)  # no rng: exactly at the centre
    pixels = np.asarray(image)
    mask = object_mask(image)
    assert mask.sum() == (pixels.max(axis=2) > 0).sum() > 0  # the object is exactly the non-black pixels
    np.testing.assert_allclose(mean_color(image), COLORS["red"])
    # The square is symmetric about the nominal centre up to the pixel grid: within half a pixel.
    np.testing.assert_allclose(centroid(image), np.array(POSITIONS["top left"]) * S, atol=0.5)


def test_tensor_images_read_like_pil_images() -> None:
    image = render(ShapeAttributes("circle", "blue", "small", "bottom right"), S)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, S, S) in [0, 1], as frames
    np.testing.assert_allclose(mean_color(tensor), mean_color(image), atol=1e-3)
    np.testing.assert_allclose(centroid(tensor), centroid(image))
    np.testing.assert_allclose(centroid(image), np.array(POSITIONS["bottom right"]) * S, atol=0.5)


def test_blank_image_has_no_object() -> None:
    blank = np.zeros((S, S, 3), dtype=np.uint8)
    assert not object_mask(blank).any()
    assert np.isnan(mean_color(blank)).all() and np.isnan(centroid(blank)).all()
    assert math.isnan(spearman(attribute_progress([blank] * 3, "color", "red", "blue")))


def test_progress_on_a_linear_colour_ramp_is_linear() -> None:
    red, blue = np.array(COLORS["red"], float), np.array(COLORS["blue"], float)
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(progress_along((1 - t)[:, None] * red + t[:, None] * blue, red, blue), t, atol=1e-12)
    # The same ramp drawn as images and read back through the object's mean colour (uint8 rounding only).
    frames = [_square((16, 16), (1 - a) * red + a * blue) for a in t]
    progress = attribute_progress(frames, "color", "red", "blue")
    assert progress[0] == pytest.approx(0, abs=0.01) and progress[-1] == pytest.approx(1, abs=0.01)
    np.testing.assert_allclose(progress, t, atol=0.01)
    assert spearman(progress) == pytest.approx(1.0)


def test_progress_ignores_the_orthogonal_component_and_does_not_clip() -> None:
    start, end = np.array([0.0, 0.0]), np.array([2.0, 0.0])
    np.testing.assert_allclose(progress_along([[1.0, 5.0], [3.0, -1.0], [-2.0, 0.0]], start, end), [0.5, 1.5, -1.0])
    assert progress_along([1.0, 0.0], start, end) == pytest.approx(0.5)  # one value
    with pytest.raises(ValueError, match="coincide"):
        progress_along([[1.0, 0.0]], start, start)
    with pytest.raises(ValueError, match="do not match"):
        progress_along([[1.0, 0.0, 0.0]], start, end)


def test_position_progress_follows_the_centroid() -> None:
    # top left (8.64, 8.64) -> bottom right (23.36, 23.36): squares moved along the diagonal by whole pixels.
    a, b = np.array(POSITIONS["top left"]) * S, np.array(POSITIONS["bottom right"]) * S
    t = np.linspace(0, 1, 6)
    centres = [tuple(np.round((1 - x) * a + x * b) + 0.5) for x in t]  # on the pixel grid: exact centroids
    frames = [_square(c, COLORS["green"]) for c in centres]
    for frame, c in zip(frames, centres, strict=True):
        np.testing.assert_allclose(centroid(frame), c)
    progress = attribute_progress(frames, "position", "top left", "bottom right")
    expected = [(np.array(c) - a) @ (b - a) / ((b - a) @ (b - a)) for c in centres]
    np.testing.assert_allclose(progress, expected)
    np.testing.assert_allclose(progress, t, atol=0.07)  # snapping the centre to the grid moves it < 1 px of 14.7
    assert spearman(progress) == 1.0
    with pytest.raises(ValueError, match="no continuous read-out"):
        attribute_progress(frames, "shape", "circle", "square")


def test_spearman() -> None:
    assert spearman([0.0, 0.1, 0.5, 0.7, 2.0]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], against=[10, 30, 20]) == pytest.approx(0.5)
    # A hard jump between two flat halves still correlates but misses a 0.9 bar at 11 frames.
    assert spearman([0] * 6 + [1] * 5) == pytest.approx(0.866, abs=1e-3)
    for undefined in ([1.0, 1.0, 1.0], [0.0, math.nan, 1.0], [1.0]):
        assert math.isnan(spearman(undefined))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], against=[1, 2])



@pytest.mark.parametrize("values", [[0.0, 0.2, 0.1, 0.3, 0.5, 0.4, 0.6, 0.8, 0.7, 0.9, 1.0], [0] * 6 + [1] * 5])
def test_spearman_fallback_agrees_with_scipy(values: list[float]) -> None:
    """Without scipy, spearman() uses torchmetrics; both average tied ranks."""
    pytest.importorskip("scipy")
    x, y = np.arange(len(values), dtype=np.float64), np.asarray(values, dtype=np.float64)
    assert _spearman_torchmetrics(x, y) == pytest.approx(spearman(values), abs=1e-6)


def test_blob_counts_separate_objects_and_specks() -> None:
    image = _square((9.5, 9.5), COLORS["red"], half=4.0)  # 9 x 9 = 81 pixels
    assert blob_sizes(image) == [81] and count_blobs(image) == 1
    image[28:30, 28:30] = COLORS["red"]  # a 2 x 2 speck, apart from the square
    image[20, 20] = image[21, 21] = COLORS["red"]  # two pixels touching only diagonally: two blobs (4-connectivity)
    assert blob_sizes(image) == [81, 4, 1, 1]
    assert count_blobs(image) == 4 and count_blobs(image, min_pixels=4) == 2 and count_blobs(image, min_pixels=5) == 1
    # The largest blob is the evaluator's object.
    assert object_mask(image).sum() == blob_sizes(image)[0]
    blank = np.zeros((S, S, 3), dtype=np.uint8)
    assert blob_sizes(blank) == [] and count_blobs(blank) == 0
    with pytest.raises(ValueError, match="min_pixels"):
        count_blobs(image, min_pixels=0)


def test_blob_counts_use_the_evaluators_threshold() -> None:
    image = _square((9.5, 9.5), (240, 240, 240), half=4.0)
    image[25:28, 25:28] = 100  # above both 80 and 0.4 x 240 = 96: a second blob
    image[25:28, 2:5] = 90  # above the absolute threshold, below the relative one: background
    assert blob_sizes(image) == [81, 9]
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # tensors in [0, 1] read the same
    assert blob_sizes(tensor) == [81, 9]
