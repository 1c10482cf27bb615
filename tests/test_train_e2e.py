"""End to end on a tiny model: shapes shards -> train.py fit -> checkpoint -> sample.py -> PNG; and CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossflow.cli import main as train_main
from crossflow.data.shards import write_shapes_shards
from crossflow.inference import CrossFlowPipeline
from crossflow.sample_cli import main as sample_main

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_shards(root / "train", 96, seed=0, samples_per_shard=48, image_size=IMAGE_SIZE, progress=False)
    write_shapes_shards(root / "val", 16, seed=1, samples_per_shard=16, image_size=IMAGE_SIZE, progress=False)
    return {"train": str(root / "train"), "val": str(root / "val")}


def fit_args(run_dir: Path, shards: dict[str, str], encoder_dir: str, max_steps: int = 4) -> list[str]:
    """A tiny CPU run of the real CLI: every path the demo takes, seconds instead of minutes."""
    return [
        "fit",
        "--config", "configs/demo.yaml",
        f"--trainer.max_steps={max_steps}",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        "--trainer.callbacks=crossflow.callbacks.EMA",
        "--trainer.callbacks+=crossflow.callbacks.ShapesEvaluation",
        "--trainer.callbacks.num_prompts=4",
        "--trainer.callbacks.num_steps=2",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={run_dir}/checkpoints",
        "--trainer.callbacks.save_last=true",
        f"--model.model.text_encoder.pretrained={encoder_dir}",
        "--model.model.text_encoder.max_length=12",
        f"--model.model.codec.image_size={IMAGE_SIZE}",
        "--model.model.variational.width=32",
        "--model.model.variational.depth=1",
        "--model.model.variational.num_heads=2",
        "--model.model.variational.token_dim=8",
        "--model.model.alignment_dim=32",
        "--model.optimizer.warmup_steps=2",
        f"--data.train_shards={shards['train']}",
        f"--data.val_shards={shards['val']}",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--data.shuffle_buffer=16",
        "--data.generate_shapes=null",
    ]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shards: dict[str, str], tiny_text_encoder_dir: str) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    train_main(fit_args(run_dir, shards, tiny_text_encoder_dir))
    return run_dir


def test_fit_writes_run_dir_with_config_sha_and_checkpoint(trained_run: Path) -> None:
    assert (trained_run / "config.yaml").exists(), "resolved config must be saved in the run dir"
    info = (trained_run / "run_info.json").read_text()
    assert '"git_sha"' in info and '"argv"' in info
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    # Loadable without executing pickled code, holds our config and EMA, and not the frozen encoder.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    assert state["crossflow"]["config"]["codec"]["image_size"] == IMAGE_SIZE
    assert any(k.startswith("ema_model.") for k in state["state_dict"]), "EMA weights live in the state dict"
    assert not any(k.startswith("text_encoder.") for k in state["state_dict"])
    assert list(trained_run.glob("samples_step*.png")), "evaluation callback writes sample grids"


def test_ema_differs_from_raw_weights_after_training(trained_run: Path) -> None:
    state = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    raw = state["state_dict"]["model.flow.final.linear.weight"]
    ema = state["state_dict"]["ema_model.flow.final.linear.weight"]
    assert raw.abs().sum() > 0 and not torch.equal(raw, ema)


def test_sample_cli_writes_pngs_and_is_reproducible(trained_run: Path, tmp_path: Path) -> None:
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        sample_main(["--ckpt", ckpt, "--prompt", "a small red circle in the top left", "--prompt", "a big blue square",
                     "--num", "2", "--steps", "3", "--seed", "7", "--out", str(out), "--upscale", "1"])
        outs.append(out)
    files = sorted(p.name for p in outs[0].glob("*.png"))
    assert files == ["000.png", "001.png", "002.png", "003.png", "grid.png"]
    for f in files:
        a = np.asarray(Image.open(outs[0] / f))
        assert a.shape[:2] == ((IMAGE_SIZE, IMAGE_SIZE) if f != "grid.png" else a.shape[:2])
        assert np.array_equal(a, np.asarray(Image.open(outs[1] / f))), "same seed must give identical pixels"


def test_pipeline_from_checkpoint_matches_saved_folder(trained_run: Path, tmp_path: Path) -> None:
    pipe = CrossFlowPipeline.from_pretrained(trained_run / "checkpoints" / "last.ckpt")
    pipe.save_pretrained(tmp_path / "export")
    again = CrossFlowPipeline.from_pretrained(tmp_path / "export")
    kwargs = {"num_steps": 3, "output_type": "pt"}
    a = pipe(["a red circle"], generator=torch.Generator().manual_seed(0), **kwargs)
    b = again(["a red circle"], generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(a, b)


def test_export_cli_writes_a_folder_that_samples_like_the_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    from crossflow.checkpoint import main as export_main

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    export_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "ema")])
    export_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "raw"), "--no-ema"])
    assert {p.name for p in (tmp_path / "ema").iterdir()} == {"config.json", "model.safetensors"}
    kwargs = {"num_steps": 3, "output_type": "pt", "guidance_scale": 1.0}
    images = {}
    for name, source in (("ckpt", ckpt), ("ema", tmp_path / "ema"), ("raw", tmp_path / "raw")):
        pipe = CrossFlowPipeline.from_pretrained(source)
        images[name] = pipe(["a red circle"], generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(images["ckpt"], images["ema"])  # the checkpoint's default is its EMA weights
    raw = CrossFlowPipeline.from_pretrained(ckpt, use_ema=False)
    assert torch.equal(raw(["a red circle"], generator=torch.Generator().manual_seed(0), **kwargs), images["raw"])


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crossflow.checkpoint import main as export_main

    with pytest.raises(SystemExit) as exc:
        export_main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out")])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "/nonexistent/x.ckpt", "--prompt", "a red circle"], "checkpoint not found"),
        (["--prompt", " "], "non-empty"),
        (["--prompt", "a red circle", "--steps", "0"], "--steps must be positive"),
        (["--prompt", "a red circle", "--cfg-scale", "0.5"], "--cfg-scale must be >= 1"),
        (["--prompt", "a red circle", "--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
        (["--prompt", "a red circle", "--temperature", "nan"], "--temperature must be a finite number >= 0"),
    ],
)
def test_sample_cli_bad_input_is_one_line(
    trained_run: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), *extra] if "--ckpt" not in extra else extra
    with pytest.raises(SystemExit) as exc:
        sample_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err


def test_sample_cli_checkpoint_of_another_kind_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, bogus)
    with pytest.raises(SystemExit):
        sample_main(["--ckpt", str(bogus), "--prompt", "a red circle"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a CrossFlow checkpoint" in err


def test_resume_with_another_model_config_is_refused(
    trained_run: Path, shards: dict[str, str], tiny_text_encoder_dir: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = fit_args(tmp_path, shards, tiny_text_encoder_dir, max_steps=6)
    args += ["--model.model.variational.token_dim=16", f"--ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"]
    with pytest.raises(SystemExit) as exc:
        train_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "another model config" in err and "variational.token_dim" in err


def test_missing_shards_is_one_line(tmp_path: Path, tiny_text_encoder_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {"train": str(tmp_path / "nothing-{000000..000003}.tar"), "val": str(tmp_path / "nothing")}
    with pytest.raises(SystemExit) as exc:
        train_main(fit_args(tmp_path, bad, tiny_text_encoder_dir))
    assert exc.value.code == 2
    assert "no webdataset shards match" in capsys.readouterr().err
