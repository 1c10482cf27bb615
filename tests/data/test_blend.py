"""Blend samples (crossflow.data.shapes.Blend): images between two captions, their shards and their decoding."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import default_collate

from crossflow.data.decode import BLEND_KEY, blend_of, decode_sample
from crossflow.data.pipeline import expand_shards, read_shard
from crossflow.data.shapes import (
    ATTRIBUTES,
    BLEND_ATTRIBUTES,
    COLORS,
    POSITIONS,
    ShapeAttributes,
    ShapesGenerator,
    render,
    render_between,
)
from crossflow.data.shards import write_shapes_shards
from crossflow.datamodule import GENERATION_RECORD, ShapesGeneration, ShardDataModule
from crossflow.errors import CrossFlowError

S = 32


def _pixels(image) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(image).astype(np.float64)


def test_render_between_ends_are_the_two_renders() -> None:
    a = ShapeAttributes("circle", "red", "small", "top left")
    b = ShapeAttributes("circle", "blue", "large", "bottom right")
    for alpha, end in ((0.0, a), (1.0, b)):
        got = render_between(a, b, alpha, S, np.random.default_rng(4))
        assert np.array_equal(_pixels(got), _pixels(render(end, S, np.random.default_rng(4))))


def test_render_between_lerps_colour_centre_and_size() -> None:
    a = ShapeAttributes("square", "red", "small", "top left")
    b = ShapeAttributes("square", "green", "large", "bottom right")
    pixels = _pixels(render_between(a, b, 0.5, S))  # no rng: no jitter
    mask = pixels.sum(-1) > 0
    rgb = pixels[mask].mean(0)
    np.testing.assert_allclose(rgb, (np.array(COLORS["red"]) + np.array(COLORS["green"])) / 2, atol=0.5)
    ys, xs = np.nonzero(mask)
    expected = (np.array(POSITIONS["top left"]) + np.array(POSITIONS["bottom right"])) / 2 * S
    np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], expected, atol=0.5)
    # half side (0.14 + 0.26) / 2 · S = 6.4 px: a 12- or 13-pixel square, between the small (9) and large (17)
    assert 12 <= xs.max() - xs.min() + 1 <= 13


def test_render_between_refuses_what_has_no_between() -> None:
    a = ShapeAttributes("circle", "red", "small", "center")
    with pytest.raises(ValueError, match="shapes do not blend"):
        render_between(a, ShapeAttributes("square", "red", "small", "center"), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        render_between(a, a, 1.5)


def test_no_blends_leaves_the_stream_unchanged() -> None:
    """blend_fraction 0 draws no extra number: the dataset every existing run trained on, sample for sample."""
    plain, zero = ShapesGenerator(7).take(20), ShapesGenerator(7, blend_fraction=0.0).take(20)
    assert [s.caption for s in plain] == [s.caption for s in zero]
    assert all(np.array_equal(_pixels(p.image), _pixels(z.image)) for p, z in zip(plain, zero, strict=True))
    assert all(s.blend is None for s in zero)


def test_blends_differ_in_one_attribute_and_state_everything() -> None:
    holdout = [{"color": "green", "shape": "triangle"}]
    samples = ShapesGenerator(3, blend_fraction=0.5, holdout=holdout).take(400)
    blends = [s for s in samples if s.blend is not None]
    assert 150 <= len(blends) <= 250
    assert {s.blend.attribute for s in blends} == set(BLEND_ATTRIBUTES)
    for s in blends:
        a, b = s.attributes, s.blend.other
        changed = [n for n in ATTRIBUTES if getattr(a, n) != getattr(b, n)]
        assert changed == [s.blend.attribute]
        assert 0.0 <= s.blend.alpha <= 1.0 and s.stated == ATTRIBUTES
        assert s.caption != s.blend.caption
        assert not (b.color == "green" and b.shape == "triangle"), "B respects the holdout too"


def test_blend_shards_decode_and_mix_with_plain_ones(tmp_path: Path) -> None:
    write_shapes_shards(str(tmp_path / "blend"), 60, seed=1, blend_fraction=0.5, progress=False)
    write_shapes_shards(str(tmp_path / "plain"), 8, seed=1, progress=False)
    raws = {name: [raw for url in expand_shards(str(tmp_path / name))
                   for raw in read_shard(url, on_error=lambda exn: None)] for name in ("blend", "plain")}
    decoded = [decode_sample(raw, 32) for raw in raws["blend"]]
    alphas = np.array([d["blend_alpha"].item() for d in decoded])
    assert len(decoded) == 60 and 0 < (alphas > 0).sum() < 60
    assert all(bool(d["blend_caption"]) == (d["blend_alpha"] > 0) for d in decoded)
    assert sum(BLEND_KEY in raw for raw in raws["blend"]) == (alphas > 0).sum(), "only blends carry the member"
    # A plain sample decodes as α = 0, so one batch can hold both kinds.
    mixed = decoded[:4] + [decode_sample(raw, 32) for raw in raws["plain"][:4]]
    batch = default_collate(mixed)
    assert batch["blend_alpha"].shape == (8,) and not batch["blend_alpha"][4:].any()


@pytest.mark.parametrize("record, message", [({"alpha": 2.0, "caption": "x"}, "alpha must be"),
                                             ({"alpha": 0.5}, "no caption")])
def test_a_bad_blend_member_is_refused(record: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        blend_of({BLEND_KEY: json.dumps(record).encode()})


def test_datamodule_generates_blends_for_training_only(tmp_path: Path) -> None:
    gen = ShapesGeneration(num_train=40, num_val=10, seed=2, samples_per_shard=40, blend_fraction=0.3)
    ShardDataModule(str(tmp_path / "train"), str(tmp_path / "val"), image_size=16, generate_shapes=gen).prepare_data()
    record = json.loads((tmp_path / "train" / GENERATION_RECORD).read_text())
    assert record["blend_fraction"] == 0.3
    assert "blend_fraction" not in json.loads((tmp_path / "val" / GENERATION_RECORD).read_text())
    for split, has_blend in (("train", True), ("val", False)):
        with tarfile.open(expand_shards(str(tmp_path / split))[0]) as tar:
            assert any(m.name.endswith("." + BLEND_KEY) for m in tar.getmembers()) == has_blend
    with pytest.raises(CrossFlowError, match="blend_fraction"):
        ShapesGeneration(blend_fraction=1.0)
