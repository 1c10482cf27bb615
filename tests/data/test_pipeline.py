"""Reading webdataset shards: decoding, resizing, corrupt samples skipped *and counted*, bad patterns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from crossflow.data.pipeline import expand_shards, image_text_dataset
from crossflow.errors import CrossFlowError


def _png(size: int = 16, color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def _iterate(shards: str | list[str], image_size: int = 16) -> list[dict]:
    return list(image_text_dataset(shards, image_size, shuffle=False))


def test_reads_png_txt_and_json_captions(tmp_path: Path) -> None:
    _write(tmp_path / "a-000000.tar", [
        {"__key__": "0", "png": _png(), "txt": "a red square"},
        {"__key__": "1", "png": _png(), "json": json.dumps({"caption": "from json"}).encode()},
    ])
    out = _iterate(str(tmp_path))
    assert [s["caption"] for s in out] == ["a red square", "from json"]
    assert out[0]["image"].shape == (3, 16, 16) and out[0]["image"].dtype == torch.float32
    assert abs(out[0]["image"][0, 0, 0].item() - 200 / 255) < 1e-6
    assert sum(s["skipped"] for s in out) == 0


def test_other_sizes_are_resized_and_center_cropped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 32), (0, 255, 0)).save(buf, format="PNG")
    _write(tmp_path / "b.tar", [{"__key__": "0", "png": buf.getvalue(), "txt": "green"}])
    (sample,) = _iterate(str(tmp_path / "b.tar"), image_size=16)
    assert sample["image"].shape == (3, 16, 16)


def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    _write(tmp_path / "c-000000.tar", [
        {"__key__": "0", "png": _png(), "txt": "good one"},
        {"__key__": "1", "png": b"not a png at all", "txt": "corrupt image"},
        {"__key__": "2", "png": _png(), "txt": "   "},  # empty caption
        {"__key__": "3", "txt": "no image"},
        {"__key__": "4", "png": _png(), "txt": "good two"},
    ])
    out = _iterate(str(tmp_path))
    assert [s["caption"] for s in out] == ["good one", "good two"]
    assert sum(s["skipped"] for s in out) == 3, "every dropped sample is counted exactly once"


def test_truncated_tar_does_not_stop_the_epoch(tmp_path: Path) -> None:
    _write(tmp_path / "d-000000.tar", [{"__key__": str(i), "png": _png(), "txt": f"sample {i}"} for i in range(4)])
    data = (tmp_path / "d-000000.tar").read_bytes()
    (tmp_path / "d-000000.tar").write_bytes(data[: len(data) // 2])  # cut mid-member
    _write(tmp_path / "d-000001.tar", [{"__key__": "x", "png": _png(), "txt": "next shard"}])
    out = _iterate(sorted(str(p) for p in tmp_path.glob("d-*.tar")))
    assert out[-1]["caption"] == "next shard"
    assert 1 <= len(out) < 5


def test_brace_patterns_globs_and_folders_expand(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / f"s-{i:06d}.tar", [{"__key__": "0", "png": _png(), "txt": "x"}])
    assert len(expand_shards(str(tmp_path / "s-{000000..000002}.tar"))) == 3
    assert len(expand_shards(str(tmp_path / "s-*.tar"))) == 3
    assert len(expand_shards(str(tmp_path))) == 3


@pytest.mark.parametrize("pattern", ["/nonexistent/shards-{000000..000009}.tar", "/nonexistent/*.tar", "/nonexistent"])
def test_pattern_matching_nothing_is_a_clear_error(pattern: str) -> None:
    with pytest.raises(CrossFlowError, match="no webdataset shards match"):
        expand_shards(pattern)
