"""The pixel evaluator: exact on clean images, robust to mild noise and blur, strict on wrong attributes."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from crossflow.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, ShapeAttributes, ShapesGenerator, render
from crossflow.eval.shapes import format_by_size, format_scores, measure, score, shape_accuracy_by_size


def _blur(image: np.ndarray) -> np.ndarray:
    """3x3 binomial blur of an (H, W, 3) array (sigma ~0.7 px), zero padded."""
    kernel = (0.25, 0.5, 0.25)
    padded = np.pad(image.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    rows = sum(w * padded[i : i + image.shape[0]] for i, w in enumerate(kernel))
    return sum(w * rows[:, i : i + image.shape[1]] for i, w in enumerate(kernel))


def _perfect(scores: dict[str, float]) -> bool:
    return all(scores[name] == 1.0 for name in ("color", "shape", "size", "position", "all_correct"))


@pytest.mark.parametrize("image_size", [32, 64])
def test_every_combination_is_measured_exactly(image_size: int) -> None:
    for values in itertools.product(SHAPES, COLORS, SIZES, POSITIONS):
        attrs = ShapeAttributes(*values)
        assert measure(render(attrs, image_size)) == attrs.to_dict(), attrs


@pytest.mark.parametrize("image_size", [32, 64])
def test_clean_noisy_and_blurred_samples_score_perfectly(image_size: int) -> None:
    samples = ShapesGenerator(seed=image_size, image_size=image_size).take(250)
    attrs = [s.attributes for s in samples]
    assert _perfect(score([s.image for s in samples], attrs))

    rng = np.random.default_rng(0)
    shape = (image_size, image_size, 3)
    # Float CHW in [0, 1] with Gaussian noise sigma = 10/255, as a model would emit.
    noisy = [
        np.clip(np.asarray(s.image) / 255.0 + rng.normal(0, 10 / 255, shape), 0, 1).transpose(2, 0, 1)
        for s in samples
    ]
    assert _perfect(score(noisy, attrs))
    blurred = [
        np.clip(_blur(np.asarray(s.image)) + rng.normal(0, 10, shape), 0, 255).astype(np.uint8)
        for s in samples
    ]
    assert _perfect(score(blurred, attrs))


def test_wrong_attributes_are_scored_wrong() -> None:
    samples = ShapesGenerator(seed=3).take(60)
    images = [s.image for s in samples]
    others = {
        "shape": SHAPES,
        "color": tuple(COLORS),
        "size": tuple(SIZES),
        "position": tuple(POSITIONS),
    }
    for name, values in others.items():
        wrong = []
        for s in samples:
            current = getattr(s.attributes, name)
            replacement = values[(values.index(current) + 1) % len(values)]
            wrong.append(dataclasses.replace(s.attributes, **{name: replacement}))
        scores = score(images, wrong)
        assert scores[name] == 0.0 and scores["all_correct"] == 0.0
        assert all(scores[other] == 1.0 for other in others if other != name)


def test_only_stated_attributes_count() -> None:
    attrs = ShapeAttributes("circle", "green", "small", "top right")
    image = render(attrs, 32)
    wrong_size = dataclasses.replace(attrs, size="large").to_dict()
    # A prompt that never stated the size cannot be wrong about it.
    scores = score([image], [{**wrong_size, "stated": ["shape", "color", "position"]}])
    assert scores["all_correct"] == 1.0 and math.isnan(scores["size"])
    scores = score([image, image], [attrs, wrong_size], stated=[("shape", "color"), ("size",)])
    assert (
        scores["size"] == 0.0 and scores["color"] == 1.0 and scores["all_correct"] == 0.5 and scores["n"] == 2
    )
    with pytest.raises(ValueError):
        score([image], [attrs, attrs])


def test_empty_and_noise_only_images_are_all_wrong() -> None:
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    noise = np.clip(np.random.default_rng(0).normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
    for image in (black, noise, Image.fromarray(black)):
        assert set(measure(image).values()) == {"none"}
    scores = score([black], [ShapeAttributes("square", "white", "large", "center")])
    assert scores["all_correct"] == 0.0 and scores["color"] == 0.0 and scores["n"] == 1


def test_input_formats_agree_and_summary_is_one_line() -> None:
    attrs = ShapeAttributes("triangle", "magenta", "large", "bottom left")
    pil = render(attrs, 64, np.random.default_rng(1))
    uint8_hwc = np.asarray(pil)
    float_chw = uint8_hwc.transpose(2, 0, 1) / 255.0
    float_hwc = uint8_hwc / 255.0
    for image in (pil, uint8_hwc, float_chw, float_hwc):
        assert measure(image) == attrs.to_dict()
    line = format_scores(score([pil], [attrs]))
    assert "\n" not in line and line.startswith("n=1") and "all-correct 1.000" in line


def test_shape_accuracy_by_size_counts_each_stated_cell() -> None:
    rng = np.random.default_rng(0)
    small_square = ShapeAttributes("square", "red", "small", "top left")
    large_circle = ShapeAttributes("circle", "blue", "large", "center")
    images = [render(small_square, 32, rng), render(large_circle, 32, rng), render(large_circle, 32, rng)]
    # The third prompt asks for a triangle but gets a circle: one miss in the large-triangle cell.
    stated = [small_square, large_circle, dataclasses.replace(large_circle, shape="triangle")]
    cells = shape_accuracy_by_size(images, stated)
    assert cells == {"small square": (1, 1), "large circle": (1, 1), "large triangle": (0, 1)}
    assert format_by_size(cells) == "shape by size: small square 1/1 | large circle 1/1 | large triangle 0/1"
    with pytest.raises(ValueError, match="must match"):
        shape_accuracy_by_size(images[:2], stated)
