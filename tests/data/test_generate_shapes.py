"""The datamodule's generate_shapes: held-out combinations, and a folder from other settings refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossflow.data.pipeline import expand_shards
from crossflow.data.shapes import COLORS
from crossflow.datamodule import GENERATION_RECORD, ShapesGeneration, ShardDataModule
from crossflow.errors import CrossFlowError

HOLDOUT = [{"color": "green", "shape": "triangle"}, {"size": "small", "shape": "square"}]


def _module(root: Path, holdout: list[dict[str, str]], num_train: int = 300) -> ShardDataModule:
    gen = ShapesGeneration(num_train=num_train, num_val=20, seed=3, samples_per_shard=200, holdout=holdout)
    return ShardDataModule(str(root / "train"), str(root / "val"), image_size=16, generate_shapes=gen)


def test_holdout_combinations_are_never_generated(tmp_path: Path) -> None:
    _module(tmp_path, HOLDOUT).prepare_data()
    attrs = []
    for url in expand_shards(str(tmp_path / "train")):
        with tarfile.open(url) as tar:
            attrs += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(attrs) == 300
    assert not any(a["color"] == "green" and a["shape"] == "triangle" for a in attrs)
    assert not any(a["size"] == "small" and a["shape"] == "square" for a in attrs)
    # every word still occurs: only the combinations are missing
    assert any(a["color"] == "green" for a in attrs) and any(a["shape"] == "triangle" for a in attrs)
    assert any(a["size"] == "small" for a in attrs) and any(a["shape"] == "square" for a in attrs)
    record = json.loads((tmp_path / "train" / GENERATION_RECORD).read_text())
    assert record == {"num": 300, "seed": 3, "image_size": 16, "holdout": HOLDOUT}


def test_same_settings_reuse_the_folder(tmp_path: Path) -> None:
    _module(tmp_path, HOLDOUT).prepare_data()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "train").iterdir()}
    _module(tmp_path, HOLDOUT).prepare_data()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "train").iterdir()} == before


@pytest.mark.parametrize("change", ["holdout", "num"])
def test_a_folder_generated_otherwise_is_refused(tmp_path: Path, change: str) -> None:
    _module(tmp_path, HOLDOUT).prepare_data()
    other = _module(tmp_path, [] if change == "holdout" else HOLDOUT, num_train=300 if change == "holdout" else 400)
    with pytest.raises(CrossFlowError, match="generated with"):
        other.prepare_data()


def _stated(root: Path) -> list[list[str]]:
    stated = []
    for url in expand_shards(str(root)):
        with tarfile.open(url) as tar:
            stated += [json.load(tar.extractfile(m))["stated"] for m in tar.getmembers() if m.name.endswith(".json")]
    return stated


def test_caption_omission_rates_reach_both_splits_and_the_record(tmp_path: Path) -> None:
    # configs/data/omit.yaml: more captions that leave size / position out than the spec's 0.15 each.
    gen = ShapesGeneration(num_train=60, num_val=20, seed=3, samples_per_shard=60, p_omit_size=1.0, p_omit_position=0.0)
    ShardDataModule(str(tmp_path / "train"), str(tmp_path / "val"), image_size=16, generate_shapes=gen).prepare_data()
    for split, num in (("train", 60), ("val", 20)):
        stated = _stated(tmp_path / split)
        assert len(stated) == num and all("size" not in s and "position" in s for s in stated)
        record = json.loads((tmp_path / split / GENERATION_RECORD).read_text())
        assert record["p_omit_size"] == 1.0 and record["p_omit_position"] == 0.0
    spec = ShapesGeneration(num_train=60, num_val=20, seed=3, samples_per_shard=60)
    with pytest.raises(CrossFlowError, match="generated with"):  # the spec's rates are other settings
        ShardDataModule(str(tmp_path / "train"), None, image_size=16, generate_shapes=spec).prepare_data()
    with pytest.raises(CrossFlowError, match="p_omit_position must be in"):
        ShapesGeneration(p_omit_position=1.5)


def _off_palette_pixels(root: Path) -> int:
    """Pixels of the PNGs under ``root`` that are neither black nor exactly a palette colour."""
    palette = {(0, 0, 0), *COLORS.values()}
    count = 0
    for url in expand_shards(str(root)):
        with tarfile.open(url) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    rgb = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read()))).reshape(-1, 3)
                    count += sum(tuple(int(v) for v in px) not in palette for px in rgb)
    return count


def test_supersampling_reaches_the_shards_and_the_record(tmp_path: Path) -> None:
    # configs/data/antialias.yaml: anti-aliased outlines; 1 (the spec) is recorded as nothing, as before.
    gen = ShapesGeneration(num_train=40, num_val=10, seed=3, samples_per_shard=40, supersample=4)
    ShardDataModule(str(tmp_path / "train"), str(tmp_path / "val"), image_size=16, generate_shapes=gen).prepare_data()
    spec = ShapesGeneration(num_train=40, num_val=10, seed=3, samples_per_shard=40)
    ShardDataModule(str(tmp_path / "spec"), None, image_size=16, generate_shapes=spec).prepare_data()
    assert _off_palette_pixels(tmp_path / "spec") == 0  # crisp: every pixel black or a palette colour
    assert _off_palette_pixels(tmp_path / "train") > 40  # part-covered outline pixels in every image
    for split in ("train", "val"):
        assert json.loads((tmp_path / split / GENERATION_RECORD).read_text())["supersample"] == 4
    assert "supersample" not in json.loads((tmp_path / "spec" / GENERATION_RECORD).read_text())
    with pytest.raises(CrossFlowError, match="generated with"):  # crisp data is other data
        ShardDataModule(str(tmp_path / "train"), None, image_size=16, generate_shapes=spec).prepare_data()
    with pytest.raises(CrossFlowError, match="supersample must be an integer >= 1"):
        ShapesGeneration(supersample=0)
