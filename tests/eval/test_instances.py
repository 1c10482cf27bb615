"""Instance mode of the shapes data (crossflow.data.shapes.Instance) and its pixel measurement
(crossflow.eval.instances): sampling, rendering, and the render -> measure round trip."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from crossflow.data.shapes import (
    COLORS,
    INSTANCE_ASPECT_RANGE,
    INSTANCE_MARGIN,
    INSTANCE_SIZE_RANGE,
    SHAPES,
    Instance,
    hue_to_rgb,
    instance_caption,
    render_instance,
    sample_instances,
)
from crossflow.eval.instances import (
    DEFAULT_TOLERANCE,
    InstanceTolerance,
    attribute_matches,
    attribute_values,
    circular_mean,
    consistent,
    hue_distance,
    instance_match,
    measure_instance,
    rgb_to_hue,
    summary,
)


def test_sampled_instances_are_seeded_and_within_their_ranges() -> None:
    a, b = sample_instances(200, seed=3), sample_instances(200, seed=3)
    assert a == b and a != sample_instances(200, seed=4)
    assert {inst.shape for inst in a} == set(SHAPES)
    assert all(INSTANCE_SIZE_RANGE[0] <= inst.size <= INSTANCE_SIZE_RANGE[1] for inst in a)
    assert all(INSTANCE_ASPECT_RANGE[0] <= inst.aspect <= INSTANCE_ASPECT_RANGE[1] for inst in a)
    assert sum(inst.aspect > 1 for inst in a) in range(70, 131)  # log-uniform: as many wide as tall
    assert Instance.from_dict(a[0].to_dict()) == a[0]
    with pytest.raises(ValueError, match="hue"):
        Instance("circle", 360.0, 0.2, 1.0)


def test_hues_render_at_full_saturation_and_are_mostly_not_palette_colours() -> None:
    assert hue_to_rgb(0) == (255, 0, 0) and hue_to_rgb(120) == (0, 255, 0) and hue_to_rgb(240) == (0, 0, 255)
    assert hue_to_rgb(60) == (255, 255, 0) and hue_to_rgb(300) == (255, 0, 255)
    for hue in np.linspace(0, 359, 40):
        assert hue_distance(float(rgb_to_hue(np.array(hue_to_rgb(hue)))), hue) < 0.5
    palette = set(COLORS.values())
    assert not any(inst.rgb in palette for inst in sample_instances(100, seed=0))
    assert instance_caption() == "a photo of sks" and instance_caption("zxq") == "a photo of zxq"
    with pytest.raises(ValueError, match="one non-empty word"):
        instance_caption("two words")


def test_a_render_stays_inside_the_canvas_with_the_requested_proportions() -> None:
    rng = np.random.default_rng(0)
    for inst in sample_instances(300, seed=1):
        pixels = np.asarray(render_instance(inst, 32, rng))
        rows, cols = np.nonzero(pixels.max(axis=2))
        margin = int(INSTANCE_MARGIN)
        assert rows.min() >= margin and cols.min() >= margin and rows.max() < 32 - margin and cols.max() < 32 - margin
        assert {tuple(p) for p in pixels[rows, cols]} == {inst.rgb}
    wide = np.asarray(render_instance(Instance("square", 0.0, 0.2, 1.6), 32)).max(axis=2) > 0
    rows, cols = np.nonzero(wide)
    assert (cols.max() - cols.min() + 1) > 1.4 * (rows.max() - rows.min() + 1)


EXTREMES = list(itertools.product(SHAPES, INSTANCE_SIZE_RANGE, INSTANCE_ASPECT_RANGE + (1.0,), (17.0, 203.0)))


@pytest.mark.parametrize(("shape", "size", "aspect", "hue"), EXTREMES)
def test_render_then_measure_recovers_the_instance_at_32px(shape: str, size: float, aspect: float, hue: float) -> None:
    inst = Instance(shape, hue, size, aspect)
    rng = np.random.default_rng(int(size * 1000 + aspect * 100 + hue))
    readings = [measure_instance(render_instance(inst, 32, rng)) for _ in range(8)]  # 8 random positions
    assert all(instance_match(r, inst) for r in readings)
    assert consistent(readings)
    found = summary(readings)
    assert found is not None and found.shape == shape and hue_distance(found.hue, hue) < 1.0


def test_round_trip_over_random_instances_and_array_inputs() -> None:
    rng = np.random.default_rng(2)
    for inst in sample_instances(200, seed=2):
        image = render_instance(inst, 32, rng)
        assert instance_match(measure_instance(image), inst)
        assert instance_match(measure_instance(np.asarray(image).transpose(2, 0, 1) / 255.0), inst)  # float CHW


def test_matching_rules_and_missing_objects() -> None:
    inst = Instance("circle", 350.0, 0.2, 1.0)
    assert measure_instance(np.zeros((32, 32, 3), dtype=np.uint8)) is None
    assert not instance_match(None, inst) and not consistent([None])
    tol = DEFAULT_TOLERANCE
    assert instance_match(Instance("circle", (350.0 + tol.hue - 1) % 360, 0.2 + tol.size - 1e-3, 1.0 * tol.aspect), inst)
    assert attribute_matches(Instance("square", 10.0, 0.2, 1.0), inst) == {
        "shape": False, "hue": True, "size": True, "aspect": True}  # 20° apart across 0°
    assert not instance_match(Instance("circle", 350.0, 0.2, 1.0 * tol.aspect * 1.01), inst)
    assert not instance_match(Instance("circle", 350.0, 0.2 + 1.1 * tol.size, 1.0), inst)
    assert circular_mean(np.array([350.0, 10.0])) in (0.0, pytest.approx(360.0))
    assert attribute_values(Instance("triangle", 90.0, 0.2, math.e), "aspect") == pytest.approx(1.0)
    assert attribute_values({"shape": "triangle", "hue": 90.0, "size": 0.2, "aspect": 1.0}, "hue_sin") == 1.0
    assert attribute_values(Instance("triangle", 90.0, 0.2, 1.0), "triangle") == 1.0
    with pytest.raises(ValueError, match="positive"):
        InstanceTolerance(aspect=1.0)
