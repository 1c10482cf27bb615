"""Shapes shards: webdataset round trip, determinism, bad input, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from crossflow.data.shapes import ShapesGenerator
from crossflow.data.shards import main, shard_pattern, write_shapes_shards


def _digest(paths: list[str]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def test_shards_round_trip_through_webdataset(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    paths = write_shapes_shards(str(out), 23, seed=7, samples_per_shard=10, progress=False)
    assert [os.path.basename(p) for p in paths] == [
        "shapes-000000.tar",
        "shapes-000001.tar",
        "shapes-000002.tar",
    ]
    assert shard_pattern(str(out)) == os.path.join(str(out), "shapes-{000000..000002}.tar")

    dataset = wds.WebDataset(shard_pattern(str(out)), shardshuffle=False, empty_check=False).decode("pil")
    records = list(dataset)
    expected = ShapesGenerator(seed=7).take(23)
    assert len(records) == 23
    for index, (record, sample) in enumerate(zip(records, expected, strict=True)):
        assert record["__key__"] == f"{index:08d}"
        assert {"png", "txt", "json"} <= set(record)
        assert record["txt"] == sample.caption
        assert record["json"] == sample.to_json()
        assert record["png"].size == (32, 32)
        assert np.array_equal(np.asarray(record["png"].convert("RGB")), np.asarray(sample.image))


def test_shards_are_deterministic_and_overwrite_is_explicit(tmp_path: Path) -> None:
    first = write_shapes_shards(str(tmp_path / "a"), 12, seed=1, samples_per_shard=5, progress=False)
    second = write_shapes_shards(str(tmp_path / "b"), 12, seed=1, samples_per_shard=5, progress=False)
    assert _digest(first) == _digest(second)
    with pytest.raises(ValueError, match="overwrite"):
        write_shapes_shards(str(tmp_path / "a"), 4, seed=1, progress=False)
    # Replacing a bigger dataset leaves no stale shard behind.
    paths = write_shapes_shards(str(tmp_path / "a"), 4, seed=1, progress=False, overwrite=True)
    assert sorted(os.listdir(tmp_path / "a")) == ["shapes-000000.tar"] == [os.path.basename(p) for p in paths]
    assert shard_pattern(str(tmp_path / "a")) == paths[0]


def test_bad_input_raises_one_clear_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        write_shapes_shards(str(tmp_path / "x"), 0, seed=0, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="Cannot create"):
        write_shapes_shards(str(blocker / "sub"), 5, seed=0, progress=False)
    with pytest.raises(ValueError, match="No shapes-"):
        shard_pattern(str(tmp_path))


def test_cli_writes_shards_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "cli")
    code = main(["--out", out, "--num", "6", "--seed", "2", "--samples-per-shard", "4", "--no-progress"])
    assert code == 0
    assert "wrote 6 samples" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["shapes-000000.tar", "shapes-000001.tar"]
    assert main(["--out", out, "--num", "0", "--seed", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_sets_how_often_captions_leave_attributes_out(tmp_path: Path) -> None:
    out = tmp_path / "omit"
    assert main(["--out", str(out), "--num", "8", "--seed", "2", "--p-omit-size", "0", "--p-omit-position", "1",
                 "--no-progress"]) == 0
    with tarfile.open(out / "shapes-000000.tar") as tar:
        stated = [json.load(tar.extractfile(m))["stated"] for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(stated) == 8 and all("size" in s and "position" not in s for s in stated)
    assert main(["--out", str(tmp_path / "bad"), "--num", "8", "--seed", "2", "--p-omit-size", "2"]) == 2
