"""Evaluation fixtures: a tiny shapes feature-net recipe, trained once per session into a temporary cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossflow.eval.features import ShapesFeatureNet, ShapesFeatureRecipe, load_shapes_feature_net

# Small enough for a test (~2 s on one core), large enough to separate the attributes.
TINY_RECIPE = ShapesFeatureRecipe(num_images=1024, steps=100, width=16, feature_dim=32)


@pytest.fixture(scope="session")
def feature_recipe() -> ShapesFeatureRecipe:
    return TINY_RECIPE


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny net is cached: shared by the session, so it trains once."""
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="session")
def tiny_feature_net(feature_cache: Path) -> ShapesFeatureNet:
    net, _ = load_shapes_feature_net(TINY_RECIPE, feature_cache, progress=False)
    return net
