"""``crossflow prepare``: folder / jsonl / csv / webdataset inputs -> shards, skips, resume, workers, errors."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from crossflow.data.decode import decode_image
from crossflow.data.pipeline import image_text_dataset
from crossflow.models.text_encoder import FrozenTextEncoder, TextEncoderConfig
from crossflow.prepare import PrepareOptions, build_parser, main, prepare

S = 8  # output image side


def _image(seed: int, size: tuple[int, int] = (20, 12)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _read(out: Path) -> list[dict]:
    """Every sample of the output shards, through plain webdataset (members as raw bytes)."""
    urls = sorted(glob.glob(str(out / "*.tar")))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _expected_pixels(data: bytes) -> np.ndarray:
    return (decode_image(data, S) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _options(src: Path | str, out: Path, **kwargs) -> PrepareOptions:
    return PrepareOptions(str(src), str(out), image_size=S, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------- inputs


def _photo_folder(root: Path) -> dict[str, bytes]:
    """5 captioned images (4 formats, nested), one without a caption, one caption without an image."""
    files = {}
    for i, rel in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/d.webp", "e.jpeg"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(i, (20, 12) if i % 2 else (11, 17)).save(path)
        path.with_suffix(".txt").write_text(f"  caption number {i} \n")
        files[rel] = path.read_bytes()
    _image(9).save(root / "uncaptioned.png")
    (root / "notes.txt").write_text("a caption whose image is gone")
    return files


def test_image_folder_round_trip(tmp_path: Path) -> None:
    files = _photo_folder(tmp_path / "photos")
    manifest = prepare(_options(tmp_path / "photos", tmp_path / "out", samples_per_shard=2))

    assert sorted(os.listdir(tmp_path / "out")) == [".prepare", "data-000000.tar", "data-000001.tar",
                                                    "data-000002.tar", "prepare.json"]
    summary = manifest["summary"]
    assert (summary["samples"], summary["items"]) == (5, 7)
    assert summary["skipped"] == {"missing_caption": 1, "missing_image": 1}
    assert summary["skipped_examples"] == {"missing_caption": ["uncaptioned.png"], "missing_image": ["notes.txt"]}
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert summary["caption_words"] == {"min": 3, "mean": 3.0, "median": 3, "p95": 3, "max": 3}

    records = _read(tmp_path / "out")
    order = ["a.png", "b.jpg", "e.jpeg", "sub/c.png", "sub/d.webp"]  # sorted walk: a folder's files first
    assert [r["__key__"] for r in records] == [f"{i:09d}" for i in range(5)]
    prepared = {"version": 1, "image_size": S, "text": None, "latent": {"kind": "pixels"}}
    assert manifest["prepared"] == prepared
    for record, rel in zip(records, order, strict=True):
        meta = json.loads(record["json"])
        number = ["a.png", "b.jpg", "sub/c.png", "sub/d.webp", "e.jpeg"].index(rel)
        assert record["txt"].decode() == meta["caption"] == f"caption number {number}"
        assert meta == {"caption": meta["caption"], "source": rel, "meta": None, "prepared": prepared}
        assert np.array_equal(_pixels(record["png"]), _expected_pixels(files[rel]))

    # The project's own reader decodes them as any other shards.
    read = list(image_text_dataset(str(tmp_path / "out"), image_size=S, shuffle=False))
    assert [r["caption"] for r in read] == [r["txt"].decode() for r in records]
    assert sum(r["skipped"] for r in read) == 0


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_tables(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "table"
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(4):
        _image(i).save(folder / "img" / f"{i}.png")
        rows.append({"file_name": f"img/{i}.png", "text": f"photo {i}", "license": "cc-by"})
    rows.append({"file_name": "img/missing.png", "text": "gone", "license": "cc-by"})
    rows.append({"file_name": "img/0.png", "license": "cc-by"} if fmt == "jsonl"
                else {"file_name": "img/0.png", "text": "", "license": "cc-by"})
    if fmt == "jsonl":  # Hugging Face imagefolder names, found as metadata.jsonl inside the folder
        lines = [json.dumps(r) for r in rows] + ["{not json"]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        src = folder
        expected_skips = {"missing_image": 1, "missing_caption": 1, "bad_record": 1}
    else:  # our own column names, a csv file given directly
        src = folder / "data.csv"
        with open(src, "w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "caption", "license"])
            writer.writeheader()
            writer.writerows({"image": r["file_name"], "caption": r.get("text"), "license": r["license"]} for r in rows)
        expected_skips = {"missing_image": 1, "empty_caption": 1}
    manifest = prepare(_options(src, tmp_path / "out", samples_per_shard=3))

    assert manifest["summary"]["skipped"] == expected_skips
    records = _read(tmp_path / "out")
    assert [r["txt"].decode() for r in records] == [f"photo {i}" for i in range(4)]
    for i, record in enumerate(records):
        meta = json.loads(record["json"])
        assert meta["source"] == f"img/{i}.png"
        assert meta["meta"]["license"] == "cc-by"
        assert np.array_equal(_pixels(record["png"]), _expected_pixels((folder / "img" / f"{i}.png").read_bytes()))


def test_precomputed_text_equals_the_encoder(tmp_path: Path, tiny_text_encoder_dir: str) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    captions = ["a red circle", "a small blue square in the top left",
                "a large green triangle in the bottom right corner of the picture, with a white disc"]
    for i, caption in enumerate(captions):
        _image(i).save(src / f"{i}.png")
        (src / f"{i}.txt").write_text(caption)
    manifest = prepare(_options(src, tmp_path / "out", precompute_text=True, text_encoder=tiny_text_encoder_dir,
                                max_length=12, batch_size=8))

    assert manifest["prepared"]["text"] == {"pretrained": tiny_text_encoder_dir, "max_length": 12,
                                            "hidden_state_layer": -1, "scale": 1.0, "hidden_size": 32}
    assert manifest["summary"]["truncated_captions"] == 1
    states, mask = FrozenTextEncoder(TextEncoderConfig(pretrained=tiny_text_encoder_dir, max_length=12))(captions)
    records = _read(tmp_path / "out")
    for i, record in enumerate(records):
        text, text_mask = _npy(record["text.npy"]), _npy(record["mask.npy"])
        assert (text.dtype, text.shape, text_mask.dtype, text_mask.shape) == (np.float16, (12, 32), np.bool_, (12,))
        assert np.array_equal(text, states[i].half().numpy())
        assert np.array_equal(text_mask, mask[i].numpy())
        assert json.loads(record["json"])["prepared"] == manifest["prepared"]


# ------------------------------------------------------------------------------------------ webdataset input


def _web_shards(folder: Path) -> dict[str, str]:
    """3 tars × 4 samples; 00000.tar/s02 has a corrupt jpg, 00001.tar/s11 an empty caption, 00001.tar/s13 its
    caption in json only, and 00002.tar is cut inside its last sample. Returns source -> caption of the good."""
    folder.mkdir()
    good = {}
    for t in range(3):
        with wds.TarWriter(str(folder / f"{t:05d}.tar")) as sink:
            for i in range(4):
                key, caption = f"s{t}{i}", f"a picture number {t}{i}"
                sample = {"__key__": key, "jpg": _encoded(_image(10 * t + i)), "json": {"caption": caption, "n": i}}
                if (t, i) != (1, 3):
                    sample["txt"] = "   " if (t, i) == (1, 1) else caption
                if (t, i) == (0, 2):
                    sample["jpg"] = b"\xff\xd8 this is not a jpeg"
                sink.write(sample)
                if (t, i) not in ((0, 2), (1, 1), (2, 3)):
                    good[f"{t:05d}.tar/{key}"] = caption
    with tarfile.open(folder / "00002.tar") as tar:
        cut = next(m for m in tar.getmembers() if m.name == "s23.jpg")
    with open(folder / "00002.tar", "r+b") as f:
        f.truncate(cut.offset_data + cut.size // 2)
    return good


def test_web_shards_skip_exactly_the_broken_samples(tmp_path: Path) -> None:
    good = _web_shards(tmp_path / "web")
    manifest = prepare(_options(tmp_path / "web", tmp_path / "out", samples_per_shard=4))

    summary = manifest["summary"]
    assert summary["skipped"] == {"corrupt_image": 1, "empty_caption": 1, "truncated_tar": 1}
    assert summary["skipped_examples"] == {"corrupt_image": ["00000.tar/s02"], "empty_caption": ["00001.tar/s11"],
                                           "truncated_tar": ["00002.tar/s23"]}
    assert (summary["samples"], summary["items"]) == (9, 12)
    records = _read(tmp_path / "out")
    metas = [json.loads(r["json"]) for r in records]
    assert {m["source"]: m["caption"] for m in metas} == good
    assert [r["txt"].decode() for r in records] == [m["caption"] for m in metas]
    assert all(m["meta"] == {"caption": m["caption"], "n": int(m["source"][-1])} for m in metas)
    assert len({r["__key__"] for r in records}) == 9


def test_resume_writes_only_the_missing_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _web_shards(tmp_path / "web")
    out = tmp_path / "out"
    args = [str(tmp_path / "web"), "--out", str(out), "--image-size", str(S), "--samples-per-shard", "4",
            "--no-progress"]
    main(args)
    shards = sorted(glob.glob(str(out / "*.tar")))
    first = {p: Path(p).read_bytes() for p in shards}
    before = json.loads((out / "prepare.json").read_text())["summary"]

    os.remove(shards[1])  # lost
    os.rename(shards[2], shards[2] + ".partial")  # a crash before the rename: stats written, tar not yet
    Path(shards[2] + ".partial").write_bytes(b"half a shard")
    main(args)
    after = json.loads((out / "prepare.json").read_text())["summary"]
    assert after["shards"] == {"total": 3, "written": 2, "reused": 1}
    assert {k: v for k, v in after.items() if k not in ("shards", "seconds")} == {
        k: v for k, v in before.items() if k not in ("shards", "seconds")}
    assert {p: Path(p).read_bytes() for p in sorted(glob.glob(str(out / "*.tar")))} == first
    assert not glob.glob(str(out / "*.partial"))

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:4], "16", *args[5:]])  # another image size into the same folder
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "image_size" in err and "--overwrite" in err
    with wds.TarWriter(str(tmp_path / "web" / "00003.tar")) as sink:  # new input, same options
        sink.write({"__key__": "new", "png": _encoded(_image(0), "PNG"), "txt": "a new picture"})
    with pytest.raises(SystemExit):
        main(args)
    assert "input changed" in capsys.readouterr().err
    main([*args[:4], "16", *args[5:], "--overwrite"])
    assert _pixels(_read(out)[0]["png"]).shape == (16, 16, 3)


def test_two_workers_write_the_same_bytes_as_one(tmp_path: Path, tiny_text_encoder_dir: str) -> None:
    _web_shards(tmp_path / "web")
    pattern = str(tmp_path / "web" / "{00000..00002}.tar")
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        prepare(_options(pattern, out, samples_per_shard=3, workers=workers, precompute_text=True,
                         text_encoder=tiny_text_encoder_dir, max_length=12, batch_size=2))
        outputs.append([Path(p).read_bytes() for p in sorted(glob.glob(str(out / "*.tar")))])
    assert len(outputs[0]) == 4
    assert outputs[0] == outputs[1]


# ------------------------------------------------------------------------------------------------ latents


def test_vae_latents_are_the_raw_posterior_in_fp16(tmp_path: Path, tiny_vae_dir: str) -> None:
    from crossflow.models import codec

    files = _photo_folder(tmp_path / "photos")
    vae_options = {"precompute_latents": "vae", "vae": tiny_vae_dir, "latent_channels": 4, "downsample": 2}
    manifest = prepare(_options(tmp_path / "photos", tmp_path / "out", **vae_options))

    assert manifest["prepared"]["latent"] == {"kind": "vae", "vae": tiny_vae_dir, "shape": [4, 4, 4]}
    record = _read(tmp_path / "out")[0]
    assert "png" not in record
    latent = _npy(record["latent.npy"])
    assert latent.dtype == np.float16 and latent.shape == (2, 4, S // 2, S // 2)
    built = codec.build_codec(codec.CodecConfig(kind="vae", vae=tiny_vae_dir, image_size=S,
                                                latent_channels=4, downsample=2))
    mean, logvar = built.moments(decode_image(files["a.png"], S)[None])
    np.testing.assert_allclose(latent.astype(np.float32), torch.stack([mean[0], logvar[0]]).numpy(), atol=2e-3)

    prepare(_options(tmp_path / "photos", tmp_path / "out2", keep_images=True, **vae_options))
    assert {"png", "latent.npy"} <= set(_read(tmp_path / "out2")[0])


# ------------------------------------------------------------------------------------------------- errors


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "a_file").write_text("not a folder")
    _photo_folder(tmp_path / "photos")
    out = str(tmp_path / "out")
    photos = str(tmp_path / "photos")
    return {
        "missing": ([str(tmp_path / "nope"), "--out", out], "does not exist"),
        "empty": ([str(tmp_path / "empty"), "--out", out], "no usable samples"),
        "unknown format": ([str(tmp_path / "notes.txt"), "--out", out], "unknown input format"),
        "no tars": ([str(tmp_path / "empty" / "*.tar"), "--out", out], "no webdataset shards"),
        "zero per shard": ([photos, "--out", out, "--samples-per-shard", "0"], "--samples-per-shard must be positive"),
        "unwritable": ([photos, "--out", str(tmp_path / "a_file" / "out")], "cannot create output folder"),
        "vae without --vae": ([photos, "--out", out, "--precompute-latents", "vae"], "needs --vae"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "unknown format", "no tars", "zero per shard", "unwritable",
                                  "vae without --vae"])
def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    argv, message = _bad_inputs(tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_every_option_has_help() -> None:
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert len(actions) == len(PrepareOptions.__dataclass_fields__)
    assert all(a.help and len(a.help) > 10 for a in actions)
