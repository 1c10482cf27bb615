"""The shapes feature net (trains, separates the attributes, caches) and FID / KID through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crossflow.data.shapes import ATTRIBUTES
from crossflow.errors import CrossFlowError
from crossflow.eval.distribution import fid_kid
from crossflow.eval.features import (
    ShapesFeatureNet,
    ShapesFeatureRecipe,
    build_feature_extractor,
    inception_unavailable_reason,
    load_shapes_feature_net,
    shapes_training_data,
    train_shapes_feature_net,
)


def test_features_separate_the_attributes_on_unseen_images(tiny_feature_net: ShapesFeatureNet) -> None:
    images, labels = shapes_training_data(600, seed=99)  # a seed the net never trained on
    with torch.no_grad():
        logits = tiny_feature_net.classify(tiny_feature_net.embed(images))
    accuracy = {name: (logits[name].argmax(1) == labels[:, i]).float().mean().item()
                for i, name in enumerate(ATTRIBUTES)}
    # The heads are linear probes of the embedding. The full recipe reaches >= 0.999 on every attribute;
    # this 100-step one is weakest on shape.
    assert accuracy["color"] > 0.95 and accuracy["position"] > 0.95 and accuracy["size"] > 0.95, accuracy
    assert accuracy["shape"] > 0.6, accuracy


def test_cached_net_loads_identically_and_accepts_any_image_form(
    tiny_feature_net: ShapesFeatureNet, feature_cache: Path, feature_recipe: ShapesFeatureRecipe
) -> None:
    net, info = load_shapes_feature_net(feature_recipe, feature_cache, progress=False)
    assert not info["trained_now"] and Path(info["cache"]).parent == feature_cache
    images, _ = shapes_training_data(8, seed=5)
    with torch.no_grad():
        feats = net(images)
        assert torch.equal(feats, tiny_feature_net(images))
        assert feats.shape == (8, net.num_features) == (8, 32 + 2 * 16)
        assert torch.allclose(net(images.float() / 255.0), feats)  # uint8 or [0, 1] float
        big = F.interpolate(images.float() / 255.0, scale_factor=2, mode="nearest")
        assert net(big).shape == feats.shape  # 64 px images are resized to the net's 32


def test_training_is_deterministic() -> None:
    recipe = ShapesFeatureRecipe(num_images=64, steps=3, batch_size=16, width=8, feature_dim=8)
    a, b = train_shapes_feature_net(recipe, progress=False), train_shapes_feature_net(recipe, progress=False)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert recipe.key() != ShapesFeatureRecipe().key()


def test_fid_and_kid_are_zero_for_equal_sets_and_grow_with_distortion(tiny_feature_net: ShapesFeatureNet) -> None:
    real, _ = shapes_training_data(400, seed=11)
    other, _ = shapes_training_data(400, seed=12)  # the same distribution, other images
    g = torch.Generator().manual_seed(0)
    noisy = (other.float() / 255.0 + 0.1 * torch.randn(other.shape, generator=g)).clamp(0, 1)
    dim = other.float() / 255.0 * 0.7

    same = fid_kid(tiny_feature_net, real, real)
    assert same["fid"] < 1e-6
    fresh = fid_kid(tiny_feature_net, real, other)
    assert abs(fresh["kid_mean"]) < 3 * fresh["kid_std"] + 1e-3  # KID is unbiased: ~0 for the same distribution
    for distorted in (noisy, dim):
        worse = fid_kid(tiny_feature_net, real, distorted)
        assert worse["fid"] > 2 * fresh["fid"], (worse, fresh)
        assert worse["kid_mean"] > fresh["kid_mean"] + 3 * worse["kid_std"], (worse, fresh)


def test_inception_needs_torch_fidelity_and_local_weights(
    feature_cache: Path, feature_recipe: ShapesFeatureRecipe, tiny_feature_net: ShapesFeatureNet
) -> None:
    reason = inception_unavailable_reason(None)
    assert reason is not None  # torch-fidelity is not installable here (it pulls torchvision)
    with pytest.raises(CrossFlowError, match="InceptionV3"):
        build_feature_extractor("inception", None, feature_cache, feature_recipe, progress=False)
    net, info = build_feature_extractor("auto", None, feature_cache, feature_recipe, progress=False)
    assert isinstance(net, ShapesFeatureNet) and info["name"] == "shapes_feature_net"
    assert info["why_not_inception"] == reason
    with pytest.raises(CrossFlowError, match="--features"):
        build_feature_extractor("clip", None, feature_cache, feature_recipe)
