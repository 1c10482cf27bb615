"""FID and KID (torchmetrics) between generated and real images, through any feature network.

Features are computed once per image and fed to both metrics (torchmetrics would otherwise run the
network twice, which matters for InceptionV3 on a CPU): the metrics get a pass-through module.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn


class _Precomputed(nn.Module):
    """Pass-through "feature extractor": update() receives features, not images."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class DistributionMetrics:
    """Accumulate features of real and generated images; ``compute()`` -> FID and KID.

    ``extractor`` maps (N, 3, H, W) uint8 or [0, 1] float images to (N, D) features and has ``num_features``.
    """

    def __init__(self, extractor: nn.Module, batch_size: int = 256, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, seed: int = 0) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.extractor = extractor.eval()
        self.batch_size = batch_size
        self.seed = seed
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        dim = int(extractor.num_features)
        self.fid = FrechetInceptionDistance(feature=_Precomputed(dim), reset_real_features=False)
        # torchmetrics recommends float64 for FID's matrix square root.
        self.fid.set_dtype(torch.float64)
        with warnings.catch_warnings():  # "KID keeps all features in memory": fine at these sizes
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(feature=_Precomputed(dim), reset_real_features=False,
                                               subsets=kid_subsets, subset_size=kid_subset_size)
        self.counts = {"real": 0, "fake": 0}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) float64 features of (N, 3, H, W) images, computed in batches."""
        device = next(self.extractor.parameters()).device
        parts = [self.extractor(images[i:i + self.batch_size].to(device)).double().cpu()
                 for i in range(0, len(images), self.batch_size)]
        return torch.cat(parts)

    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch of real (reference) or generated images."""
        feats = self.features(images)
        self.fid.update(feats, real=real)
        self.kid.update(feats, real=real)
        self.counts["real" if real else "fake"] += len(feats)

    def reset_fake(self) -> None:
        """Forget the generated images, keep the reference (compare several sets against one reference)."""
        self.fid.reset()
        self.kid.reset()
        self.counts["fake"] = 0

    def compute(self) -> dict[str, Any]:
        """{"fid", "kid_mean", "kid_std", "n_real", "n_fake", "kid_subset_size"}; NaN where a set has < 2 images."""
        n_real, n_fake = self.counts["real"], self.counts["fake"]
        out: dict[str, Any] = {"n_real": n_real, "n_fake": n_fake}
        if min(n_real, n_fake) < 2:
            return {**out, "fid": math.nan, "kid_mean": math.nan, "kid_std": math.nan, "kid_subset_size": 0}
        out["fid"] = max(float(self.fid.compute()), 0.0)  # float noise can dip a hair below 0 for equal sets
        # Subsets of at most half the smaller set, so they differ and KID's std means something below 2000
        # images (with subsets as large as a set, every subset is the whole set: std 0).
        size = min(self.kid_subset_size, max(2, min(n_real, n_fake) // 2))
        # KID's subsets are drawn with the global RNG: seed it locally so the report is reproducible.
        self.kid.subset_size = size
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self.kid.compute()
        out.update(kid_mean=float(kid_mean), kid_std=float(kid_std), kid_subset_size=size)
        dim = int(self.extractor.num_features)
        if min(n_real, n_fake) < 2 * dim:
            # FID's covariance estimates need many more samples than dimensions (shapes net, real vs real:
            # FID 14 at 64 images, 3.2 at 256, 1.1 at 1000).
            out["note"] = (f"under 2 x {dim} images per set FID is strongly biased upwards: compare it with a "
                           "floor (real vs real) at the same number of images")
        return out


def fid_kid(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """One-shot FID / KID of ``fake`` against ``real`` (both (N, 3, H, W) image tensors)."""
    metrics = DistributionMetrics(extractor, **kwargs)
    metrics.update(real, real=True)
    metrics.update(fake, real=False)
    return metrics.compute()
