"""The noise→image baseline: same body as CrossFlow, noise source, text condition, CFG by condition dropout."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from crossflow.config import ModelConfig
from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline, describe
from crossflow.lit_module import CrossFlowLitModule
from crossflow.models.baseline import NoiseBaselineConfig, NoiseBaselineModel
from crossflow.models.codec import CodecConfig
from crossflow.models.crossflow import CrossFlowModel
from crossflow.models.flow_model import TextCondition, build_model
from crossflow.models.text_encoder import TextEncoderConfig
from crossflow.models.variational import VariationalEncoderConfig
from crossflow.parallel import parallelize

TEXT_DIM = 32
CONDITIONINGS = ["adaln", "cross_attention"]
PROMPTS = ["a small red circle in the top left", "a large blue square"]


def _config(tiny: ModelConfig, conditioning: str = "cross_attention", text_depth: int = 1) -> ModelConfig:
    config = copy.deepcopy(tiny)
    config.kind = "noise_baseline"
    config.baseline = NoiseBaselineConfig(conditioning=conditioning, text_depth=text_depth)  # type: ignore[arg-type]
    return config


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its (partly zero) init so text, null condition and indicator all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _cond(b: int = 2, length: int = 5, seed: int = 0) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False  # a padded prompt
    return TextCondition(torch.randn(b, length, TEXT_DIM, generator=g), mask)


def test_config_selects_the_model_and_old_configs_are_crossflow(tiny_model_config: ModelConfig) -> None:
    assert isinstance(build_model(tiny_model_config, TEXT_DIM), CrossFlowModel)
    assert isinstance(build_model(_config(tiny_model_config), TEXT_DIM), NoiseBaselineModel)
    old = tiny_model_config.to_dict()
    del old["kind"], old["baseline"]  # a config.json written before the baseline existed
    assert ModelConfig.from_dict(old).kind == "crossflow"
    data = _config(tiny_model_config, "adaln", 0).to_dict()
    assert ModelConfig.from_dict(data) == _config(tiny_model_config, "adaln", 0)
    with pytest.raises(CrossFlowError):
        ModelConfig.from_dict({**data, "baseline": {**data["baseline"], "pooling": "max"}})


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_shapes_and_zero_init_output(tiny_model_config: ModelConfig, conditioning: str) -> None:
    torch.manual_seed(0)
    model = NoiseBaselineModel(_config(tiny_model_config, conditioning), text_dim=TEXT_DIM)
    cond = _cond()
    source = model.source(cond.tokens, cond.mask, generator=torch.Generator().manual_seed(0))
    assert source.x0.shape == (2, *tiny_model_config.latent_shape) and source.cond is not None
    x_t, t = torch.randn_like(source.x0), torch.tensor([0.2, 0.9])
    v = model.velocity(x_t, t, torch.tensor([False, True]), source.cond)
    assert v.shape == x_t.shape
    assert torch.equal(v, torch.zeros_like(v)), "zero-initialised output layer: the untrained model predicts v = 0"
    has_cross = [block.cross_attn is not None for block in model.flow.blocks]
    assert all(has_cross) if conditioning == "cross_attention" else not any(has_cross)


def test_crossflow_blocks_stay_cross_attention_free(tiny_model_config: ModelConfig) -> None:
    model = CrossFlowModel(tiny_model_config, text_dim=TEXT_DIM)
    assert not any("cross" in name for name in model.state_dict())
    with pytest.raises(ValueError, match="no text condition"):
        model.velocity(torch.randn(2, 3, 8, 8), torch.rand(2), cond=_cond())


def test_source_is_seeded_noise_independent_of_the_prompt(tiny_model_config: ModelConfig) -> None:
    model = NoiseBaselineModel(_config(tiny_model_config), text_dim=TEXT_DIM)
    a, b = _cond(seed=0), _cond(seed=1)

    def x0(cond: TextCondition, seed: int, batch: int = 2) -> torch.Tensor:
        return model.source(cond.tokens, cond.mask, generator=torch.Generator().manual_seed(seed)).x0

    assert torch.equal(x0(a, 3), x0(a, 3)) and torch.equal(x0(a, 3), x0(b, 3)), "seeded, and no text in it"
    assert not torch.equal(x0(a, 3), x0(a, 4))
    big = _cond(b=256)
    noise = model.source(big.tokens, big.mask, generator=torch.Generator().manual_seed(0)).x0
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02, "x0 ~ N(0, I)"
    with pytest.raises(CrossFlowError, match="no VE"):
        model.source(a.tokens, a.mask, temperature=0.5)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_condition_dropout_replaces_the_text_by_the_null_condition(
    tiny_model_config: ModelConfig, conditioning: str
) -> None:
    model = _perturbed(NoiseBaselineModel(_config(tiny_model_config, conditioning), text_dim=TEXT_DIM))
    x_t, t = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.3])
    x_t[1] = x_t[0]
    cond = _cond()  # two different prompts for the same x_t
    uncond = torch.tensor([True, True])
    v_u = model.velocity(x_t, t, uncond, cond)
    torch.testing.assert_close(v_u[0], v_u[1], rtol=0, atol=1e-6, msg="dropped rows must not see their prompt")
    v_c = model.velocity(x_t, t, ~uncond, cond)
    assert not torch.allclose(v_c[0], v_c[1]), "conditional rows see their prompt"
    assert not torch.allclose(v_c, v_u)
    # Dropout is per row: a mixed batch gives each row what it would get alone.
    mixed = model.velocity(x_t, t, torch.tensor([False, True]), cond)
    torch.testing.assert_close(mixed[0], v_c[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], v_u[1], rtol=1e-5, atol=1e-6)
    # The condition is dropped, the image target kept (no rolling as in CrossFlow).
    z_image = torch.randn(4, 3, 8, 8)
    assert model.cfg_targets(z_image, torch.tensor([True, True, False, True])) is z_image


def test_cfg_at_sampling_evaluates_both_branches_at_the_same_x_t(tiny_model_config: ModelConfig) -> None:
    config = _config(tiny_model_config)
    model = _perturbed(NoiseBaselineModel(config, text_dim=TEXT_DIM))
    pipe = CrossFlowPipeline(config, model, text_encoder=None)  # type: ignore[arg-type]
    calls: list[tuple[torch.Tensor, torch.Tensor, TextCondition]] = []
    original = model.velocity

    def spy(x, t, unconditional=None, cond=None):  # type: ignore[no-untyped-def]
        calls.append((x, unconditional, cond))
        return original(x, t, unconditional, cond)

    model.velocity = spy  # type: ignore[method-assign]
    cond, x, t, w = _cond(), torch.randn(2, 3, 8, 8), torch.tensor([0.4, 0.4]), 3.0
    guided = pipe.velocity_fn(w, cond)(x, t)
    (x_both, indicator, cond_both), = calls
    assert torch.equal(x_both[:2], x) and torch.equal(x_both[2:], x), "one batch [x; x]: the same x_t"
    assert indicator.tolist() == [False, False, True, True]
    assert torch.equal(cond_both.tokens, torch.cat([cond.tokens, cond.tokens]))
    v_c = original(x, t, torch.tensor([False, False]), cond)
    v_u = original(x, t, torch.tensor([True, True]), cond)
    # A batch of 4 vs two of 2 can reduce in another order (thread count): fp32 rounding, scaled by w.
    torch.testing.assert_close(guided, v_u + w * (v_c - v_u), rtol=1e-5, atol=1e-5)
    calls.clear()
    torch.testing.assert_close(pipe.velocity_fn(1.0, cond)(x, t), v_c, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1 and not calls[0][1].any(), "w = 1: one conditional pass"


def test_training_objective_is_flow_matching_from_noise(tiny_model_config: ModelConfig) -> None:
    """compute_losses, written once for both models: no VE terms, and x0 is the seeded noise."""
    config = _config(tiny_model_config, text_depth=1)
    torch.manual_seed(0)
    lit = CrossFlowLitModule(model=config)
    batch = {"caption": PROMPTS * 2, "image": torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))}
    losses = lit.compute_losses(batch, generator=torch.Generator().manual_seed(5))
    assert set(losses) == {"loss", "flow_mse"} and torch.equal(losses["loss"], losses["flow_mse"])
    # The untrained baseline predicts v = 0, so the loss is E‖z_image − (1 − σ_min)·x0‖² with x0 the step's noise.
    g = torch.Generator().manual_seed(5)
    z_image = lit.codec.encode(batch["image"], generator=g)
    x0 = torch.randn((4, *config.latent_shape), generator=g)
    expected = (z_image - (1 - config.sigma_min) * x0).pow(2).mean()
    torch.testing.assert_close(losses["loss"], expected)
    losses["loss"].backward()
    assert lit.model.flow.final.linear.weight.grad.abs().sum() > 0


def test_edge_weight_makes_the_flow_loss_the_edge_weighted_mean(tiny_model_config: ModelConfig) -> None:
    """LossConfig.edge_weight reaches the objective: the same batch and draws, weighted by flow.edge_weights."""
    from crossflow import flow
    from crossflow.lit_module import LossConfig

    config = _config(tiny_model_config, text_depth=1)
    torch.manual_seed(0)
    lit = CrossFlowLitModule(model=config, loss=LossConfig(edge_weight=2.0))
    batch = {"caption": PROMPTS * 2, "image": torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))}
    losses = lit.compute_losses(batch, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    z_image = lit.codec.encode(batch["image"], generator=g)
    x0 = torch.randn((4, *config.latent_shape), generator=g)
    err = (z_image - (1 - config.sigma_min) * x0).pow(2)
    w = flow.edge_weights(z_image, 2.0).expand_as(err)
    torch.testing.assert_close(losses["flow_mse"], (w * err).sum() / w.sum())
    assert not torch.allclose(losses["flow_mse"], err.mean())


def test_pipeline_samples_reproducibly_and_round_trips(tiny_model_config: ModelConfig, tmp_path: Path) -> None:
    from crossflow.models.text_encoder import FrozenTextEncoder

    config = _config(tiny_model_config)
    torch.manual_seed(0)
    encoder = FrozenTextEncoder(config.text_encoder)
    pipe = CrossFlowPipeline(config, _perturbed(NoiseBaselineModel(config, text_dim=encoder.hidden_size)), encoder)

    def images(p: CrossFlowPipeline, seed: int, **kwargs: object) -> torch.Tensor:
        return p(PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs)  # type: ignore[arg-type]

    a = images(pipe, 0)
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, images(pipe, 0)) and not torch.equal(a, images(pipe, 1))
    assert not torch.equal(a, images(pipe, 0, guidance_scale=1.0))
    loaded = CrossFlowPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "export"))
    assert isinstance(loaded.model, NoiseBaselineModel) and loaded.config == config
    assert torch.equal(images(loaded, 0), a)
    assert set(describe(loaded)) == {"text_conditioner", "flow", "text_encoder"}
    with pytest.raises(CrossFlowError, match="no VE"):
        images(pipe, 0, temperature=0.5)
    with pytest.raises(CrossFlowError, match="no text latent"):
        pipe.encode_prompts(PROMPTS)
    # The latent-level API: source then generate_latents, the same numbers as the one call.
    source = pipe.prepare_source(PROMPTS, generator=torch.Generator().manual_seed(0))
    z_image = pipe.generate_latents(source.x0, num_steps=3, cond=source.cond)
    assert torch.equal(pipe.codec.decode(z_image).float(), a)


def test_parallelize_without_a_mesh_sets_checkpointing_on_the_shared_body(tiny_model_config: ModelConfig) -> None:
    model = NoiseBaselineModel(_config(tiny_model_config), text_dim=TEXT_DIM)
    parallelize(model, None, activation_checkpointing=True)
    assert model.flow.activation_checkpointing
    cond = _cond()
    v = model.velocity(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([False, True]), cond)
    v.square().sum().backward()  # recomputed blocks with cross-attention inputs


def _demo_config(**overrides: object) -> ModelConfig:
    """configs/demo.yaml's model (all-MiniLM-L6-v2: 384-d, 24 tokens; 32 px pixels; tiny at patch 4)."""
    return ModelConfig(
        text_encoder=TextEncoderConfig(pretrained="unused", max_length=24),
        codec=CodecConfig(kind="pixel", image_size=32),
        variational=VariationalEncoderConfig(width=128, depth=2, num_heads=4, token_dim=32),
        preset="tiny", patch_size=4, **overrides,  # type: ignore[arg-type]
    )


def test_parameter_counts_are_comparable() -> None:
    """The counts quoted in models/baseline.py: the same flow body; CrossFlow adds a VE + alignment head,
    the baseline a text conditioner (and cross-attention layers in its blocks)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        crossflow = build_model(_demo_config(), text_dim=384)
        cross = build_model(_demo_config(kind="noise_baseline"), text_dim=384)
        adaln = build_model(_demo_config(kind="noise_baseline", baseline=NoiseBaselineConfig("adaln")), text_dim=384)
    parts = {name: count(m) for name, m in crossflow.named_children()}
    assert parts == {"variational": 5_178_144, "flow": 1_282_736, "alignment": 1_223_297}
    assert {name: count(m) for name, m in cross.named_children()} == {"text_conditioner": 479_360, "flow": 1_548_208}
    cross_attention = sum(count(b.cross_attn) + count(b.norm_cross) for b in cross.flow.blocks)
    assert count(adaln.flow) == count(crossflow.flow) == count(cross.flow) - cross_attention
    assert count(adaln.text_conditioner) == count(cross.text_conditioner)
    # Same body, so the same per-step cost of the flow; CrossFlow's extra weights sit in the VE's flat projection.
    assert count(crossflow) / count(cross) == pytest.approx(3.79, abs=0.01)
