"""The plain flow transformer: shapes, zero init, the CFG indicator, presets and their sizes."""

from __future__ import annotations

import pytest
import torch

from crossflow.models.transformer import PRESETS, FlowTransformer, FlowTransformerConfig


def _tiny_config(**overrides: int) -> FlowTransformerConfig:
    fields = {"in_channels": 3, "input_size": 8, "patch_size": 4, "width": 32, "depth": 2, "num_heads": 2}
    return FlowTransformerConfig(**{**fields, **overrides})


def _train_steps(model: FlowTransformer, steps: int, seed: int = 0) -> None:
    """A few AdamW steps on random regression targets, with mixed conditional / unconditional samples."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(4, 3, 8, 8, generator=g)
    target = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.rand(4, generator=g)
    uncond = torch.tensor([False, True, False, True])
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x, t, uncond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_output_shape_equals_input_shape() -> None:
    for cfg in (_tiny_config(), _tiny_config(in_channels=4, input_size=16, patch_size=2)):
        model = FlowTransformer(cfg)
        x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
        assert model(x, torch.rand(2)).shape == x.shape
        assert cfg.num_patches == (cfg.input_size // cfg.patch_size) ** 2


def test_untrained_model_predicts_exactly_zero() -> None:
    torch.manual_seed(0)
    model = FlowTransformer(_tiny_config())
    out = model(torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([False, True, False]))
    assert torch.all(out == 0)


def test_pixel_head_starts_at_zero_and_every_layer_learns() -> None:
    torch.manual_seed(0)
    model = FlowTransformer(_tiny_config(pixel_head=8))
    x = torch.randn(2, 3, 8, 8)
    assert model(x, torch.rand(2)).shape == x.shape and torch.all(model(x, torch.rand(2)) == 0)
    before = {k: v.clone() for k, v in model.pixel_head.state_dict().items()}
    _train_steps(model, 3)  # the zero last conv must not leave the layers before it without gradient
    assert all(not torch.equal(before[k], v) for k, v in model.pixel_head.state_dict().items())
    assert model(x, torch.rand(2)).abs().sum() > 0


def test_one_optimizer_step_makes_output_nonzero() -> None:
    torch.manual_seed(0)
    model = FlowTransformer(_tiny_config())
    _train_steps(model, 1)
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2))
    assert out.abs().max() > 0


def test_indicator_and_time_change_the_output_after_training() -> None:
    torch.manual_seed(0)
    model = FlowTransformer(_tiny_config())
    _train_steps(model, 3)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        v_cond = model(x, t, torch.zeros(2, dtype=torch.bool))
        v_uncond = model(x, t, torch.ones(2, dtype=torch.bool))
        v_default = model(x, t)
        v_other_t = model(x, torch.tensor([0.9, 0.1]))
        v_mixed = model(x, t, torch.tensor([False, True]))
    assert (v_cond - v_uncond).abs().max() > 1e-6
    assert torch.equal(v_default, v_cond)  # None means all conditional
    assert (v_other_t - v_cond).abs().max() > 1e-6
    # The indicator is per sample: a mixed batch matches the pure batches row by row.
    torch.testing.assert_close(v_mixed[0], v_cond[0])
    torch.testing.assert_close(v_mixed[1], v_uncond[1])


def test_perturbed_indicator_embedding_changes_only_that_branch() -> None:
    torch.manual_seed(0)
    model = FlowTransformer(_tiny_config())
    with torch.no_grad():
        for p in model.parameters():  # leave the zero init behind: every layer now carries signal
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    uncond = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        before_u, before_c = model(x, t, uncond), model(x, t, ~uncond)
        # A random direction: a constant shift would be removed by the blocks' LayerNorm.
        model.indicator_embed.weight[1].add_(torch.randn(32))
        after_u, after_c = model(x, t, uncond), model(x, t, ~uncond)
    assert (after_u - before_u).abs().max() > 1e-4
    assert torch.equal(after_c, before_c)


def test_bad_patch_size_raises() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        FlowTransformer(_tiny_config(input_size=10, patch_size=4))


def test_presets_build_configs_with_overrides() -> None:
    assert set(PRESETS) == {"micro", "tiny", "small", "base", "large", "xl"}
    for name, preset in PRESETS.items():
        cfg = FlowTransformerConfig.from_preset(name, in_channels=4, input_size=32, patch_size=2)
        assert isinstance(cfg, FlowTransformerConfig)
        assert (cfg.width, cfg.depth, cfg.num_heads) == (preset.width, preset.depth, preset.num_heads)
        assert (cfg.in_channels, cfg.input_size, cfg.patch_size) == (4, 32, 2)
        assert cfg.width % cfg.num_heads == 0 and cfg.width % 4 == 0
        assert cfg is not preset
    assert PRESETS["tiny"].in_channels == 3  # from_preset does not mutate the registry
    with pytest.raises(ValueError, match="unknown flow transformer preset"):
        FlowTransformerConfig.from_preset("huge")


def analytic_param_count(cfg: FlowTransformerConfig) -> int:
    """Parameters of FlowTransformer(cfg), counted by hand from its layer list."""
    d, patch_dim = cfg.width, cfg.in_channels * cfg.patch_size**2
    hidden, head_dim, freq_dim = int(d * cfg.mlp_ratio), d // cfg.num_heads, 256

    def linear(i: int, o: int) -> int:
        return i * o + o

    stem = linear(patch_dim, d) + 2 * d + linear(freq_dim, d) + linear(d, d)  # patches, indicator, time MLP
    block = (
        linear(d, 3 * d)
        + 2 * head_dim
        + linear(d, d)  # qkv, q/k RMSNorm, out projection
        + linear(d, hidden)
        + linear(hidden, d)  # MLP
        + linear(d, 6 * d)  # adaLN modulation
    )
    final = linear(d, 2 * d) + linear(d, patch_dim)
    return stem + cfg.depth * block + final


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_analytic_count_matches_instantiated_tiny() -> None:
    for cfg in (
        _tiny_config(),
        FlowTransformerConfig.from_preset("tiny", in_channels=4, input_size=32, patch_size=2),
    ):
        assert _count(FlowTransformer(cfg)) == analytic_param_count(cfg)


@pytest.mark.parametrize(
    ("name", "approx"), [("tiny", 1.3e6), ("small", 33e6), ("base", 130e6), ("large", 458e6), ("xl", 0.95e9)]
)
def test_preset_sizes_on_meta_device(name: str, approx: float) -> None:
    # Sizes quoted in transformer.py for a 4×32×32 latent at patch 2; built on meta, nothing is allocated.
    cfg = FlowTransformerConfig.from_preset(name, in_channels=4, input_size=32, patch_size=2)
    with torch.device("meta"):
        model = FlowTransformer(cfg)
    assert all(p.is_meta for p in model.parameters())
    count = _count(model)
    assert count == analytic_param_count(cfg)
    assert count == pytest.approx(approx, rel=0.03)
    if name == "xl":
        assert 0.8e9 <= count <= 1.1e9
