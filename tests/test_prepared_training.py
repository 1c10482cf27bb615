"""Your own data end to end: an image folder with captions -> crossflow prepare (precomputed text states and
VAE latents) -> train.py fit with no encoder loaded -> sample.py; and a mismatched model refused at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from crossflow.cli import main as train_main
from crossflow.data.shapes import ShapesGenerator
from crossflow.prepare import main as prepare_main
from crossflow.sample_cli import main as sample_main

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder_dir: str, tiny_vae_dir: str) -> Path:
    """24 images of another size (resized and cropped by prepare) with sidecar captions -> 3 shards."""
    root = tmp_path_factory.mktemp("own_data")
    photos = root / "photos"
    photos.mkdir()
    for i, sample in enumerate(ShapesGenerator(5, image_size=40).take(24)):
        sample.image.save(photos / f"img{i:03d}.png")
        (photos / f"img{i:03d}.txt").write_text(sample.caption)
    prepare_main([
        str(photos), "--out", str(root / "shards"), "--image-size", str(IMAGE_SIZE), "--samples-per-shard", "8",
        "--precompute-text", "--text-encoder", tiny_text_encoder_dir, "--max-length", "12",
        "--precompute-latents", "vae", "--vae", tiny_vae_dir, "--latent-channels", "4", "--downsample", "2",
        "--no-progress",
    ])
    return root / "shards"


def fit_args(run_dir: Path, shards: Path, encoder_dir: str, vae_dir: str, max_length: int = 12) -> list[str]:
    return [
        "fit", "--config", "configs/demo.yaml",
        "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
        "--trainer.callbacks=crossflow.callbacks.EMA",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={run_dir}/checkpoints", "--trainer.callbacks.save_last=true",
        f"--model.model.text_encoder.pretrained={encoder_dir}", f"--model.model.text_encoder.max_length={max_length}",
        "--model.model.codec.kind=vae", f"--model.model.codec.vae={vae_dir}", f"--model.model.codec.image_size={IMAGE_SIZE}",
        "--model.model.codec.latent_channels=4", "--model.model.codec.downsample=2", "--model.model.patch_size=2",
        "--model.model.variational.width=32", "--model.model.variational.depth=1",
        "--model.model.variational.num_heads=2", "--model.model.variational.token_dim=8",
        "--model.model.alignment_dim=32", "--model.optimizer.warmup_steps=1",
        f"--data.train_shards={shards}", f"--data.val_shards={shards}", "--data.batch_size=4",
        "--data.num_workers=0", "--data.shuffle_buffer=8", "--data.generate_shapes=null",
    ]


def test_prepared_shards_train_without_encoders_and_sample(
    prepared: Path, tmp_path: Path, tiny_text_encoder_dir: str, tiny_vae_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crossflow.lit_module
    import crossflow.models.codec

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an encoder was loaded although the shards hold its outputs")

    # Training must run on the stored text states and latent moments alone.
    with monkeypatch.context() as patch:
        patch.setattr(crossflow.lit_module, "FrozenTextEncoder", refuse)
        patch.setattr(crossflow.models.codec.VAECodec, "vae", property(refuse))  # the weights (config.json is read)
        train_main(fit_args(tmp_path, prepared, tiny_text_encoder_dir, tiny_vae_dir))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.exists()

    # Sampling loads both: the prompt encoder and the VAE decoder.
    sample_main(["--ckpt", str(ckpt), "--prompt", "a red circle", "--num", "2", "--steps", "2", "--out", str(tmp_path / "samples")])
    pngs = sorted((tmp_path / "samples").glob("*.png"))
    assert pngs and all(Image.open(p).size[0] >= IMAGE_SIZE for p in pngs)


def test_shards_from_another_encoder_length_are_refused_at_start(
    prepared: Path, tmp_path: Path, tiny_text_encoder_dir: str, tiny_vae_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(fit_args(tmp_path, prepared, tiny_text_encoder_dir, tiny_vae_dir, max_length=10))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("do not match the model config" in line and "max_length=10" in line for line in err)
    assert not (tmp_path / "checkpoints").exists()  # refused before any step
