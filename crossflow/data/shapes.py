"""The synthetic shapes dataset: one coloured shape on black, with a varied natural caption.

Spec: DESIGN.md, "The shapes dataset (the embedded default)". Every attribute can be measured back from
pixels (:mod:`crossflow.eval.shapes`), so a model trained here is scored without a learned judge.

Captions matter more than pixels: a model trained on them is judged on prompts people write, in words the
generator never produced. So the "train" phrasing draws from many templates (different structures and
attribute orders) and several synonyms per value; the "heldout" phrasing uses a disjoint template set
(plus a few rarer synonyms) to measure generalisation to unseen wordings honestly.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Phrasing = Literal["train", "heldout"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 25),
    "blue": (30, 60, 230),
    "yellow": (235, 220, 30),
    "cyan": (30, 210, 220),
    "magenta": (220, 40, 220),
    "white": (240, 240, 240),
}
SIZES: dict[str, float] = {"small": 0.14, "large": 0.26}
"""Half-extent as a fraction of the canvas side S: radius, half side, or half height."""
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
"""Centre (x, y) as fractions of S, y pointing down."""
JITTER = 0.04
"""Uniform jitter of the centre, as a fraction of S, on each coordinate."""
ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "position")
MIN_IMAGE_SIZE = 16
P_OMIT = 0.15
"""How often a training caption leaves the size out, and (independently) the position: DESIGN.md's "sometimes"."""

_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}


@dataclass(frozen=True)
class ShapeAttributes:
    """The four ground-truth attributes of one image."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            value = getattr(self, name)
            if value not in _VALUES[name]:
                raise ValueError(f"Unknown {name} {value!r}; expected one of {list(_VALUES[name])}.")

    def to_dict(self) -> dict[str, str]:
        """The attributes as a plain dict (JSON-ready)."""
        return {name: getattr(self, name) for name in ATTRIBUTES}


# --------------------------------------------------------------------------------------------- render


def _shape_mask(
    shape: str, cx: float, cy: float, half: float, image_size: int, aspect: float = 1.0
) -> np.ndarray:
    """Boolean (S, S) mask of the pixels whose centres lie inside the shape (no antialiasing).

    ``aspect`` (width / height, instance mode only) stretches the shape by √aspect horizontally and squeezes it by
    √aspect vertically, so its area stays that of the unstretched shape; 1 leaves every coordinate untouched.
    """
    # Pixel (row i, col j) covers [j, j+1) x [i, i+1); testing its centre keeps the fill crisp and exact.
    coords = np.arange(image_size, dtype=np.float64) + 0.5
    x = coords[None, :] - cx
    y = coords[:, None] - cy
    if aspect != 1.0:
        stretch = float(np.sqrt(aspect))
        x, y = x / stretch, y * stretch
    if shape == "circle":
        return x**2 + y**2 <= half**2
    if shape == "square":
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if shape == "triangle":
        # Apex at (0, -half), base from (-half, half) to (half, half): width grows by 1 per unit of height.
        return (y <= half) & (np.abs(x) <= (y + half) / 2)
    raise ValueError(f"Unknown shape {shape!r}; expected one of {list(SHAPES)}.")


def _check_supersample(supersample: int) -> int:
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or supersample < 1:
        raise ValueError(f"supersample must be an integer >= 1 (samples per pixel side), got {supersample!r}.")
    return int(supersample)


def _shape_coverage(
    shape: str, cx: float, cy: float, half: float, image_size: int, aspect: float = 1.0, supersample: int = 1
) -> np.ndarray:
    """Float (S, S) fraction of each pixel the shape covers, from ``supersample`` x ``supersample`` sample points
    per pixel (the centres of a finer grid; the caller checked it). 1 is :func:`_shape_mask` itself (0 or 1: the
    spec's crisp pixels).

    With more samples a pixel on the outline gets the share of it inside the shape, so the image changes
    continuously with the jittered centre instead of a column at a time. (That does not make the demo's outlines
    cleaner: docs/experiments.md, "where the ragged outlines come from".)"""
    n = supersample
    if n == 1:
        return _shape_mask(shape, cx, cy, half, image_size, aspect).astype(np.float64)
    fine = _shape_mask(shape, cx * n, cy * n, half * n, image_size * n, aspect)  # every length scales by n
    return fine.reshape(image_size, n, image_size, n).mean(axis=(1, 3))


def _paint(coverage: np.ndarray, rgb: Sequence[float] | np.ndarray) -> Image.Image:
    """The colour ``rgb`` over black in proportion to ``coverage``, rounded to 8 bits."""
    pixels = np.round(coverage[..., None] * np.asarray(rgb, dtype=np.float64)[None, None, :])
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def render(
    attrs: ShapeAttributes, image_size: int = 32, rng: np.random.Generator | None = None, supersample: int = 1
) -> Image.Image:
    """Draw one filled shape on a black S x S RGB canvas; ``rng`` jitters the centre (none without it).
    ``supersample`` > 1 anti-aliases the outline (:func:`_shape_coverage`); 1 is the spec's crisp rendering."""
    return render_between(attrs, attrs, 0.0, image_size, rng, supersample)


def render_between(
    a: ShapeAttributes,
    b: ShapeAttributes,
    alpha: float,
    image_size: int = 32,
    rng: np.random.Generator | None = None,
    supersample: int = 1,
) -> Image.Image:
    """Draw the shape ``alpha`` of the way from ``a`` to ``b``: the colour (RGB), centre and half-extent are
    lerped; the shape must be the same (there is no shape between a circle and a square). One jitter draw
    moves both ends alike. ``alpha = 0`` draws ``a`` exactly as :func:`render` does (the same rng draws)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}.")
    if a.shape != b.shape:
        raise ValueError(f"cannot render between a {a.shape} and a {b.shape}: shapes do not blend.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    (ax, ay), (bx, by) = POSITIONS[a.position], POSITIONS[b.position]
    _check_supersample(supersample)
    jx, jy = rng.uniform(-JITTER, JITTER, size=2) if rng is not None else (0.0, 0.0)
    coverage = _shape_coverage(
        a.shape,
        ((1 - alpha) * ax + alpha * bx + jx) * image_size,
        ((1 - alpha) * ay + alpha * by + jy) * image_size,
        ((1 - alpha) * SIZES[a.size] + alpha * SIZES[b.size]) * image_size,
        image_size,
        supersample=supersample,
    )
    rgb = (1 - alpha) * np.asarray(COLORS[a.color], dtype=np.float64) + alpha * np.asarray(COLORS[b.color])
    return _paint(coverage, rgb)


# ------------------------------------------------------------------------------------------ vocabulary

# Only words a person would use for that exact RGB value; no word may name two values (the tests check it),
# e.g. no "light blue" for cyan, which would also say "blue".
_SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "circle", "disc", "disk", "round shape", "dot", "ball", "round dot"),
    "square": ("square", "square", "box", "block", "tile", "square shape"),
    "triangle": ("triangle", "triangle", "pyramid shape", "wedge", "triangle shape", "triangular shape"),
}
_COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "red", "crimson", "scarlet", "bright red", "cherry red"),
    "green": ("green", "green", "bright green", "lime green", "grass green", "leaf green"),
    "blue": ("blue", "blue", "royal blue", "bright blue", "deep blue", "cobalt blue"),
    "yellow": ("yellow", "yellow", "golden", "gold", "bright yellow", "lemon yellow"),
    "cyan": ("cyan", "cyan", "aqua", "turquoise"),
    "magenta": ("magenta", "magenta", "pink", "fuchsia", "purple", "hot pink"),
    "white": ("white", "white", "snow-white", "bright white", "pure white"),
}
_SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "small", "little", "tiny", "mini"),
    "large": ("large", "large", "big", "huge", "giant", "oversized"),
}
# Bare names; every position phrase below contains one of them, so they are also the words to look for.
_POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "upper left", "top-left", "upper-left"),
    "top right": ("top right", "upper right", "top-right", "upper-right"),
    "bottom left": ("bottom left", "lower left", "bottom-left", "lower-left"),
    "bottom right": ("bottom right", "lower right", "bottom-right", "lower-right"),
    "center": ("center", "centre", "middle"),
}

# Rarer words used only by the "heldout" phrasing (on top of the train words).
_HELDOUT_SHAPE_WORDS = {
    "circle": ("orb", "round spot"),
    "square": ("square patch",),
    "triangle": ("arrowhead",),
}
_HELDOUT_COLOR_WORDS = {
    "red": ("ruby", "blood red"),
    "green": ("lime", "kelly green"),
    "blue": ("sapphire", "cobalt"),
    "yellow": ("lemon", "canary yellow"),
    "magenta": ("violet",),
    "white": ("ivory", "milky white"),
}
_HELDOUT_SIZE_WORDS = {"small": ("miniature",), "large": ("enormous", "massive")}


def _corner_phrases(bare: str, heldout: bool) -> list[str]:
    """Noun phrases for a corner position, e.g. 'the upper-left corner'."""
    phrases = [f"the {bare}", f"the {bare} corner", f"the {bare} of the image", f"the {bare} of the picture"]
    if heldout:
        phrases += [f"the {bare} quadrant", f"the {bare} area"]
    return phrases


def _center_phrases(heldout: bool) -> list[str]:
    """Noun phrases for the centre position."""
    phrases = ["the center", "the centre", "the middle"]
    phrases += ["the center of the image", "the middle of the picture", "the centre of the frame"]
    if heldout:
        phrases += ["the very center", "the exact middle"]
    return phrases


def synonyms(attribute: str, value: str, phrasing: Phrasing = "train") -> tuple[str, ...]:
    """Words a caption may use for ``value``; for positions, the bare names every position phrase contains."""
    if attribute not in _VALUES or value not in _VALUES[attribute]:
        raise ValueError(f"Unknown {attribute} value {value!r}.")
    heldout = _check_phrasing(phrasing) == "heldout"
    words = _POSITION_WORDS[value] if attribute == "position" else _word_pool(attribute, value, heldout)
    return tuple(dict.fromkeys(words))  # de-duplicate, keep order (duplicates above are sampling weights)


# ------------------------------------------------------------------------------------------- templates

# Template mini-language: {shape} {color} {size} {pos} (prepositional phrase, "in the top left"),
# {pos_np} (noun phrase, "the top left corner") and {pos_bare} ("top left"). An optional segment
# "[text|fallback]" keeps `text` when every attribute it names is stated, else `fallback` (default empty).
# Write "a" before any word: it becomes "an" before a vowel. Shape and colour are always stated.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a [{size} ]{color} {shape}[ {pos}]",
    "[{pos_bare}: ]a {color} {shape}[, {size}]",
    "there is a [{size} ]{color} {shape}[ {pos}]",
    "an image of a [{size} ]{color} {shape}[ located {pos}]",
    "{color} {shape}[, {size}][, {pos_bare}]",
    "[{pos} sits|here is] a [{size} ]{color} {shape}",
    "a {shape} that is {color}[ and {size}][, {pos}]",
    "draw a [{size} ]{color} {shape}[ {pos}]",
    "a photo of a [{size} ]{color} {shape}[ {pos}]",
    "a picture showing a [{size} ]{color} {shape}[ {pos}]",
    "a [{size} ]{shape} in {color}[, {pos}]",
    "[{size} ]{color} {shape}[ {pos}]",
    "a {color} {shape}[ {pos}][, {size} in size]",
    "[{pos}, ]a [{size} ]{color} {shape}",
    "[{pos_bare}: ]{color} {shape}[ ({size})]",
    "a [{size} ]{shape}, {color}[, {pos}]",
    "the image shows a [{size} ]{color} {shape}[ {pos}]",
    "[{size} ]{shape}, {color}[, {pos_bare}]",
    "{color} [{size} ]{shape}[ {pos}]",
    "a [{size} ]{shape} colored {color}[ {pos}]",
    "a [{size} ]{shape} coloured {color}[, {pos}]",
    "one [{size} ]{color} {shape}[ {pos}]",
    "a lone [{size} ]{color} {shape}[ {pos}]",
    "[{size} ]{color} {shape} on black[, {pos}]",
    "a [{size} ]{color} {shape} is [{pos}|shown]",
    "[{pos} there is|there is] a [{size} ]{color} {shape}",
    "[{pos} is|this is] a [{size} ]{color} {shape}",
    "the {shape} is {color}[ and {size}][, {pos}]",
    "a {color} {shape}[ of {size} size][ {pos}]",
    "draw a {color} {shape}[ {pos}][. make it {size}]",
    "show me a [{size} ]{color} {shape}[ {pos}]",
    "generate a [{size} ]{color} {shape}[ {pos}]",
    "{shape}: {color}[, {size}][, {pos_bare}]",
    "shape: {shape}, color: {color}[, size: {size}][, {pos_bare}]",
    "a {color} {shape}[ that is {size}][ {pos}]",
    "a [{size} ]{shape}[ {pos}], {color} in color",
    "[{pos}: ]a [{size} ]{shape} that is {color}",
    "the picture contains a [{size} ]{color} {shape}[ {pos}]",
    "a [{size} ]{color} {shape}[ placed {pos}]",
    "a [{size} ]{color} {shape}[ positioned {pos}]",
    "a black image with a [{size} ]{color} {shape}[ {pos}]",
    "a [{size} ]{color} {shape} appears[ {pos}]",
    "a {shape}, {color}[ and {size}][, {pos}]",
    "an illustration of a [{size} ]{color} {shape}[ {pos}]",
    "simple drawing: [{size} ]{color} {shape}[ {pos}]",
    "a [{size} ]{color} {shape}[ {pos}] on a dark background",
    "[{pos} you can see|you can see] a [{size} ]{color} {shape}",
    "a [{size} ]{color} {shape}[ occupies {pos_np}]",
    "[{size} ]{color} {shape}[ {pos}], black background",
    "[{pos_bare}, ]{color}, {shape}[, {size}]",
    "colour: {color}; shape: {shape}[; {size}][; {pos_bare}]",
    "a [{size} ]{color} {shape} sitting[ {pos}| alone]",
    "[{pos}: ]just a [{size} ]{color} {shape}",
    "render a [{size} ]{shape} in {color}[ {pos}]",
)

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "i want a [{size} ]{shape}[ {pos}], {color} please",
    "{color} is the color of the [{size} ]{shape}[ {pos}]",
    "[{pos} we see|we see] a [{size} ]{shape} of {color} color",
    "create one {color} {shape}[, {size}][, {pos}]",
    "a {shape} ({color}[, {size}])[ {pos}]",
    "nothing but a [{size} ]{color} {shape}[ {pos}]",
    "a [{size} ]{shape} whose color is {color}[, {pos}]",
    "there should be a [{size} ]{color} {shape}[ {pos}]",
    "make the {shape} {color}[ and {size}][, {pos}]",
    "[{pos} lies|we have] a [{size} ]{color} {shape}",
    "can you paint a [{size} ]{shape} using {color}[ {pos}]?",
    "[{pos_np} holds|a canvas holding] a [{size} ]{color} {shape}",
    "a [{size} ]{shape}[ {pos}]; it is {color}",
    "depict a [{size}-sized ]{color} {shape}[ {pos}]",
)

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_SEGMENT = re.compile(r"\[([^\[\]|]*)(?:\|([^\[\]]*))?\]")


def _check_phrasing(phrasing: str) -> str:
    if phrasing not in ("train", "heldout"):
        raise ValueError(f"phrasing must be 'train' or 'heldout', got {phrasing!r}.")
    return phrasing


def _templates(phrasing: str) -> tuple[str, ...]:
    return TRAIN_TEMPLATES if _check_phrasing(phrasing) == "train" else HELDOUT_TEMPLATES


def _choose(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _position_nouns(position: str, heldout: bool) -> list[str]:
    """Noun phrases for a position ("the upper-left corner", "the middle of the picture", ...)."""
    if position == "center":
        return _center_phrases(heldout)
    return [phrase for bare in _POSITION_WORDS[position] for phrase in _corner_phrases(bare, heldout)]


def _prepositions(position: str) -> tuple[str, ...]:
    # "on the middle" reads wrong; "on the top left" is common. Repeats weight "in".
    return ("in", "in", "at") if position == "center" else ("in", "in", "at", "on")


def _position_slots(position: str, rng: np.random.Generator, heldout: bool) -> dict[str, str]:
    """Draw the three position forms: {pos} (with preposition), {pos_np} and {pos_bare}."""
    bare = _choose(rng, _POSITION_WORDS[position])
    noun = _choose(rng, _position_nouns(position, heldout))
    prep_phrase = f"{_choose(rng, _prepositions(position))} {noun}"
    # Terse human prompts drop the article: "at top left", "at center".
    if rng.random() < 0.1:
        prep_phrase = f"at {_choose(rng, _POSITION_WORDS[position])}"
    return {"pos": prep_phrase, "pos_np": noun, "pos_bare": bare}


def _word_pool(attribute: str, value: str, heldout: bool) -> tuple[str, ...]:
    """Words to draw for a shape, colour or size; repeats in the train lists weight the plain word."""
    table, extra = {
        "shape": (_SHAPE_WORDS, _HELDOUT_SHAPE_WORDS),
        "color": (_COLOR_WORDS, _HELDOUT_COLOR_WORDS),
        "size": (_SIZE_WORDS, _HELDOUT_SIZE_WORDS),
    }[attribute]
    return table[value] + (extra.get(value, ()) if heldout else ())


def slot_options(phrasing: Phrasing = "train") -> dict[str, tuple[str, ...]]:
    """Every filler each template slot can take under ``phrasing`` (e.g. to bound caption length)."""
    heldout = _check_phrasing(phrasing) == "heldout"
    options: dict[str, set[str]] = {
        slot: set() for slot in ("shape", "color", "size", "pos", "pos_np", "pos_bare")
    }
    for attribute in ("shape", "color", "size"):
        for value in _VALUES[attribute]:
            options[attribute].update(_word_pool(attribute, value, heldout))
    for position in POSITIONS:
        nouns = _position_nouns(position, heldout)
        options["pos_np"].update(nouns)
        options["pos_bare"].update(_POSITION_WORDS[position])
        options["pos"].update(f"{prep} {noun}" for prep in _prepositions(position) for noun in nouns)
        options["pos"].update(f"at {bare}" for bare in _POSITION_WORDS[position])
    return {slot: tuple(sorted(words)) for slot, words in options.items()}


def fill_template(template: str, slots: Mapping[str, str | None]) -> str:
    """Fill a template: drop optional segments naming an unstated (None) slot, fix articles and spacing."""

    def segment(match: re.Match[str]) -> str:
        text, fallback = match.group(1), match.group(2) or ""
        return text if all(slots.get(name) is not None for name in _PLACEHOLDER.findall(text)) else fallback

    text = _SEGMENT.sub(segment, template)
    text = _PLACEHOLDER.sub(lambda m: str(slots[m.group(1)]), text)
    text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,;:.?)])", r"\1", text)


def _style(text: str, rng: np.random.Generator) -> str:
    """Vary capitalisation and the final full stop, as people do."""
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.25 and text[-1] not in ".?!)":
        text += "."
    return text


def caption(
    attrs: ShapeAttributes,
    rng: np.random.Generator,
    phrasing: Phrasing = "train",
    state_size: bool = True,
    state_position: bool = True,
) -> str:
    """A natural caption for ``attrs`` that states shape, colour and (optionally) size and position."""
    heldout = _check_phrasing(phrasing) == "heldout"
    template = _choose(rng, _templates(phrasing))
    slots: dict[str, str | None] = {
        name: _choose(rng, _word_pool(name, getattr(attrs, name), heldout))
        for name in ("shape", "color", "size")
    }
    position_slots = _position_slots(attrs.position, rng, heldout)
    if not state_size:
        slots["size"] = None
    slots.update({k: (v if state_position else None) for k, v in position_slots.items()})
    return _style(fill_template(template, slots), rng)


# --------------------------------------------------------------------------------------------- samples


BLEND_ATTRIBUTES: tuple[str, ...] = ("color", "position", "size")
"""The attributes a blend may change: the ones with a value between two words (no shape lies between two)."""


@dataclass(frozen=True)
class Blend:
    """A sample between two captions: its image is :func:`render_between` the sample's attributes (A) and
    ``other`` (B) at ``alpha``, which differ in ``attribute`` only. Training starts its flow from the same lerp
    of the two captions' VE posteriors (``crossflow.models.variational.blend_posteriors``) that interpolation
    walks at inference, so the path between two prompts has images to land on."""

    attribute: str
    other: ShapeAttributes
    """B's attributes."""
    caption: str
    """B's caption (same template and wording as A's where the sample's rng allows)."""
    alpha: float
    """How far from A to B, in [0, 1]."""

    def to_json(self) -> dict[str, object]:
        """What a shard stores in its ``blend.json`` member (crossflow.data.decode reads it back)."""
        return {"caption": self.caption, "alpha": self.alpha, "attribute": self.attribute,
                "other": self.other.to_dict()}


@dataclass
class ShapesSample:
    """One image, its caption, the true attributes and which of them the caption states (and, for a blend, B)."""

    image: Image.Image
    caption: str
    attributes: ShapeAttributes
    stated: tuple[str, ...]
    blend: Blend | None = None

    def to_json(self) -> dict[str, object]:
        """The sample's metadata: attributes, stated attribute names and caption."""
        return {**self.attributes.to_dict(), "stated": list(self.stated), "caption": self.caption}


def _validate_holdout(holdout: Sequence[Mapping[str, str]]) -> tuple[dict[str, str], ...]:
    entries = []
    for entry in holdout:
        if not entry:
            raise ValueError("A holdout entry must name at least one attribute, got an empty one.")
        for key, value in entry.items():
            if key not in _VALUES or value not in _VALUES[key]:
                raise ValueError(
                    f"Holdout entry {dict(entry)} has an unknown attribute or value {key}={value!r}."
                )
        entries.append(dict(entry))
    return tuple(entries)


def allowed_combinations(holdout: Sequence[Mapping[str, str]] = ()) -> list[ShapeAttributes]:
    """All attribute combinations that match no holdout entry (an entry matches when all its keys agree)."""
    entries = _validate_holdout(holdout)
    combos = [ShapeAttributes(*values) for values in itertools.product(*(_VALUES[a] for a in ATTRIBUTES))]
    kept = [c for c in combos if not any(all(getattr(c, k) == v for k, v in e.items()) for e in entries)]
    if not kept:
        raise ValueError("The holdout excludes every attribute combination; nothing is left to generate.")
    return kept


class ShapesGenerator:
    """An endless, seed-deterministic stream of :class:`ShapesSample` (attributes uniform over allowed combos)."""

    def __init__(
        self,
        seed: int,
        image_size: int = 32,
        phrasing: Phrasing = "train",
        p_omit_size: float = P_OMIT,
        p_omit_position: float = P_OMIT,
        holdout: Sequence[Mapping[str, str]] = (),
        blend_fraction: float = 0.0,
        supersample: int = 1,
    ) -> None:
        self.supersample = _check_supersample(supersample)
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}.")
        for name, p in (("p_omit_size", p_omit_size), ("p_omit_position", p_omit_position)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
        if not 0.0 <= blend_fraction < 1.0:
            raise ValueError(f"blend_fraction must be in [0, 1), got {blend_fraction}.")
        self.blend_fraction = blend_fraction
        self.seed = seed
        self.image_size = image_size
        self.phrasing = _check_phrasing(phrasing)
        self.p_omit_size = p_omit_size
        self.p_omit_position = p_omit_position
        self.holdout = _validate_holdout(holdout)
        self.combinations = allowed_combinations(self.holdout)
        self._rng = np.random.default_rng(seed)

    def sample(self) -> ShapesSample:
        """Draw the next sample (attributes, then jitter, then what to state, then the wording); with
        ``blend_fraction`` > 0, that fraction are blends (:meth:`sample_blend`). With 0 no extra number is drawn,
        so the stream is the one this generator always made."""
        rng = self._rng
        if self.blend_fraction > 0 and rng.random() < self.blend_fraction:
            return self.sample_blend()
        attrs = self.combinations[int(rng.integers(len(self.combinations)))]
        image = render(attrs, self.image_size, rng, self.supersample)
        state_size = bool(rng.random() >= self.p_omit_size)
        state_position = bool(rng.random() >= self.p_omit_position)
        text = caption(attrs, rng, self.phrasing, state_size=state_size, state_position=state_position)
        stated = (
            ("shape", "color") + (("size",) if state_size else ()) + (("position",) if state_position else ())
        )
        return ShapesSample(image=image, caption=text, attributes=attrs, stated=stated)

    def sample_blend(self) -> ShapesSample:
        """A :class:`Blend`: two allowed combinations that differ in one of :data:`BLEND_ATTRIBUTES`, α uniform in
        [0, 1], both captions stating all four attributes, drawn with the same template and word choices."""
        rng = self._rng
        while True:  # a holdout can leave an attribute without a second allowed value for this combination
            a = self.combinations[int(rng.integers(len(self.combinations)))]
            attribute = BLEND_ATTRIBUTES[int(rng.integers(len(BLEND_ATTRIBUTES)))]
            others = [c for c in self.combinations if getattr(c, attribute) != getattr(a, attribute)
                      and all(getattr(c, n) == getattr(a, n) for n in ATTRIBUTES if n != attribute)]
            if others:
                break
        b = others[int(rng.integers(len(others)))]
        alpha = float(rng.uniform(0.0, 1.0))
        image = render_between(a, b, alpha, self.image_size, rng, self.supersample)
        # One seed for both captions: the same template and the same words for what the two share.
        words = int(rng.integers(2**63))
        text_a, text_b = (caption(x, np.random.default_rng(words), self.phrasing) for x in (a, b))
        return ShapesSample(image=image, caption=text_a, attributes=a, stated=ATTRIBUTES,
                            blend=Blend(attribute=attribute, other=b, caption=text_b, alpha=alpha))

    def __iter__(self) -> Iterator[ShapesSample]:
        while True:
            yield self.sample()

    def take(self, n: int) -> list[ShapesSample]:
        """The next ``n`` samples."""
        return [self.sample() for _ in range(n)]


def make_prompts(
    n: int,
    seed: int,
    phrasing: Phrasing = "train",
    image_size: int = 32,
    holdout: Sequence[Mapping[str, str]] = (),
) -> list[ShapesSample]:
    """``n`` evaluation prompts that state all four attributes (with their reference images)."""
    generator = ShapesGenerator(
        seed, image_size=image_size, phrasing=phrasing, p_omit_size=0.0, p_omit_position=0.0, holdout=holdout
    )
    return generator.take(n)


# ------------------------------------------------------------------------------------------- instances

# Instance mode (weights2weights-style studies, crossflow/weight_space): an object *identity* the prompt vocabulary
# cannot name — a continuous hue, size and aspect ratio — bound to a rare token, so only a fine-tune can learn it.
INSTANCE_TOKEN = "sks"
"""The rare token an instance is bound to (DreamBooth's choice; any word the captions never use works)."""
INSTANCE_TEMPLATE = "a photo of {token}"
"""The one caption every image of an instance carries."""
INSTANCE_SIZE_RANGE: tuple[float, float] = (0.12, 0.24)
"""Half-extent (geometric mean of half-width and half-height) as a fraction of S, drawn uniformly. The top end
stays below the dataset's "large" (0.26) so that a stretched instance still fits beside a corner."""
INSTANCE_ASPECT_RANGE: tuple[float, float] = (0.625, 1.6)
"""Width / height, drawn log-uniformly (as many tall as wide instances)."""
INSTANCE_MARGIN = 1.0
"""Pixels kept black between an instance and the canvas edge (its centre is clamped inward to keep them)."""


@dataclass(frozen=True)
class Instance:
    """One object identity: a shape in a hue, size and aspect ratio of its own (rendered at full saturation)."""

    shape: str
    hue: float
    """Hue in degrees [0, 360): rendered as HSV(hue, 1, 1), in general none of the seven palette colours."""
    size: float
    """Half-extent as a fraction of S: √(half-width · half-height), the radius / half side / half height of the
    unstretched shape."""
    aspect: float
    """Width / height of the shape's bounding box (1: the dataset's own proportions)."""

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"Unknown shape {self.shape!r}; expected one of {list(SHAPES)}.")
        if not 0.0 <= self.hue < 360.0:
            raise ValueError(f"hue must be in [0, 360) degrees, got {self.hue}.")
        if not 0.0 < self.size < 0.5:
            raise ValueError(f"size must be a half-extent fraction in (0, 0.5), got {self.size}.")
        if not 0.1 <= self.aspect <= 10.0:
            raise ValueError(f"aspect must be in [0.1, 10], got {self.aspect}.")

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The fill colour: HSV(hue, 1, 1) in 0..255."""
        return hue_to_rgb(self.hue)

    def half_extents(self, image_size: int) -> tuple[float, float]:
        """(half-width, half-height) in pixels at canvas side ``image_size``."""
        half, stretch = self.size * image_size, float(np.sqrt(self.aspect))
        return half * stretch, half / stretch

    def to_dict(self) -> dict[str, float | str]:
        """The attributes as a plain dict (JSON-ready)."""
        return {"shape": self.shape, "hue": self.hue, "size": self.size, "aspect": self.aspect}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Instance:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["shape"]), float(data["hue"]), float(data["size"]), float(data["aspect"]))  # type: ignore[arg-type]


def hue_to_rgb(hue: float) -> tuple[int, int, int]:
    """HSV(hue°, 1, 1) -> RGB in 0..255 (the piecewise-linear hexcone of Smith 1978)."""
    h = (hue % 360.0) / 60.0
    x = 1.0 - abs(h % 2.0 - 1.0)
    sector = int(h) % 6
    r, g, b = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][sector]
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def sample_instances(
    n: int,
    seed: int,
    size_range: tuple[float, float] = INSTANCE_SIZE_RANGE,
    aspect_range: tuple[float, float] = INSTANCE_ASPECT_RANGE,
) -> list[Instance]:
    """``n`` seed-deterministic instances: shape uniform, hue uniform on the circle, size uniform, aspect log-uniform."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    if not 0 < size_range[0] <= size_range[1] < 0.5 or not 0 < aspect_range[0] <= aspect_range[1]:
        raise ValueError(f"invalid ranges: size {size_range}, aspect {aspect_range}.")
    rng = np.random.default_rng(seed)
    log_lo, log_hi = np.log(aspect_range[0]), np.log(aspect_range[1])
    return [
        Instance(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            hue=float(rng.uniform(0.0, 360.0)) % 360.0,
            size=float(rng.uniform(*size_range)),
            aspect=float(np.exp(rng.uniform(log_lo, log_hi))),
        )
        for _ in range(n)
    ]


def render_instance(
    instance: Instance, image_size: int = 32, rng: np.random.Generator | None = None, position: str | None = None
) -> Image.Image:
    """Draw ``instance`` on a black S x S canvas. ``rng`` picks one of the five positions and jitters it, as the
    dataset does (None: the centre, no jitter); ``position`` fixes the position (``rng`` then only jitters it), for
    captions that state it. The centre is then clamped so the object keeps
    :data:`INSTANCE_MARGIN` pixels from every edge (a large stretched instance sits a little inside a corner)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}.")
    if position is not None and position not in POSITIONS:
        raise ValueError(f"Unknown position {position!r}; expected one of {list(POSITIONS)}.")
    if rng is None:
        fx, fy = POSITIONS[position or "center"]
        jx = jy = 0.0
    else:
        fx, fy = POSITIONS[position or tuple(POSITIONS)[int(rng.integers(len(POSITIONS)))]]
        jx, jy = rng.uniform(-JITTER, JITTER, size=2)
    half_w, half_h = instance.half_extents(image_size)
    cx = float(np.clip((fx + jx) * image_size, half_w + INSTANCE_MARGIN, image_size - half_w - INSTANCE_MARGIN))
    cy = float(np.clip((fy + jy) * image_size, half_h + INSTANCE_MARGIN, image_size - half_h - INSTANCE_MARGIN))
    mask = _shape_mask(instance.shape, cx, cy, instance.size * image_size, image_size, aspect=instance.aspect)
    pixels = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    pixels[mask] = instance.rgb
    return Image.fromarray(pixels, mode="RGB")


def instance_caption(token: str = INSTANCE_TOKEN) -> str:
    """The caption of every image of an instance: ``"a photo of sks"``."""
    if not token or not token.strip() or any(ch.isspace() for ch in token):
        raise ValueError(f"the instance token must be one non-empty word, got {token!r}.")
    return INSTANCE_TEMPLATE.format(token=token)
