"""Every detector (39 classes, 44 settings) on MNIST[0-4] (ID) against MNIST[5-9], Fashion-MNIST and
Animal-MNIST.

A toy convnet is trained on the train digits 0-4 (TensorFlow or torch); ``oodscope.evaluate`` then runs the
model once per data set and fits and scores every detector on those features; the detectors that need
gradients or an edited forward add their own passes, planned and shared (``report.passes`` lists them).
Writes ``--out/report.html`` (table, histograms, ROC curves), ``report.csv`` and ``report.json``, and prints
the markdown table.

    python examples/benchmark_mnist.py --backend tensorflow --epochs 5
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from oodscope import (  # noqa: E402
    ASH,
    BLOOD,
    DICE,
    FDBD,
    GEN,
    GMM,
    IODIN,
    KLM,
    KNN,
    LTS,
    MLS,
    MSP,
    NAC,
    NCI,
    NECO,
    ODIN,
    RMDS,
    SCALE,
    SHE,
    VRA,
    AdaSCALE,
    CADRef,
    CARef,
    Energy,
    Entropy,
    GradNorm,
    Gram,
    Mahalanobis,
    MDSEns,
    NNGuide,
    OpenMax,
    OptFS,
    RankFeat,
    ReAct,
    Relation,
    Residual,
    TempScale,
    ViM,
    WeiPer,
    evaluate,
)
from oodscope.data import OODDataset  # noqa: E402
from oodscope.needs import PassKind  # noqa: E402
from oodscope.plan import Plan  # noqa: E402


def preprocess_fn(*inputs):
    return tuple([inputs[0] / 255] + list(inputs[1:]))


def pass_table(detectors) -> str:
    """The passes over each scored dataset, from the planner: each detector's beyond the plain pass, and
    all of them together (passes of one kind are shared)."""
    lines = ["| detector | passes per scored dataset beyond the plain one |", "|---|---|"]
    everything = Plan(None)
    for detector in detectors:
        own = Plan(None)
        own.add("own", detector.needs())
        everything.add(str(len(everything.names)), detector.needs())
        counts = Counter(_what(kind) for kind in own.kinds() if kind != PassKind())
        if counts:
            lines.append(f"| {detector!r} | {', '.join(f'{n} {what}' for what, n in counts.items())} |")
    lines.append(f"| all {len(detectors)} together | {everything.passes()} passes, the plain one included |")
    return "\n".join(lines)


def _what(kind: PassKind) -> str:
    if kind.perturbation is not None:
        return "perturbed (forward, backward, forward)"
    if kind.loss is not None:
        return "gradient (forward, backward)"
    return "edited forward"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["tensorflow", "torch"], default="tensorflow")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmark_mnist_out"))
    args = parser.parse_args()

    backend = args.backend
    train = OODDataset("mnist", backend=backend, load_kwargs=dict(split="train"))
    test = OODDataset("mnist", backend=backend, load_kwargs=dict(split="test"))
    train_in, _ = train.split_by_class([0, 1, 2, 3, 4])
    test_in, test_out = test.split_by_class([0, 1, 2, 3, 4])
    fashion = OODDataset("fashion_mnist", backend=backend, load_kwargs=dict(split="test"))
    animals = OODDataset("animal_mnist", backend=backend)

    start = time.perf_counter()
    training_data = train_in.prepare(128, preprocess_fn, shuffle=True, seed=args.seed)
    if backend == "tensorflow":
        from oodscope.training import train_tf_model

        model = train_tf_model(
            training_data, model="toy_convnet", input_shape=(28, 28, 1), num_classes=10,
            epochs=args.epochs, seed=args.seed,
        )  # fmt: skip
    else:
        from oodscope.training import train_torch_model

        model = train_torch_model(
            training_data, model="toy_convnet", input_shape=(1, 28, 28), num_classes=10,
            epochs=args.epochs, seed=args.seed,
        )  # fmt: skip
    print(f"trained the toy convnet in {time.perf_counter() - start:.1f} s")

    detectors = [
        # the logits (TempScale and OpenMax also read the fit labels), and the input gradients of ODIN, IODIN
        GEN(), MSP(), MLS(), Energy(), Entropy(), TempScale(), KLM(), OpenMax(), ODIN(), IODIN(),
        # the penultimate features with the logits or the head's weights
        ReAct(), ASH(), SCALE(), DICE(), VRA(), LTS(), GradNorm(), FDBD(), NCI(), OptFS(), WeiPer(),
        # the features of the fit data
        KNN(), NNGuide(), Relation(), Mahalanobis(), RMDS(), Mahalanobis(normalize=True),
        RMDS(normalize=True), GMM(), ViM(), Residual(), NECO(), SHE(), CARef(), CADRef(), Gram(),
        # gradients or an edited forward: a perturbed pass per data set (AdaSCALE, both variants share it;
        # MDSEns: one per layer), one gradient pass (NAC beyond the penultimate; the penultimate alone is a
        # closed form on the plain pass), one edited forward per block (RankFeat), one gradient pass per
        # projection (BLOOD: pool1 -> pool2, whole feature maps as in the paper's image code)
        AdaSCALE(variant="a"), AdaSCALE(variant="l"), NAC(), NAC(layers=["pool1", "pool2", "penultimate"]),
        MDSEns(), MDSEns(layers=["pool1", "pool2", "penultimate"]), RankFeat(layers=["pool1", "pool2"]),
        BLOOD(layers=["pool1", "pool2"], token=None),
    ]  # fmt: skip
    report = evaluate(
        model,
        train_in.prepare(256, preprocess_fn),
        test_in.prepare(256, preprocess_fn),
        {
            "mnist_5_9": test_out.prepare(256, preprocess_fn),
            "fashion_mnist": fashion.prepare(256, preprocess_fn, with_labels=False),
            "animal_mnist": animals.prepare(256, preprocess_fn, with_labels=False),
        },
        detectors=detectors,
        groups={"near": ["mnist_5_9"], "far": ["fashion_mnist", "animal_mnist"]},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report.to_html(args.out / "report.html")
    report.to_csv(args.out / "report.csv")
    report.to_json(args.out / "report.json")
    print(report.to_markdown())
    print(pass_table(detectors))
    print(f"\nReport: {args.out / 'report.html'}")


if __name__ == "__main__":
    main()
