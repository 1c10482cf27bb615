"""``crossflow edit``: every verb runs on a tiny saved model, writes its files, and bad input is one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from crossflow.__main__ import main as crossflow_main
from crossflow.config import ModelConfig


@pytest.fixture(scope="module")
def saved(tiny_model_config_session: ModelConfig, tmp_path_factory: pytest.TempPathFactory,
          random_pipeline) -> tuple[Path, Path]:
    """A tiny random CrossFlow model saved as a folder, and one of its own images as a PNG."""
    config = copy.deepcopy(tiny_model_config_session)
    pipe = random_pipeline(config)
    root = tmp_path_factory.mktemp("edit")
    pipe.save_pretrained(root / "model")
    image = pipe(["a red circle"], num_steps=4, generator=torch.Generator().manual_seed(0))[0]
    image.save(root / "source.png")
    return root / "model", root / "source.png"


def _run(args: list[str], out: Path) -> dict:
    crossflow_main(["edit", *args, "--out", str(out), "--steps", "4"])
    files = {p.name for p in out.iterdir()}
    verb = args[0]
    report = json.loads((out / f"{verb}.json").read_text())
    assert set(report["files"]) <= files
    return report


def test_interpolate_writes_strip_gif_and_smoothness(saved: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = saved
    report = _run(["interpolate", "--ckpt", str(model), "--a", "a red circle", "--b", "a blue square",
                   "--frames", "5"], tmp_path)
    assert len(report["adjacent_l2"]) == 4 and report["smoothness_ratio (max / median adjacent L2)"] >= 1.0
    assert report["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0] and report["spacing"] == "uniform"
    arc = _run(["interpolate", "--ckpt", str(model), "--a", "a red circle", "--b", "a blue square",
                "--frames", "5", "--spacing", "arc", "--arc-rounds", "1"], tmp_path / "arc")
    assert arc["arc_rounds"] == 1 and report["arc_rounds"] == 0
    assert arc["alphas"][0] == 0.0 and arc["alphas"][-1] == 1.0 and arc["alphas"] == sorted(arc["alphas"])
    from PIL import Image

    with Image.open(tmp_path / "interpolation.gif") as gif:
        assert gif.n_frames >= 2


def test_arithmetic_writes_one_image_per_seed(saved: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = saved
    report = _run(["arithmetic", "--ckpt", str(model), "--expr", "a red circle + a square - a circle",
                   "--seeds", "3"], tmp_path)
    assert report["terms"] == [[1.0, "a red circle"], [1.0, "a square"], [-1.0, "a circle"]]
    from PIL import Image

    with Image.open(tmp_path / "arithmetic.png") as grid:
        assert grid.width > grid.height  # one row of 3


def test_invert_reports_a_small_reconstruction_error(saved: tuple[Path, Path], tmp_path: Path) -> None:
    model, image = saved
    crossflow_main(["edit", "invert", "--ckpt", str(model), "--image", str(image), "--out", str(tmp_path),
                    "--steps", "50", "--solver", "heun"])
    report = json.loads((tmp_path / "invert.json").read_text())
    assert report["latent_mse_per_image"][0] < 1e-4  # Heun forth and back on a smooth random model
    assert report["restored_clipped"], "the pixel codec's bounds: clipped pixels get the model's values first"
    crossflow_main(["edit", "invert", "--ckpt", str(model), "--image", str(image), "--out", str(tmp_path / "kept"),
                    "--steps", "50", "--solver", "heun", "--keep-clipped"])
    report = json.loads((tmp_path / "kept" / "invert.json").read_text())
    assert not report["restored_clipped"] and report["latent_mse_per_image"][0] < 1e-4
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "z_text.safetensors"))["z_text"].shape[0] == 1


@pytest.mark.parametrize("verb", ["sdedit", "cycle"])
def test_edits_write_source_and_result(saved: tuple[Path, Path], tmp_path: Path, verb: str) -> None:
    model, image = saved
    args = (["--prompt", "a green square", "--t0", "0.5", "--method", "sde"] if verb == "sdedit"
            else ["--source-prompt", "a red circle", "--target-prompt", "a green circle"])
    report = _run([verb, "--ckpt", str(model), "--image", str(image), *args], tmp_path)
    assert (tmp_path / "source_and_edit.png").exists() and report["rho"] > 0


def test_drag_writes_source_and_result(saved: tuple[Path, Path], tmp_path: Path) -> None:
    model, image = saved
    report = _run(["drag", "--ckpt", str(model), "--image", str(image), "--prompt", "a red circle",
                   "--from", "2", "2", "--to", "5", "5", "--patch", "2", "--method", "ode"], tmp_path)
    assert report["from"] == [2, 2] and (tmp_path / "source_and_drag.png").exists()


def test_sigma_prints_the_posterior_statistics(saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = saved
    crossflow_main(["edit", "sigma", "--ckpt", str(model), "--prompt", "a red circle", "a blue square"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["sigma_min"] > 0 and stats["sigma_max"] >= stats["sigma_median"] >= stats["sigma_min"]


@pytest.mark.parametrize("args, message", [
    (["invert", "--ckpt", "NOPE"], "checkpoint not found"),
    (["invert", "--image", "missing.png"], "image not found"),
    (["interpolate", "--a", "x", "--b", "y", "--steps", "0"], "--steps must be positive"),
    (["sdedit", "--prompt", "x", "--t0", "1.5"], "t0"),
    (["arithmetic", "--expr", " + "], "has no prompt"),
])
def test_bad_input_is_one_line(saved: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               args: list[str], message: str) -> None:
    model, image = saved
    full = [args[0]]
    if "--ckpt" not in args:
        full += ["--ckpt", str(model)]
    if args[0] in ("invert", "sdedit") and "--image" not in args:
        full += ["--image", str(image)]
    full += args[1:]
    with pytest.raises(SystemExit) as exc:
        crossflow_main(["edit", *full, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_wrong_image_size_is_refused(saved: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, image = saved
    from PIL import Image

    with Image.open(image) as im:
        im.resize((im.width * 2, im.height * 2)).save(tmp_path / "big.png")
    with pytest.raises(SystemExit):
        crossflow_main(["edit", "invert", "--ckpt", str(model), "--image", str(tmp_path / "big.png"),
                        "--out", str(tmp_path)])
    assert "resize it first" in capsys.readouterr().err
