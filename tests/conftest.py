"""Shared fixtures: a tiny BERT text encoder built locally (no downloads) and a tiny model config."""

from __future__ import annotations

import copy
import os

# Never reach for the network: a missing local folder must fail fast, not retry a hub download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from crossflow.config import ModelConfig  # noqa: E402
from crossflow.models.codec import CodecConfig  # noqa: E402
from crossflow.models.text_encoder import TextEncoderConfig  # noqa: E402
from crossflow.models.variational import VariationalEncoderConfig  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Enough words for the shapes dataset's captions (every other word maps to [UNK], which is fine too).
# fmt: off
WORDS = [
    "a", "an", "the", "small", "large", "big", "little", "tiny", "huge", "red", "green", "blue", "yellow",
    "cyan", "magenta", "white", "circle", "square", "triangle", "disc", "disk", "dot", "ball", "box",
    "block", "shape", "object", "picture", "image", "photo", "drawing", "in", "at", "on", "near", "top",
    "bottom", "upper", "lower", "left", "right", "center", "centre", "middle", "corner", "quadrant",
    "area", "side", "of", "with", "is", "there", "and", "one", "single", "filled", "solid", "colored",
    "coloured", "sized", "placed", "located", "showing", "shows",
]
# fmt: on
PUNCTUATION = [",", ":", ".", "-", ";", "!", "'", "(", ")"]
VOCAB = SPECIAL_TOKENS + WORDS + PUNCTUATION
TEXT_MAX_LENGTH = 12
TEXT_HIDDEN_SIZE = 32


@pytest.fixture(scope="session")
def tiny_text_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised 2-layer, 32-wide BERT + a word-level tokenizer, saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = tmp_path_factory.mktemp("tiny_text_encoder")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # transformers 5.x: BertTokenizer is tokenizers-backed and takes the vocabulary as a dict.
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=TEXT_HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng():  # seeded weights without disturbing the session's global RNG
        torch.manual_seed(0)
        model = BertModel(config)
    tokenizer.save_pretrained(str(directory))
    model.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_model_config_session(tiny_text_encoder_dir: str) -> ModelConfig:
    """8×8 RGB pixel latents, 12 text tokens, a 1-layer 32-wide VE, the "tiny" flow preset at patch 4.

    Session-scoped for module- and session-scoped fixtures (e.g. a built pipeline); do not mutate it,
    tests take a private copy through :func:`tiny_model_config`.
    """
    return ModelConfig(
        text_encoder=TextEncoderConfig(
            pretrained=tiny_text_encoder_dir, max_length=TEXT_MAX_LENGTH, cache_size=64
        ),
        codec=CodecConfig(kind="pixel", image_size=8, channels=3),
        variational=VariationalEncoderConfig(width=32, depth=1, num_heads=2, token_dim=8),
        preset="tiny",
        patch_size=4,
        alignment_dim=32,
    )


def build_random_pipeline(config: ModelConfig, seed: int = 0):  # -> CrossFlowPipeline (imported lazily)
    """``config`` (any kind) with random weights nudged off the zero init, so the flow's output — and its CFG
    indicator — depends on x, t and the branch; the global RNG is left as it was."""
    import torch

    from crossflow.inference import CrossFlowPipeline
    from crossflow.models.flow_model import build_model
    from crossflow.models.text_encoder import FrozenTextEncoder

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = FrozenTextEncoder(config.text_encoder)
        model = build_model(config, text_dim=text_encoder.hidden_size)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return CrossFlowPipeline(config, model.eval(), text_encoder)


@pytest.fixture(scope="session")
def random_pipeline():  # -> Callable[[ModelConfig, int], CrossFlowPipeline]
    """Factory fixture: :func:`build_random_pipeline` (tests in subfolders cannot import conftest)."""
    return build_random_pipeline


@pytest.fixture
def tiny_model_config(tiny_model_config_session: ModelConfig) -> ModelConfig:
    """A private copy of the tiny model config (safe to modify in a test)."""
    return copy.deepcopy(tiny_model_config_session)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised AutoencoderKL (2 blocks: downsample 2) with FLUX-style scale 0.5 and shift 0.1."""
    import torch

    diffusers = pytest.importorskip("diffusers", reason="the 'vae' extra (diffusers) is not installed")
    directory = tmp_path_factory.mktemp("tiny_vae")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.5, shift_factor=0.1,
        )  # fmt: skip
    vae.save_pretrained(str(directory))
    return str(directory)
