"""Attention-output editing (crossflow.editing.attention, FluxSpace-style): the transformer's hook, the projection,
the token mask, the fine and coarse edits, and ``crossflow edit attention``."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from crossflow.__main__ import main as crossflow_main
from crossflow.config import ModelConfig
from crossflow.editing.attention import (
    AttentionEdit,
    AttentionEditVelocity,
    attention_edit_latents,
    attention_hook,
    coarse_text_latent,
    edit_attention,
    edit_coarse,
    orthogonal_component,
    prior_text_latent,
    project,
    same_noise_latents,
    token_change_mask,
)
from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline
from crossflow.models.layers import modulate, patchify, unpatchify
from crossflow.models.transformer import FlowTransformer
from crossflow.sampling import integrate

PROMPTS = ["a small blue circle in the top left", "a large green square"]
EDITS = ["a small red circle in the top left", "a large red square"]
STEPS = 4
CFG = 2.5


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def pipe(tiny_model_config_session: ModelConfig, random_pipeline) -> CrossFlowPipeline:
    return random_pipeline(copy.deepcopy(tiny_model_config_session))


@pytest.fixture(scope="module")
def plain(pipe: CrossFlowPipeline) -> torch.Tensor:
    """The plain images of PROMPTS for seed 0."""
    return pipe(PROMPTS, num_steps=STEPS, guidance_scale=CFG, generator=_g(), output_type="pt")


def _flow_inputs(pipe: CrossFlowPipeline, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, *pipe.config.latent_shape, generator=_g(3))
    t = torch.rand(batch, generator=_g(4))
    unconditional = torch.tensor([False, True] * (batch // 2))
    return x, t, unconditional


def _reference_forward(flow: FlowTransformer, x_t: torch.Tensor, t: torch.Tensor, unconditional: torch.Tensor
                       ) -> torch.Tensor:
    """FlowTransformer.forward as it was written before the hook existed (plain DiT blocks, no cross-attention)."""
    cfg = flow.config
    tokens = flow.patch_embed(patchify(x_t, cfg.patch_size)) + flow.pos_embed.to(x_t.dtype)
    h = torch.cat([flow.indicator_embed(unconditional.long())[:, None], tokens], dim=1)
    c = flow.time_embed(t)
    for block in flow.blocks:
        shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(c).chunk(6, dim=-1)
        h = h + gate1[:, None] * block.attn(modulate(block.norm1(h), shift1, scale1))
        h = h + gate2[:, None] * block.mlp(modulate(block.norm2(h), shift2, scale2))
    out = flow.final(h[:, 1:], c)
    assert flow.pixel_head is None
    return unpatchify(out, cfg.patch_size, cfg.in_channels, cfg.input_size, cfg.input_size)


# ---------------------------------------------------------------------------------------------- the hook


def test_without_a_hook_the_forward_is_the_old_one_bit_for_bit(pipe: CrossFlowPipeline) -> None:
    flow = pipe.model.flow
    x, t, unconditional = _flow_inputs(pipe)
    reference = _reference_forward(flow, x, t, unconditional)
    assert torch.equal(flow(x, t, unconditional), reference)
    with attention_hook(pipe, lambda block, t, out: out):
        pass
    with pytest.raises(ZeroDivisionError), attention_hook(pipe, lambda block, t, out: out):
        raise ZeroDivisionError  # leaving by an exception removes the hook too
    assert flow._attn_out_hook is None and torch.equal(flow(x, t, unconditional), reference)


def test_an_identity_hook_changes_nothing_and_sees_every_block(pipe: CrossFlowPipeline, plain: torch.Tensor) -> None:
    flow = pipe.model.flow
    x, t, unconditional = _flow_inputs(pipe)
    calls: list[tuple[int, torch.Tensor, tuple[int, ...]]] = []

    def identity(block: int, t_: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        calls.append((block, t_, tuple(out.shape)))
        return out

    plain_v = flow(x, t, unconditional)
    with attention_hook(pipe.model, identity) as hooked:
        assert hooked is flow
        assert torch.equal(flow(x, t, unconditional), plain_v)
        assert torch.equal(flow(x, t, unconditional), plain_v)
    n_tokens = 1 + flow.config.num_patches  # the indicator token first
    assert [c[0] for c in calls] == list(range(len(flow.blocks))) * 2
    assert all(torch.equal(c[1], t) and c[2] == (2, n_tokens, flow.config.width) for c in calls)
    with attention_hook(flow, lambda block, t, out: out):  # through the whole sampler too
        hooked_images = pipe(PROMPTS, num_steps=STEPS, guidance_scale=CFG, generator=_g(), output_type="pt")
    assert torch.equal(hooked_images, plain)


def _zero_block(index: int):
    def hook(block: int, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out) if block == index else out

    return hook


def test_a_hook_changes_only_the_block_it_is_asked_to(pipe: CrossFlowPipeline) -> None:
    flow = pipe.model.flow
    x, t, unconditional = _flow_inputs(pipe)
    plain_v = flow(x, t, unconditional)
    with attention_hook(pipe, _zero_block(1)):
        hooked = flow(x, t, unconditional)
    # Zeroing block 1's attention output through the hook == a copy whose block-1 attention projection is zero.
    ablated = copy.deepcopy(flow)
    ablated.blocks[1].attn.proj.weight.zero_()
    ablated.blocks[1].attn.proj.bias.zero_()
    assert torch.equal(hooked, ablated(x, t, unconditional))
    assert not torch.equal(hooked, plain_v)


def test_a_hook_outside_the_sampled_times_changes_nothing(pipe: CrossFlowPipeline, plain: torch.Tensor) -> None:
    def late(block: int, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out) if block == 1 and bool((t > 1.5).all()) else out

    with attention_hook(pipe, late):
        images = pipe(PROMPTS, num_steps=STEPS, guidance_scale=CFG, generator=_g(), output_type="pt")
    assert torch.equal(images, plain)
    with attention_hook(pipe, _zero_block(1)):
        zeroed = pipe(PROMPTS, num_steps=STEPS, guidance_scale=CFG, generator=_g(), output_type="pt")
    assert not torch.equal(zeroed, plain)


def test_the_hook_works_under_activation_checkpointing_with_gradients(pipe: CrossFlowPipeline) -> None:
    flow = copy.deepcopy(pipe.model.flow)
    x, t, unconditional = _flow_inputs(pipe)
    ablated = copy.deepcopy(flow)
    ablated.blocks[1].attn.proj.weight.zero_()
    ablated.blocks[1].attn.proj.bias.zero_()
    expected = ablated(x, t, unconditional)
    flow.activation_checkpointing = True
    with torch.enable_grad(), attention_hook(flow, _zero_block(1)):
        out = flow(x, t, unconditional)
        out.square().sum().backward()
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-6)
    assert flow.blocks[1].attn.proj.weight.grad is None or not flow.blocks[1].attn.proj.weight.grad.any()
    assert flow.blocks[0].attn.proj.weight.grad.abs().sum() > 0


def test_hooks_do_not_nest_and_need_a_transformer(pipe: CrossFlowPipeline) -> None:
    with attention_hook(pipe, lambda b, t, o: o):
        with pytest.raises(CrossFlowError, match="do not nest"), attention_hook(pipe, lambda b, t, o: o):
            pass
        assert pipe.model.flow._attn_out_hook is not None  # the refused one did not remove the outer hook
    with pytest.raises(CrossFlowError, match="cannot hook"), attention_hook(torch.nn.Linear(2, 2), lambda b, t, o: o):
        pass


# ---------------------------------------------------------------------------------------------- the algebra


def test_the_projection_removes_exactly_the_prior_component() -> None:
    v = torch.randn(3, 7, 16, generator=_g(1), dtype=torch.float64)
    u = torch.randn(3, 7, 16, generator=_g(2), dtype=torch.float64)
    orth, proj = orthogonal_component(v, u), project(v, u)
    assert orth.dtype == torch.float64
    # per token: orthogonal to u, and what was removed lies along u with the least-squares coefficient
    assert (orth * u).sum(-1).abs().max() < 1e-12 * (v.norm(dim=-1) * u.norm(dim=-1)).max()
    torch.testing.assert_close(orth + proj, v, rtol=0, atol=1e-13)
    coeff = (v * u).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True)
    torch.testing.assert_close(proj, coeff * u, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(orthogonal_component(orth, u), orth, rtol=0, atol=1e-13)  # idempotent
    torch.testing.assert_close(orthogonal_component(3.0 * u, u), torch.zeros_like(u), rtol=0, atol=1e-12)
    # u = 0 has no direction: nothing removed; a (1, N, D) prior broadcasts over the batch
    assert torch.equal(orthogonal_component(v, torch.zeros_like(u)), v)
    torch.testing.assert_close(orthogonal_component(v, u[:1]), v - project(v, u[:1].expand_as(v)))


def test_the_mask_is_in_unit_range_and_thresholded_at_tau() -> None:
    change = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0],
                           [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    base = torch.zeros(2, 10, 4, dtype=torch.float64)
    edit = base.clone()
    edit[..., 2] = change  # ‖edit − base‖ per token = change
    d_hat = change[0] / 10
    for tau in (0.25, 0.5, 0.75):
        mask = token_change_mask(edit, base, tau)
        assert mask.shape == (2, 10) and bool(((mask >= 0) & (mask <= 1)).all())
        assert bool((mask[0][d_hat <= tau] == 0).all()) and bool((mask[0][d_hat > tau] > 0).all())
        assert mask[0, -1].item() == pytest.approx(1.0)  # the most-changed token
        assert bool((mask[0].diff() >= 0).all())  # more change, more mask
        assert not mask[1].any()  # every token changed alike: nothing to localise
    low, high = token_change_mask(edit, base, 0.2), token_change_mask(edit, base, 0.8)
    assert (high > 0).sum() < (low > 0).sum()  # a higher τ keeps fewer tokens
    steep = token_change_mask(edit, base, 0.5, sharpness=50.0)
    assert bool((steep[0][d_hat > 0.5] >= token_change_mask(edit, base, 0.5)[0][d_hat > 0.5]).all())
    for tau in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(CrossFlowError, match=r"tau must be in \(0, 1\)"):
            token_change_mask(edit, base, tau)


def test_the_edit_hook_moves_only_the_base_rows(pipe: CrossFlowPipeline) -> None:
    z = torch.randn(2, *pipe.config.latent_shape, generator=_g(5))
    out = torch.randn(6, 5, 32, generator=_g(6))  # [base; prior; edit] for B = 2
    base, prior, edit = out[:2], out[2:4], out[4:]
    t = torch.zeros(6)
    velocity = AttentionEditVelocity(pipe, z, z + 1, AttentionEdit(lam=0.7, blocks=(2,)), CFG, STEPS)
    assert velocity.hook(1, t, out) is out  # not a chosen block: untouched, no work
    new = velocity.hook(2, t, out)
    assert torch.equal(new[2:], out[2:])  # prior and edit rows are references
    torch.testing.assert_close(new[:2], base + 0.7 * orthogonal_component(edit, prior))
    masked = AttentionEditVelocity(pipe, z, z + 1, AttentionEdit(lam=0.7, tau=0.5, blocks=(2,)), CFG, STEPS)
    new = masked.hook(2, t, out)
    mask = token_change_mask(edit[:, 1:], base[:, 1:], 0.5)
    assert torch.equal(new[:2, 0], base[:, 0])  # the indicator token is not edited under a mask
    torch.testing.assert_close(new[:2, 1:], base[:, 1:] + 0.7 * mask[..., None] * orthogonal_component(edit, prior)[:, 1:])
    assert masked.edited_calls == 1 and masked.mask_coverage == pytest.approx(mask.mean().item())


def test_the_relative_edit_swaps_the_base_prior_orthogonal_part_for_the_edits(pipe: CrossFlowPipeline) -> None:
    z = torch.randn(2, *pipe.config.latent_shape, generator=_g(5))
    out = torch.randn(6, 5, 32, generator=_g(7))
    base, prior, edit = out[:2], out[2:4], out[4:]
    velocity = AttentionEditVelocity(pipe, z, z + 1, AttentionEdit(lam=1.0, blocks=(0,), relative=True), CFG, STEPS)
    new = velocity.hook(0, torch.zeros(6), out)[:2]
    # At λ = 1: the base's own component along the prior, plus the edit's component orthogonal to it.
    unit = prior / prior.norm(dim=-1, keepdim=True)
    along = (base * unit).sum(-1, keepdim=True) * unit
    torch.testing.assert_close(new, along + orthogonal_component(edit, prior))
    same = velocity.hook(0, torch.zeros(6), torch.cat([base, prior, base]))[:2]  # edit state = base: no change
    torch.testing.assert_close(same, base)


# ---------------------------------------------------------------------------------------------- the edits


def test_same_noise_latents_share_the_draw_the_pipeline_makes(pipe: CrossFlowPipeline) -> None:
    g = _g()
    z_base, z_edit = same_noise_latents(pipe, PROMPTS, EDITS, g)
    assert torch.equal(z_base, pipe.encode_prompts(PROMPTS, generator=_g()))
    assert torch.equal(z_edit, pipe.encode_prompts(EDITS, generator=_g()))
    reference = _g()
    pipe.encode_prompts(PROMPTS, generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())  # advanced as by one draw
    z_mu, _ = same_noise_latents(pipe, PROMPTS, "a red circle", _g(), temperature=0.0)
    assert torch.equal(z_mu, pipe.encode_prompts(PROMPTS, temperature=0.0))


@pytest.mark.parametrize("tau, blocks", [(None, None), (0.5, [1, 3])])
def test_lambda_zero_is_the_plain_sample_bit_for_bit(pipe: CrossFlowPipeline, plain: torch.Tensor, tau, blocks) -> None:
    result = edit_attention(pipe, PROMPTS, EDITS, lam=0.0, tau=tau, blocks=blocks, num_steps=STEPS,
                            guidance_scale=CFG, generator=_g())
    assert torch.equal(result.images, plain) and result.edited_calls == 0


@pytest.mark.parametrize("guidance", [1.0, CFG])
def test_the_batched_edit_at_lambda_zero_reproduces_the_plain_velocity(pipe: CrossFlowPipeline, guidance: float) -> None:
    """The [base; prior; edit] batch and its CFG at λ = 0 (forced through, no short cut) give the plain sampler's
    result up to the floating-point effect of a larger batch."""
    z_base, z_edit = same_noise_latents(pipe, PROMPTS, EDITS, _g())
    velocity = AttentionEditVelocity(pipe, z_base, z_edit, AttentionEdit(lam=0.0), guidance, STEPS)
    edited = integrate(velocity, z_base, STEPS).x
    expected = pipe.generate_latents(z_base, STEPS, guidance)
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)
    assert velocity.edited_calls == STEPS * len(pipe.model.flow.blocks)


def test_an_edit_acts_only_from_its_start_step_and_at_its_blocks(pipe: CrossFlowPipeline) -> None:
    z_base, z_edit = same_noise_latents(pipe, PROMPTS, EDITS, _g())
    plain_traj = integrate(pipe.velocity_fn(CFG), z_base, STEPS, return_trajectory=True).trajectory
    start = 2
    velocity = AttentionEditVelocity(pipe, z_base, z_edit, AttentionEdit(lam=2.0, start_step=start, blocks=(1,)),
                                     CFG, STEPS)
    traj = integrate(velocity, z_base, STEPS, return_trajectory=True).trajectory
    assert plain_traj is not None and traj is not None
    assert all(torch.equal(a, b) for a, b in zip(traj[:start + 1], plain_traj[:start + 1], strict=True))
    assert not torch.equal(traj[-1], plain_traj[-1])
    assert velocity.edited_calls == (STEPS - start) * 1  # one block, the edited steps only


def test_an_edit_changes_the_images_and_scales_with_lambda(pipe: CrossFlowPipeline, plain: torch.Tensor) -> None:
    changes = []
    for lam in (0.5, 2.0):
        result = edit_attention(pipe, PROMPTS, EDITS, lam=lam, num_steps=STEPS, guidance_scale=CFG, generator=_g())
        assert result.images.shape == plain.shape and result.mask_coverage is None
        changes.append((result.latents - pipe.generate_latents(
            same_noise_latents(pipe, PROMPTS, EDITS, _g())[0], STEPS, CFG)).abs().mean().item())
    assert 0 < changes[0] < changes[1]
    masked = edit_attention(pipe, PROMPTS, EDITS, lam=1.0, tau=0.5, num_steps=STEPS, guidance_scale=CFG,
                            generator=_g())
    assert masked.mask_coverage is not None and 0 < masked.mask_coverage < 1


def test_the_coarse_edit(pipe: CrossFlowPipeline, plain: torch.Tensor) -> None:
    assert torch.equal(edit_coarse(pipe, PROMPTS, EDITS, lam=0.0, num_steps=STEPS, guidance_scale=CFG,
                                   generator=_g()).images, plain)
    z_base, z_edit = (torch.randn(2, 3, 8, 8, generator=_g(s), dtype=torch.float64) for s in (1, 2))
    z_prior = torch.randn(1, 3, 8, 8, generator=_g(3), dtype=torch.float64)
    z = coarse_text_latent(z_base, z_edit, z_prior, 1.5)
    step = (z - z_base).flatten(1)
    assert (step @ z_prior.flatten()).abs().max() < 1e-12  # orthogonal to the prior, per sample
    torch.testing.assert_close(step, 1.5 * orthogonal_component((z_edit - z_base).flatten(1), z_prior.flatten(1)))
    # a difference along the prior is dropped whole
    torch.testing.assert_close(coarse_text_latent(z_base, z_base + 2 * z_prior, z_prior, 1.0), z_base,
                               rtol=0, atol=1e-12)
    prior = prior_text_latent(pipe)
    assert prior.shape == (1, *pipe.config.latent_shape)
    assert torch.equal(prior, pipe.encode_prompts([""], temperature=0.0))
    edited = edit_coarse(pipe, PROMPTS, EDITS, lam=1.0, num_steps=STEPS, guidance_scale=CFG, generator=_g())
    assert not torch.equal(edited.images, plain)


@pytest.mark.parametrize("kwargs, message", [
    (dict(blocks=[4]), r"block 4 is out of range: this flow transformer has 4 blocks \(0\.\.3\)"),
    (dict(blocks=[-1]), "block -1 is out of range"),
    (dict(blocks=[]), "at least one block"),
    (dict(lam=math.nan), "finite number"),
    (dict(lam=math.inf), "finite number"),
    (dict(tau=1.0), r"tau must be in \(0, 1\)"),
    (dict(tau=0.0), r"tau must be in \(0, 1\)"),
    (dict(start_step=STEPS), r"start_step must be an integer step in \[0, 3\]"),
    (dict(start_step=-1), "start_step"),
    (dict(sharpness=0.0), "sharpness"),
    (dict(guidance_scale=0.5), "guidance scale"),
    (dict(edit_prompts=["a", "b", "c"]), "3 edit prompts for 2 prompts"),
    (dict(edit_prompts=" "), "edit prompts must be non-empty"),
])
def test_bad_settings_are_one_line_errors(pipe: CrossFlowPipeline, kwargs: dict, message: str) -> None:
    kwargs = {"edit_prompts": EDITS, "num_steps": STEPS, **kwargs}
    with pytest.raises(CrossFlowError, match=message) as err:
        edit_attention(pipe, PROMPTS, **kwargs)
    assert "\n" not in str(err.value)


def test_edit_latents_need_matching_shapes(pipe: CrossFlowPipeline) -> None:
    z = torch.zeros(2, *pipe.config.latent_shape)
    with pytest.raises(CrossFlowError, match="one shape"):
        attention_edit_latents(pipe, z, z[:1], AttentionEdit(), STEPS)
    with pytest.raises(CrossFlowError, match="finite"):
        coarse_text_latent(z, z, z[:1], math.nan)


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def saved(pipe: CrossFlowPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipe.save_pretrained(tmp_path_factory.mktemp("attention_edit") / "model")


def _cli(model: Path, out: Path, *args: str) -> dict:
    crossflow_main(["edit", "attention", "--ckpt", str(model), "--prompt", PROMPTS[0], "--edit", EDITS[0],
                    "--out", str(out), "--steps", str(STEPS), "--seeds", "2", *args])
    report = json.loads((out / "attention.json").read_text())
    assert set(report["files"]) == {"before.png", "after.png"} and all((out / f).exists() for f in report["files"])
    return report


def test_cli_writes_before_after_and_a_report(saved: Path, tmp_path: Path) -> None:
    report = _cli(saved, tmp_path / "fine", "--lam", "1.5", "--tau", "0.5", "--blocks", "1", "2", "--start-step", "1")
    assert report["variant"] == "attention output" and report["blocks"] == [1, 2] and report["tau"] == 0.5
    assert report["edited_block_calls"] == (STEPS - 1) * 2 and 0 < report["mask_coverage"] < 1
    assert len(report["mean_abs_pixel_change_per_image"]) == 2
    from PIL import Image

    with Image.open(tmp_path / "fine" / "before.png") as before, Image.open(tmp_path / "fine" / "after.png") as after:
        assert before.size == after.size and before.width > before.height  # one row of 2
    zero = _cli(saved, tmp_path / "zero", "--lam", "0", "--tau", "none")
    assert zero["tau"] is None and zero["mean_abs_pixel_change_per_image"] == [0.0, 0.0]
    coarse = _cli(saved, tmp_path / "coarse", "--coarse", "--lam", "1")
    assert coarse["variant"] == "coarse (text latent)" and coarse["prior_prompt"] == ""


@pytest.mark.parametrize("args, message", [
    (["--tau", "1.5"], r"tau must be in (0, 1)"),
    (["--blocks", "9"], "block 9 is out of range"),
    (["--blocks", "-2"], "block -2 is out of range"),
    (["--lam", "nan"], "finite number"),
    (["--start-step", "4"], "--start-step must be in [0, 3]"),
    (["--coarse", "--tau", "0.5"], "--coarse edits the text latent"),
    (["--seeds", "0"], "--seeds must be positive"),
])
def test_cli_bad_input_is_one_line(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        _cli(saved, tmp_path, *args)
    assert exc.value.code == 2
    # (a check that needs the model comes after loading it, whose progress bar may share stderr)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0]
