"""CrossFlowPipeline: build, save / load, reproducible sampling, argument and checkpoint errors."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossflow.config import ModelConfig
from crossflow.errors import CrossFlowError
from crossflow.inference import CONFIG_NAME, WEIGHTS_NAME, CrossFlowPipeline, describe, make_grid, to_pil
from crossflow.models.crossflow import CrossFlowModel
from crossflow.models.text_encoder import FrozenTextEncoder
from crossflow.sampling import NFE_PER_STEP, SOLVERS, SolveResult

PROMPTS = ["a small red circle in the top left", "a large blue square"]
STEPS = 3


def _seed(value: int) -> torch.Generator:
    return torch.Generator().manual_seed(value)


@pytest.fixture(scope="module")
def pipe(tiny_model_config_session: ModelConfig) -> CrossFlowPipeline:
    config = copy.deepcopy(tiny_model_config_session)
    torch.manual_seed(0)
    text_encoder = FrozenTextEncoder(config.text_encoder)
    model = CrossFlowModel(config, text_dim=text_encoder.hidden_size)
    with torch.no_grad():
        # Move off the zero init so the flow (and its CFG indicator) actually shapes the output.
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    return CrossFlowPipeline(config, model, text_encoder)


@pytest.fixture(scope="module")
def reference(pipe: CrossFlowPipeline) -> torch.Tensor:
    """The pipeline's images for PROMPTS with seed 0 (computed once: sampling is the slow part)."""
    return _images(pipe, 0)


@pytest.fixture(scope="module")
def saved_dir(pipe: CrossFlowPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipe.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def _images(pipe: CrossFlowPipeline, seed: int = 0, **kwargs: object) -> torch.Tensor:
    return pipe(PROMPTS, num_steps=STEPS, generator=_seed(seed), output_type="pt", **kwargs)  # type: ignore[arg-type]


def test_pipeline_builds_from_tiny_config(pipe: CrossFlowPipeline, tiny_model_config: ModelConfig) -> None:
    assert pipe.config == tiny_model_config
    assert pipe.device == torch.device("cpu")
    sizes = describe(pipe)
    assert set(sizes) == {"variational", "flow", "alignment", "text_encoder"}
    assert all(n > 0 for n in sizes.values())


def test_pt_output_shape_and_range(reference: torch.Tensor) -> None:
    images = reference
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0


def test_same_seed_is_reproducible_and_seeds_differ(pipe: CrossFlowPipeline, reference: torch.Tensor) -> None:
    assert torch.equal(_images(pipe, 0), reference)
    assert not torch.equal(_images(pipe, 1), reference)


def test_pil_output_matches_tensor_output(pipe: CrossFlowPipeline, reference: torch.Tensor) -> None:
    pil = pipe(PROMPTS, num_steps=STEPS, generator=_seed(0))
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(im, Image.Image) and im.size == (8, 8) and im.mode == "RGB" for im in pil)
    expected = (reference * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    for image, pixels in zip(pil, expected, strict=True):
        assert torch.equal(torch.from_numpy(np.array(image)), pixels)


def test_guidance_changes_the_images(pipe: CrossFlowPipeline, reference: torch.Tensor) -> None:
    plain = _images(pipe, 0, guidance_scale=1.0)
    guided = _images(pipe, 0, guidance_scale=3.0)
    assert guided.shape == plain.shape
    assert not torch.allclose(plain, guided)


def test_temperature_zero_samples_mu_and_ignores_the_seed(pipe: CrossFlowPipeline, reference: torch.Tensor) -> None:
    cold = _images(pipe, 0, temperature=0.0)
    assert torch.equal(cold, _images(pipe, 1, temperature=0.0))
    assert not torch.equal(cold, reference)
    assert torch.equal(_images(pipe, 0, temperature=1.0), reference)  # 1 is the default: the VE's own σ
    # In between, z_text moves towards μ in proportion to τ.
    mu = pipe.encode_prompts(PROMPTS, temperature=0.0)
    full = pipe.encode_prompts(PROMPTS, generator=_seed(3))
    half = pipe.encode_prompts(PROMPTS, generator=_seed(3), temperature=0.5)
    torch.testing.assert_close(half - mu, 0.5 * (full - mu), atol=1e-5, rtol=1e-4)
    for bad in (-1.0, math.nan, math.inf):  # a NaN or inf would turn every draw into NaN
        with pytest.raises(CrossFlowError, match="temperature must be a finite number >= 0"):
            pipe(PROMPTS, num_steps=STEPS, temperature=bad)


def test_sampling_restores_training_mode(pipe: CrossFlowPipeline) -> None:
    pipe.model.train()
    try:
        _images(pipe)
        assert pipe.model.training
    finally:
        pipe.model.eval()


@pytest.mark.parametrize("prompts", ["", ["a red circle", ""], ["   "], []])
def test_empty_prompts_raise(pipe: CrossFlowPipeline, prompts: object) -> None:
    with pytest.raises(CrossFlowError, match="non-empty"):
        pipe(prompts, num_steps=STEPS)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [0, -1])
def test_non_positive_steps_raise(pipe: CrossFlowPipeline, steps: int) -> None:
    with pytest.raises(CrossFlowError, match="num_steps"):
        pipe(PROMPTS, num_steps=steps)


def test_guidance_below_one_raises(pipe: CrossFlowPipeline) -> None:
    with pytest.raises(CrossFlowError, match="guidance scale"):
        pipe(PROMPTS, num_steps=STEPS, guidance_scale=0.5)


def _skip_without_solver(solver: str) -> None:
    if solver == "dopri5":
        pytest.importorskip("torchdiffeq", reason="dopri5 needs the optional 'ode' extra (torchdiffeq)")


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_samples_reproducibly(pipe: CrossFlowPipeline, reference: torch.Tensor, solver: str) -> None:
    _skip_without_solver(solver)
    images = _images(pipe, 0, solver=solver, guidance_scale=2.0)
    assert images.shape == reference.shape and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert torch.equal(_images(pipe, 0, solver=solver, guidance_scale=2.0), images)


@pytest.mark.parametrize("solver", SOLVERS)
def test_generate_latents_reports_the_nfe(pipe: CrossFlowPipeline, solver: str) -> None:
    _skip_without_solver(solver)
    z_text = pipe.encode_prompts(PROMPTS, generator=_seed(0))
    result = pipe.generate_latents(z_text, STEPS, guidance_scale=3.0, solver=solver, return_result=True)
    assert isinstance(result, SolveResult) and result.x.shape == z_text.shape
    # With guidance one evaluation is one batched (conditional + unconditional) pass: NFE does not double.
    if solver in NFE_PER_STEP:
        assert result.nfe == NFE_PER_STEP[solver] * STEPS and result.num_steps == STEPS
    else:  # adaptive: its own step count, 6 evaluations per attempted step plus 2 to start
        assert result.nfe >= 2 + 6 * result.num_steps and result.num_steps > 0
    assert torch.equal(pipe.generate_latents(z_text, STEPS, guidance_scale=3.0, solver=solver), result.x)


def test_bad_solver_arguments_raise(pipe: CrossFlowPipeline) -> None:
    with pytest.raises(CrossFlowError, match="unknown solver 'rk4'; expected one of euler, midpoint, heun, dopri5"):
        pipe(PROMPTS, num_steps=STEPS, solver="rk4")  # type: ignore[arg-type]
    with pytest.raises(CrossFlowError, match="rtol and atol must be positive"):
        pipe(PROMPTS, num_steps=STEPS, solver="dopri5", rtol=0.0)


@pytest.mark.parametrize("solver", ["midpoint", "dopri5"])
def test_sample_cli_takes_every_solver(saved_dir: Path, tmp_path: Path, solver: str) -> None:
    from crossflow.sample_cli import build_parser, main

    _skip_without_solver(solver)
    solver_action = next(a for a in build_parser()._actions if a.dest == "solver")
    assert tuple(solver_action.choices) == SOLVERS  # type: ignore[arg-type]
    main([
        "--ckpt", str(saved_dir), "--prompt", PROMPTS[0], "--num", "2", "--steps", "2", "--solver", solver,
        "--rtol", "1e-4", "--atol", "1e-4", "--upscale", "1", "--out", str(tmp_path),
    ])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000.png", "001.png", "grid.png"]


def test_save_then_load_gives_same_outputs(
    pipe: CrossFlowPipeline, saved_dir: Path, reference: torch.Tensor
) -> None:
    assert (saved_dir / CONFIG_NAME).exists() and (saved_dir / WEIGHTS_NAME).exists()
    loaded = CrossFlowPipeline.from_pretrained(saved_dir)
    assert loaded.config == pipe.config
    assert not loaded.model.training
    original, restored = pipe.model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert torch.equal(_images(loaded, 0), reference)


def test_safetensors_file_alone_loads(
    pipe: CrossFlowPipeline, saved_dir: Path, tmp_path: Path, reference: torch.Tensor
) -> None:
    lone = tmp_path / "weights_only.safetensors"
    shutil.copy(saved_dir / WEIGHTS_NAME, lone)
    assert not (tmp_path / CONFIG_NAME).exists()  # the config comes from the file's metadata
    loaded = CrossFlowPipeline.from_pretrained(lone)
    assert loaded.config == pipe.config
    assert torch.equal(_images(loaded, 0), reference)


def test_safetensors_without_config_raises(pipe: CrossFlowPipeline, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in pipe.model.state_dict().items()}, str(bare))
    with pytest.raises(CrossFlowError, match="no CrossFlow config"):
        CrossFlowPipeline.from_pretrained(bare)


@pytest.mark.parametrize("layout", ["ema_model", "legacy_ema_state_dict"])
def test_lightning_style_checkpoint_loads_ema_weights(
    pipe: CrossFlowPipeline, tmp_path: Path, reference: torch.Tensor, layout: str
) -> None:
    state = pipe.model.state_dict()
    ckpt = {
        "crossflow": {"config": pipe.config.to_dict()},
        "state_dict": {f"model.{k}": torch.zeros_like(v) for k, v in state.items()},
    }
    if layout == "ema_model":  # the EMA callback's copy inside the LightningModule
        ckpt["state_dict"].update({f"ema_model.{k}": v for k, v in state.items()})
    else:  # checkpoints written before the EMA became a module
        ckpt["ema_state_dict"] = state
    torch.save(ckpt, tmp_path / "last.ckpt")
    ema = CrossFlowPipeline.from_pretrained(tmp_path / "last.ckpt")
    assert torch.equal(_images(ema, 0), reference)
    raw = CrossFlowPipeline.from_pretrained(tmp_path / "last.ckpt", use_ema=False)
    assert all(torch.all(v == 0) for v in raw.model.state_dict().values())


def test_checkpoint_with_the_old_scalar_logit_scale_loads(
    pipe: CrossFlowPipeline, tmp_path: Path, reference: torch.Tensor
) -> None:
    """Checkpoints from before logit_scale became (1,) (for FSDP2) pass the shape check and load."""
    state = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    keys = [k for k in state if k.endswith("logit_scale")]
    assert keys and all(state[k].shape == (1,) for k in keys)
    for k in keys:
        state[k] = state[k].reshape(())
    torch.save({"crossflow": {"config": pipe.config.to_dict()}, "ema_state_dict": state}, tmp_path / "old.ckpt")
    loaded = CrossFlowPipeline.from_pretrained(tmp_path / "old.ckpt")
    assert all(loaded.model.state_dict()[k].shape == (1,) for k in keys)
    assert torch.equal(_images(loaded, 0), reference)


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(CrossFlowError, match="checkpoint not found"):
        CrossFlowPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CrossFlowError, match="neither a saved CrossFlow model"):
        CrossFlowPipeline.from_pretrained(tmp_path / "empty_dir")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CrossFlowError, match="cannot read checkpoint"):
        CrossFlowPipeline.from_pretrained(tmp_path / "junk.ckpt")


def test_weights_from_a_different_config_raise_one_line(saved_dir: Path, tmp_path: Path) -> None:
    mismatched = tmp_path / "mismatched"
    shutil.copytree(saved_dir, mismatched)
    config = json.loads((mismatched / CONFIG_NAME).read_text())
    config["variational"]["width"] = 64
    (mismatched / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CrossFlowError, match="does not match its model config") as info:
        CrossFlowPipeline.from_pretrained(mismatched)
    message = str(info.value)
    assert "\n" not in message
    assert "variational" in message


def test_to_pil_and_make_grid_size() -> None:
    images = to_pil(torch.rand(5, 3, 8, 8))
    assert len(images) == 5 and images[0].size == (8, 8)
    grid = make_grid(images)  # 3 columns (ceil √5), 2 rows, 2-pixel padding
    assert grid.size == (3 * (8 + 2) + 2, 2 * (8 + 2) + 2)
    assert grid.getpixel((2, 2)) == images[0].getpixel((0, 0))
    assert grid.getpixel((2 + 10, 2)) == images[1].getpixel((0, 0))
    assert make_grid(images, columns=5, pad=0).size == (40, 8)
    with pytest.raises(ValueError):
        make_grid([])
