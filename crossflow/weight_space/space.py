"""The space of instance models: standardise, PCA, sample, find attribute directions, edit (weights2weights).

Each instance model is one point: its dense ΔW of q and v in every flow block, flattened (or, for the text-latent
comparison, its offset of the prompt's VE mean). ΔW rather than the LoRA factors (A, B): a factorisation is not
unique — (B·M, M⁻¹·A) is the same update for any invertible r×r M — so two instances' factors can differ wildly for
the same model, while ΔW = B·A is the model itself.

    space = WeightSpace.fit(bank.vectors()[:300], k=20, labels={"aspect": [...]})
    c = space.encode(delta)                     # (k,) PC coefficients of a ΔW
    delta = space.decode(c)                     # back (in the span of the k components)
    c_new = space.sample(8, generator)           # models from the Gaussian over coefficients
    d = space.direction("aspect")               # least squares of the attribute on the coefficients
    c_edit = space.edit(c, d, amount=0.3)       # the attribute's linear prediction moves by 0.3

Dimensions are standardised over the collection before PCA (each weight to mean 0, std 1),
so large-magnitude weights do not decide the components alone; ``torch.svd_lowrank`` (Halko et al. 2011) finds the
top k without forming the d×d covariance (d = 131k for the demo model's q, v). Pure PyTorch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import save_file

from crossflow.checkpoint import read_tagged_safetensors
from crossflow.errors import CrossFlowError
from crossflow.inference import check_temperature

if TYPE_CHECKING:
    from crossflow.weight_space.bank import BankRecord

SPACE_META_KEY = "crossflow_weight_space"
STD_FLOOR = 1e-8
"""Relative floor on a dimension's std (times the largest std): a weight that never varies is kept at its mean."""


@dataclass(frozen=True)
class AttributeDirection:
    """A linear read-out of an attribute from PC coefficients: value ≈ coeffs · weights + intercept."""

    name: str
    weights: torch.Tensor
    """(k,): the least-squares coefficients; also the direction in coefficient space along which the attribute grows
    fastest per unit step."""
    intercept: float
    r2: float
    """Fraction of the attribute's variance over the fitted models that the read-out explains."""

    def predict(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The attribute's linear prediction for coefficients (..., k)."""
        return coeffs @ self.weights.to(coeffs) + self.intercept


class WeightSpace:
    """Standardisation + the top-k principal components of a collection of instance vectors."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, components: torch.Tensor, variances: torch.Tensor,
                 vector_shape: Sequence[int], coefficients: torch.Tensor | None = None,
                 labels: Mapping[str, Sequence[float]] | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        d = math.prod(vector_shape)
        if mean.shape != (d,) or std.shape != (d,) or components.dim() != 2 or components.shape[0] != d:
            raise CrossFlowError(f"inconsistent weight space: vector shape {tuple(vector_shape)}, mean {tuple(mean.shape)}, "
                                 f"components {tuple(components.shape)}")
        self.mean, self.std = mean.float(), std.float()
        self.components = components.float()  # (d, k), orthonormal columns
        self.variances = variances.float()  # (k,) variance of each coefficient over the collection
        self.vector_shape = tuple(int(s) for s in vector_shape)
        self.coefficients = None if coefficients is None else coefficients.float()  # (n, k) of the fitted collection
        self.labels = {name: [float(v) for v in values] for name, values in (labels or {}).items()}
        self.metadata = dict(metadata or {})
        self._device_copies: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, components) on ``device``, copied once (inversion decodes every step)."""
        if device.type == "cpu":
            return self.mean, self.std, self.components
        if device not in self._device_copies:
            self._device_copies[device] = (self.mean.to(device), self.std.to(device), self.components.to(device))
        return self._device_copies[device]

    @property
    def k(self) -> int:
        return self.components.shape[1]

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    # -------------------------------------------------------------------------------------------- fit

    @classmethod
    def fit(cls, vectors: torch.Tensor, k: int, labels: Mapping[str, Sequence[float]] | None = None,
            metadata: Mapping[str, Any] | None = None, niter: int = 6, seed: int = 0) -> WeightSpace:
        """PCA of ``vectors`` (n, *shape): standardise each dimension over the n, keep the top ``k`` components.

        ``labels``: attribute values of the n models (for :meth:`direction`). ``seed`` fixes svd_lowrank's random
        projection; ``niter`` its power iterations (more: closer to the exact SVD).
        """
        n = vectors.shape[0]
        if n < 2:
            raise CrossFlowError(f"a weight space needs at least 2 models, got {n}")
        flat = vectors.reshape(n, -1).float()
        if not 1 <= k <= min(flat.shape):
            raise CrossFlowError(f"k must be in [1, {min(flat.shape)}] for {n} models of {flat.shape[1]} weights, got {k}")
        for name, values in (labels or {}).items():
            if len(values) != n:
                raise CrossFlowError(f"label {name!r} has {len(values)} values for {n} models")
        mean = flat.mean(0)
        std = flat.std(0)
        std = std.clamp_min(STD_FLOOR * float(std.max().clamp_min(STD_FLOOR)))
        z = (flat - mean) / std
        with torch.random.fork_rng():  # svd_lowrank draws its projection from the global RNG
            torch.manual_seed(seed)
            _, singular, v = torch.svd_lowrank(z, q=k, niter=niter)
        coefficients = z @ v
        variances = singular**2 / (n - 1)
        return cls(mean, std, v, variances, vectors.shape[1:], coefficients, labels, metadata)

    # ---------------------------------------------------------------------------------- encode / decode

    def _flat(self, vectors: torch.Tensor) -> torch.Tensor:
        shape = tuple(vectors.shape)
        if shape[-len(self.vector_shape):] != self.vector_shape:
            raise CrossFlowError(f"expected vectors of shape (..., {', '.join(map(str, self.vector_shape))}), got {shape}")
        return vectors.reshape(*shape[: len(shape) - len(self.vector_shape)], self.dim)

    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors (..., *shape) -> PC coefficients (..., k): the standardised vector projected on the components."""
        flat = self._flat(vectors).float()
        mean, std, components = self._on(flat.device)
        return ((flat - mean) / std) @ components

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """PC coefficients (..., k) -> vectors (..., *shape). Differentiable (inversion optimises through it)."""
        if coeffs.shape[-1] != self.k:
            raise CrossFlowError(f"expected {self.k} coefficients, got {coeffs.shape[-1]}")
        mean, std, components = self._on(coeffs.device)
        flat = (coeffs.float() @ components.T) * std + mean
        return flat.reshape(*coeffs.shape[:-1], *self.vector_shape)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` coefficient vectors from N(0, diag(variances)): the Gaussian the collection's coefficients span
        (their mean is 0, the collection having been centred). ``temperature`` scales the std."""
        if n < 1:
            raise CrossFlowError(f"need n >= 1 models to sample, got {n}")
        check_temperature(temperature, meaning="the scale of the coefficients' std: 1 = the collection's spread")
        noise = torch.randn(n, self.k, generator=generator)
        return noise * self.variances.sqrt() * temperature

    # ------------------------------------------------------------------------------------- directions

    def direction(self, labels: str | Sequence[float] | np.ndarray | torch.Tensor,
                  coefficients: torch.Tensor | None = None, name: str | None = None) -> AttributeDirection:
        """Least squares of an attribute on the PC coefficients (with an intercept) -> its direction.

        ``labels``: the attribute's values for the fitted models (or for ``coefficients`` when given), or the name
        of labels stored with the space (e.g. ``"aspect"``; see crossflow.eval.instances.attribute_values).
        """
        if isinstance(labels, str):
            if labels not in self.labels:
                raise CrossFlowError(f"no labels {labels!r} stored with this space; it has {sorted(self.labels)}")
            name, labels = labels, self.labels[labels]
        coeffs = self.coefficients if coefficients is None else coefficients.float()
        if coeffs is None:
            raise CrossFlowError("this space holds no coefficients of its models: pass coefficients")
        y = torch.as_tensor(np.asarray(labels, dtype=np.float64)).to(torch.float64)
        if y.shape != (coeffs.shape[0],):
            raise CrossFlowError(f"got {tuple(y.shape)} labels for {coeffs.shape[0]} models")
        # float64: a well-conditioned solve even when some coefficient variances are ~0 (k = full rank).
        design = torch.cat([coeffs.double(), torch.ones(len(y), 1, dtype=torch.float64)], dim=1)
        solution = torch.linalg.lstsq(design, y[:, None], driver="gelsd").solution[:, 0]
        residual = y - design @ solution
        total = ((y - y.mean()) ** 2).sum()
        r2 = float(1 - (residual**2).sum() / total) if total > 0 else 0.0
        return AttributeDirection(name or "attribute", solution[:-1].float(), float(solution[-1]), r2)

    @staticmethod
    def edit(coeffs: torch.Tensor, direction: AttributeDirection, amount: float) -> torch.Tensor:
        """Move ``coeffs`` along ``direction`` so that its linear prediction changes by ``amount`` (in the attribute's
        own units): c + amount · w / ‖w‖², the shortest such step."""
        w = direction.weights.to(coeffs)
        norm2 = float((w * w).sum())
        if norm2 == 0:
            raise CrossFlowError(f"direction {direction.name!r} is zero: the attribute does not vary with the coefficients")
        return coeffs + amount * w / norm2

    # --------------------------------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file: mean, std, components, variances (+ coefficients); shape, labels, metadata as JSON."""
        from crossflow.checkpoint import atomic_write_file

        tensors = {"mean": self.mean, "std": self.std, "components": self.components, "variances": self.variances}
        if self.coefficients is not None:
            tensors["coefficients"] = self.coefficients
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = json.dumps({"vector_shape": list(self.vector_shape), "labels": self.labels, "metadata": self.metadata})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata={SPACE_META_KEY: meta}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> WeightSpace:
        """Inverse of :meth:`save` (safetensors: no pickled code runs)."""
        meta, t = read_tagged_safetensors(path, SPACE_META_KEY, "weight space file", "weight space")
        info = json.loads(meta[SPACE_META_KEY])
        return cls(t["mean"], t["std"], t["components"], t["variances"], info["vector_shape"], t.get("coefficients"),
                   info.get("labels"), info.get("metadata"))


def fit_bank_space(record: BankRecord, vectors: torch.Tensor, k: int, holdout: int = 0, niter: int = 6,
                   seed: int = 0) -> WeightSpace:
    """The space of a trained bank: PCA of its first K − ``holdout`` instance vectors (the last ``holdout`` stay out,
    for held-out tests), labelled with every attribute of crossflow.eval.instances.ATTRIBUTE_NAMES, and carrying
    what sampling needs (kind, targets, prompt, base config) in its metadata."""
    from crossflow.eval.instances import ATTRIBUTE_NAMES, attribute_values

    n = len(record.instances)
    if vectors.shape[0] != n:
        raise CrossFlowError(f"the bank holds {vectors.shape[0]} vectors for {n} instances")
    if not 0 <= holdout <= n - 2:
        raise CrossFlowError(f"holdout must leave at least 2 of the {n} instances to fit, got {holdout}")
    fitted = list(range(n - holdout))
    labels = {name: [attribute_values(record.instances[i], name) for i in fitted] for name in ATTRIBUTE_NAMES}
    metadata = {"kind": record.kind, "targets": list(record.targets), "token": record.token, "prompt": record.prompt,
                "base_config": record.base_config, "base_checkpoint": record.base_checkpoint, "rank": record.rank,
                "fitted": fitted, "heldout": list(range(n - holdout, n)),
                "instances": [record.instances[i].to_dict() for i in fitted]}
    return WeightSpace.fit(vectors[: n - holdout], k, labels=labels, metadata=metadata, niter=niter, seed=seed)


def explained_variance(space: WeightSpace) -> list[float]:
    """Fraction of the standardised collection's total variance (= its dimension: every weight has variance 1)
    each component explains."""
    return [float(v) / space.dim for v in space.variances]
