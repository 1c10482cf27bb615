"""Building blocks: patchify, position / time embeddings, attention, adaLN blocks."""

from __future__ import annotations

import warnings

import pytest
import torch

from crossflow.models.layers import (
    MLP,
    AdaLNBlock,
    Attention,
    EncoderBlock,
    FinalLayer,
    QKNorm,
    TimestepEmbedder,
    patchify,
    sincos_pos_embed_2d,
    timestep_embedding,
    unpatchify,
)


@pytest.mark.parametrize(("c", "h", "w", "p"), [(3, 8, 8, 4), (4, 16, 16, 2), (3, 8, 16, 4), (1, 6, 6, 1)])
def test_patchify_round_trip(c: int, h: int, w: int, p: int) -> None:
    x = torch.randn(2, c, h, w)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (h // p) * (w // p), c * p * p)
    assert torch.equal(unpatchify(tokens, p, c, h, w), x)


def test_patchify_token_order_is_row_major_over_patches() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    tokens = patchify(x, 2)
    # Token 1 is the top-right patch, flattened channel-first then row-major inside the patch.
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(tokens[0, 2], x[0, :, 2:4, 0:2].reshape(-1))


def test_sincos_pos_embed_shape_and_values() -> None:
    pos = sincos_pos_embed_2d(32, 2, 3)
    assert pos.shape == (6, 32) and pos.dtype == torch.float32
    assert pos.abs().max() <= 1.0
    # Position (0, 0): sin = 0 and cos = 1 for both axes.
    q = 8
    expected0 = torch.cat([torch.zeros(q), torch.ones(q), torch.zeros(q), torch.ones(q)])
    assert torch.equal(pos[0], expected0)
    # All positions are distinct, and the y half is shared along a row of the grid.
    assert torch.unique(pos, dim=0).shape[0] == 6
    assert torch.equal(pos[0, : 2 * q], pos[2, : 2 * q])
    assert not torch.equal(pos[0, 2 * q :], pos[2, 2 * q :])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(30, 2, 2)


def test_timestep_embedding_shape_and_time_dependence() -> None:
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = timestep_embedding(t, 7)
    assert emb.shape == (3, 7)
    assert torch.all(emb[:, -1] == 0)  # odd widths are zero-padded
    assert not torch.allclose(emb[0], emb[1]) and not torch.allclose(emb[1], emb[2])
    assert TimestepEmbedder(32, freq_dim=16)(t).shape == (3, 32)


def test_attention_shape_and_key_padding_mask() -> None:
    torch.manual_seed(0)
    attn = Attention(32, 2)
    x = torch.randn(2, 5, 32)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = attn(x, mask)
    assert out.shape == x.shape
    x2 = x.clone()
    x2[0, 3:] = torch.randn(2, 32) * 10
    out2 = attn(x2, mask)
    # Real tokens of sample 0 ignore its padded keys; sample 1 is untouched.
    torch.testing.assert_close(out2[0, :3], out[0, :3])
    torch.testing.assert_close(out2[1], out[1])
    # Without the mask, the same change does reach the real tokens.
    assert not torch.allclose(attn(x2)[0, :3], attn(x)[0, :3])
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, 4)


def test_low_precision_cpu_training_uses_the_math_kernel_with_the_same_result() -> None:
    from crossflow.models.layers import _needs_math_kernel

    q = torch.randn(2, 2, 5, 8, dtype=torch.bfloat16, requires_grad=True)
    assert _needs_math_kernel(q)  # CPU bf16 backward: the flash kernel is the slow one
    with torch.no_grad():
        assert not _needs_math_kernel(q)  # sampling keeps the faster forward
    assert not _needs_math_kernel(q.detach().float().requires_grad_())
    torch.manual_seed(0)
    attn = Attention(32, 2)
    x = torch.randn(2, 7, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    out.float().sum().backward()
    reference = attn(x.detach())
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_qk_norm_matches_rms_norm_and_keeps_the_fused_kernel_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    reference, norm = torch.nn.RMSNorm(32), QKNorm(32)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        norm.weight.copy_(reference.weight)
    x = torch.randn(4, 2, 10, 32)
    assert torch.equal(norm(x), reference(x))  # fp32: the same op
    with warnings.catch_warnings():  # torch warns when a dtype mismatch drops it to the slow composite kernel
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference(x), atol=0.05, rtol=0.02)


def test_encoder_block_and_mlp_shapes() -> None:
    x = torch.randn(2, 5, 32)
    assert MLP(32, 2.0)(x).shape == x.shape
    assert MLP(32, 2.0).fc1.out_features == 64
    assert EncoderBlock(32, 2)(x).shape == x.shape


def test_adaln_block_is_identity_and_final_layer_zero_at_init() -> None:
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    assert torch.equal(AdaLNBlock(32, 2)(x, c), x)
    final = FinalLayer(32, 12)
    out = final(x, c)
    assert out.shape == (2, 5, 12)
    assert torch.all(out == 0)
