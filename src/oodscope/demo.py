"""An offline demo on data that ships with scikit-learn: 8x8 digits, 0-4 in distribution, 5-9 out.

A softmax (multinomial logistic regression) classifier is trained on half of the digits 0-4; its logits on
the other half (ID) and on the digits 5-9 (OOD) are scored by every logit detector, and the metrics printed.
"""

from __future__ import annotations

import time
from typing import Any

from .detectors import GEN, MLS, MSP, Energy, Entropy
from .features import Features
from .metrics import bench_metrics

METRICS = ("auroc", "fpr95tpr_ood", "fpr95tpr_id", "aupr_in", "aupr_out")


def run_demo(seed: int = 0) -> dict[str, Any]:
    """Train the demo classifier and score ID vs OOD digits with every logit detector.

    Returns a dict with ``accuracy`` (ID test accuracy), ``rows`` (one dict of metrics per detector) and
    ``seconds`` (wall time).
    """
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    start = time.perf_counter()
    images, labels = load_digits(return_X_y=True)
    images = images / 16.0
    is_id = labels < 5
    x_train, x_test, y_train, y_test = train_test_split(
        images[is_id], labels[is_id], test_size=0.5, random_state=seed, stratify=labels[is_id]
    )
    classifier = LogisticRegression(C=0.1, max_iter=2000).fit(x_train, y_train)
    accuracy = float((classifier.predict(x_test) == y_test).mean())

    id_features = Features(logits=classifier.decision_function(x_test), labels=y_test)
    ood_features = Features(logits=classifier.decision_function(images[~is_id]))
    rows = []
    for detector in (GEN(), MSP(), MLS(), Energy(), Entropy()):
        detector.fit(id_features)
        scores_in, _ = detector.score(id_features)
        scores_out, _ = detector.score(ood_features)
        metrics = bench_metrics((scores_in, scores_out), metrics=METRICS)
        rows.append({"detector": repr(detector), **metrics})
    return {
        "accuracy": accuracy,
        "n_id": len(id_features),
        "n_ood": len(ood_features),
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }


def format_demo(result: dict[str, Any]) -> str:
    """The demo's results as text: a heading, the metric table and a legend."""
    from ._table import markdown_table

    lines = [
        "oodscope demo: scikit-learn 8x8 digits, ID = digits 0-4 (held-out half), OOD = digits 5-9",
        f"classifier: multinomial logistic regression, ID test accuracy {result['accuracy']:.4f}",
        f"{result['n_id']} ID and {result['n_ood']} OOD samples, {result['seconds']:.2f} s",
        "",
        markdown_table(result["rows"], ["detector", *METRICS]),
        "",
        "Scores: higher = more OOD.",
        "fpr95tpr_ood: share of ID flagged OOD when 95% of OOD is caught (OOD positive);",
        "fpr95tpr_id: share of OOD accepted when 95% of ID is kept (ID positive, as in the ODIN/Energy/GEN",
        "papers).",
        "aupr_in / aupr_out: average precision with ID / OOD as the positive class.",
    ]
    return "\n".join(lines)
