"""``crossflow eval`` on a tiny saved model: report, grids, held-out splits, prompt files, one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from crossflow.__main__ import main as crossflow_main
from crossflow.config import ModelConfig
from crossflow.data.shards import write_shapes_shards
from crossflow.eval.features import ShapesFeatureRecipe
from crossflow.eval.run import main as eval_main
from crossflow.eval.run import parse_holdout, run_eval, shapes_prompt_set
from crossflow.inference import CrossFlowPipeline
from crossflow.models.flow_model import build_model
from crossflow.models.text_encoder import FrozenTextEncoder

IMAGE_SIZE = 16  # the shapes generator's minimum
GREEN_TRIANGLES = "color=green,shape=triangle"
SMALL_MAGENTA_SQUARES = "size=small,color=magenta,shape=square"


def _strict_json(text: str) -> Any:
    """json.loads that refuses NaN / Infinity (not JSON, though Python writes them by default)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"report holds {name}"))


def _save_tiny(config: ModelConfig, directory: Path) -> str:
    """A randomly initialised tiny model at 16 px, saved as a folder (config.json + safetensors)."""
    config = copy.deepcopy(config)
    config.codec.image_size = IMAGE_SIZE
    with torch.random.fork_rng():
        torch.manual_seed(0)
        text_encoder = FrozenTextEncoder(config.text_encoder)
        model = build_model(config, text_dim=text_encoder.hidden_size)
        with torch.no_grad():  # off the zero init, so images and alignment are not constant
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    pipe = CrossFlowPipeline(config, model.eval(), text_encoder)
    return str(pipe.save_pretrained(directory))


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model_config_session: ModelConfig, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _save_tiny(tiny_model_config_session, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def holdout_report(
    tiny_ckpt: str, tmp_path_factory: pytest.TempPathFactory, feature_cache: Path, feature_recipe: ShapesFeatureRecipe
) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("eval_holdout")
    run_eval(tiny_ckpt, str(out), num=6, holdout=[GREEN_TRIANGLES, SMALL_MAGENTA_SQUARES], num_holdout=3,
             steps=2, batch_size=5, feature_cache=str(feature_cache), feature_recipe=feature_recipe, progress=False)
    return _strict_json((out / "report.json").read_text()), out


def test_report_grid_and_samples_are_written(holdout_report: tuple[dict[str, Any], Path]) -> None:
    report, out = holdout_report
    assert report["num_images"] == 6 + 2 * 3 and report["image_size"] == IMAGE_SIZE
    assert report["options"]["steps"] == 2 and report["options"]["solver"] == "euler"
    assert report["images_per_s"] > 0 and report["timings"]["sampling_s"] > 0
    assert "git_sha" in report and report["model_kind"] == "crossflow"
    shapes = report["shapes"]["all"]
    assert shapes["n"] == 12 and 0 <= shapes["all_correct"] <= 1
    fk = report["fid_kid"]
    assert fk["n_real"] == fk["n_fake"] == 12 and fk["fid"] >= 0 and fk["fid_floor"] >= 0
    assert fk["feature_extractor"]["name"] == "shapes_feature_net"
    assert fk["fid"] > fk["fid_floor"]  # random weights vs the real images of the very prompts
    alignment = report["alignment"]
    assert {"matched", "shuffled", "real", "note"} <= set(alignment) and -1 <= alignment["matched"] <= 1
    for name in ("grid.png", "grid_holdout.png"):
        with Image.open(out / name) as grid:
            assert grid.mode == "RGB" and grid.width > 3 * IMAGE_SIZE
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"prompt", "group", "truth", "measured", "alignment"} <= set(rows[0])


def test_holdout_prompts_are_reported_apart(holdout_report: tuple[dict[str, Any], Path]) -> None:
    report, out = holdout_report
    shapes = report["shapes"]
    assert shapes["seen"]["n"] == 6 and shapes["held_out"]["n"] == 6
    assert {k: v["n"] for k, v in shapes["per_holdout"].items()} == {GREEN_TRIANGLES: 3, SMALL_MAGENTA_SQUARES: 3}
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for row in rows:
        truth = row["truth"]
        green_triangle = truth["color"] == "green" and truth["shape"] == "triangle"
        small_magenta_square = (truth["size"], truth["color"], truth["shape"]) == ("small", "magenta", "square")
        expected = [n for n, hit in ((GREEN_TRIANGLES, green_triangle), (SMALL_MAGENTA_SQUARES, small_magenta_square))
                    if hit]
        assert row["group"] == (expected or "seen"), row


def test_shapes_prompt_set_splits_overlapping_holdouts() -> None:
    entries = [parse_holdout("color=green"), parse_holdout("shape=triangle, color=green")]
    prompts = shapes_prompt_set(40, seed=3, image_size=IMAGE_SIZE, holdout=entries, num_holdout=10)
    assert len(prompts.captions) == 60 and prompts.real_images is not None
    assert prompts.real_images.shape == (60, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert prompts.attributes is not None
    seen, first, second = prompts.attributes[:40], prompts.attributes[40:50], prompts.attributes[50:]
    assert all(a.color != "green" for a in seen) and all(not g for g in prompts.groups[:40])
    assert all(a.color == "green" for a in first)
    assert all((a.color, a.shape) == ("green", "triangle") for a in second)
    # A green triangle matches both entries, and is counted in both.
    assert all(g == ("color=green", "shape=triangle,color=green") for g in prompts.groups[50:])


def test_prompt_file_with_reference_shards(
    tiny_ckpt: str, tmp_path: Path, feature_cache: Path, feature_recipe: ShapesFeatureRecipe
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\na red circle\n\na large blue square at the top left\n")
    shards = tmp_path / "shards"
    write_shapes_shards(str(shards), 8, seed=5, image_size=32, progress=False)  # resized to the model's 16 px
    report = run_eval(tiny_ckpt, str(tmp_path / "out"), num=5, prompts=str(prompts), reference=str(shards), steps=2,
                      feature_cache=str(feature_cache), feature_recipe=feature_recipe, progress=False)
    assert report["prompts"] == {"source": "file", "path": str(prompts), "distinct_prompts": 2}
    assert "shapes" not in report and report["num_images"] == 5
    assert report["fid_kid"]["n_real"] == 5 and report["fid_kid"]["reference"] == str(shards)
    assert "real" not in report["alignment"] and "matched" in report["alignment"]
    rows = (tmp_path / "out" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(r)["prompt"] for r in rows] == ["a red circle", "a large blue square at the top left"] * 2 + [
        "a red circle"]


def test_crossflow_eval_command(tiny_ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crossflow_main(["eval", "--ckpt", tiny_ckpt, "--out", str(tmp_path), "--num", "3", "--steps", "1",
                    "--features", "none", "--no-progress", "--phrasing", "heldout", "--cfg-scale", "1"])
    report = _strict_json((tmp_path / "report.json").read_text())
    assert report["fid_kid"] == {"skipped": "--features none"} and report["prompts"]["phrasing"] == "heldout"
    assert "shapes [all] n=3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ckpt", "missing/model.ckpt"], "checkpoint not found"),
        (["--num", "0"], "--num must be positive"),
        (["--holdout", "color:green"], "bad --holdout"),
        (["--holdout", "color=purple"], "bad --holdout"),
        (["--holdout", "colour=green"], "bad --holdout"),
        (["--holdout", "color=green,color=red"], "given twice"),
        (["--prompts", "EMPTY"], "holds no prompts"),
        (["--prompts", "missing.txt"], "prompt file not found"),
        (["--solver", "rk99"], "solver"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    args: list[str], message: str, tiny_ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    argv = ["--ckpt", tiny_ckpt, "--out", str(tmp_path / "out"), "--num", "2", "--steps", "1", "--no-progress",
            "--features", "none"]
    argv += [str(empty) if a == "EMPTY" else a for a in args]
    with pytest.raises(SystemExit) as exc:
        eval_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    # The last line is the error; anything before it is progress output (transformers' weight loading).
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: ") and message in err, err


def test_noise_baseline_is_evaluated_without_alignment(
    tiny_model_config: ModelConfig, tmp_path: Path, feature_cache: Path, feature_recipe: ShapesFeatureRecipe
) -> None:
    tiny_model_config.kind = "noise_baseline"
    ckpt = _save_tiny(tiny_model_config, tmp_path / "baseline")
    report = run_eval(ckpt, str(tmp_path / "out"), num=4, steps=2, feature_cache=str(feature_cache),
                      feature_recipe=feature_recipe, progress=False)
    assert report["model_kind"] == "noise_baseline" and report["shapes"]["all"]["n"] == 4
    assert "skipped" in report["alignment"] and report["fid_kid"]["fid"] >= 0
