"""Shared fixtures: a toy ID/OOD problem that every detector should separate."""

from __future__ import annotations

import numpy as np
import pytest

from oodscope import Features
from oodscope.detectors import Detector, available


def all_detector_classes() -> list[type[Detector]]:
    """Every detector oodscope defines, from its one registry (the CLI and persistence read the same)."""
    return [cls for name, cls in available().items() if ":" not in name]


def linear_head_features(h: np.ndarray, weight: np.ndarray, bias: np.ndarray, labels=None) -> Features:
    """Features of a linear head on penultimate features h: logits h Wᵀ + b, the layer, the head, labels."""
    return Features(
        logits=h @ weight.T + bias,
        layers={"penultimate": h},
        labels=labels,
        head_weight=weight,
        head_bias=bias,
    )


def make_toy(
    n_per_class: int = 80, n_classes: int = 5, dim: int = 24, seed: int = 0, off_class_noise: float = 0.7
) -> dict[str, Features]:
    """Linearly separable ID classes around class means; OOD points around the origin.

    The head W has the class means as rows, so ID logits are peaked and OOD logits are flat: every
    detector, logit- or feature-based, should give OOD the higher scores. As in real training data, a few
    fit labels (3 %) are wrong, so that a method fitting a likelihood to them (TempScale) has an optimum.
    ``off_class_noise`` is the ID noise's standard deviation on the units of other classes (0.7, as on a
    sample's own units, by default; smaller puts the ID features near a subspace).
    """
    rng = np.random.default_rng(seed)
    means = np.zeros((n_classes, dim))
    for c in range(n_classes):  # each class lights up its own 4 units, like post-ReLU penultimate features
        means[c, 4 * c : 4 * c + 4] = 3.0
    weight = means / 2.0
    bias = rng.normal(0, 0.1, n_classes)

    def sample_id(n_each: int, wrong: float = 0.0) -> Features:
        labels = np.repeat(np.arange(n_classes), n_each)
        spread = np.where(means[labels] > 0, 0.7, off_class_noise)
        feats = np.maximum(means[labels] + rng.normal(0, 1.0, (labels.size, dim)) * spread, 0.0)  # post-ReLU
        flips = np.random.default_rng(seed + 1)  # its own draws: the features are those of the clean toy
        flipped = flips.random(labels.size) < wrong
        labels[flipped] = (labels[flipped] + flips.integers(1, n_classes, flipped.sum())) % n_classes
        return linear_head_features(feats, weight, bias, labels)

    ood_feats = np.maximum(rng.normal(0, 1.0, (n_per_class * 2, dim)), 0.0)
    ood = linear_head_features(ood_feats, weight, bias)
    return {"fit": sample_id(n_per_class, wrong=0.03), "id": sample_id(n_per_class // 2), "ood": ood}


@pytest.fixture(scope="session")
def toy() -> dict[str, Features]:
    return make_toy()


def mnist_and_fashion_installed() -> bool:
    """Whether the offline MNIST and Fashion-MNIST packages are installed (real-data CLI tests need both)."""
    from oodscope.data import DatasetNotAvailableError
    from oodscope.data.sources import load_named

    try:
        load_named("mnist", "test")
        load_named("fashion_mnist", "test")
    except DatasetNotAvailableError:
        return False
    return True
