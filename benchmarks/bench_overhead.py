"""Overhead of oodscope's model passes over a bare forward loop, for a torch and a Keras toy convnet.

Prints, per framework, on 10,000 random 28x28 inputs in batches of 128:

(a) ``GEN().fit(model).score(x)`` time / a bare loop of ``model(x)`` over the same batches (target <= 1.05);
(b) one ``extract`` (logits + penultimate + head) followed by fit+score of the five logit detectors and the
    three shaping variants on the cached Features, / one bare pass (target <= 1.3).

The three are run in interleaved rounds. Each ratio is the median over rounds of the ratio within a round
(times taken seconds apart, so that the machine's drifting speed cancels out), followed by the interquartile
range of the per-round ratios in brackets; the best times over all rounds are printed beside them. On a
2-core virtual machine a single torch pass varies by +-15% from one to the next, hence the many rounds.
glibc's malloc thresholds are fixed first
(see ``_allocator.py``: otherwise whether a torch pass faults in its activations at every batch, which takes
half its time, depends on the process's history); ``--default-allocator`` leaves them.

Run: python benchmarks/bench_overhead.py [--n 10000] [--repeats 21] [--frameworks torch keras]
     [--default-allocator]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _allocator import fix_thresholds  # noqa: E402 - benchmarks/ is on sys.path when run as a script

from oodscope import ASH, GEN, MLS, MSP, SCALE, Energy, Entropy, ReAct, extract  # noqa: E402
from oodscope.training import toy_convnet  # noqa: E402

BATCH = 128


def torch_setup(n: int):
    import torch

    torch.manual_seed(0)
    model = toy_convnet((1, 28, 28), framework="torch").eval()
    x = np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)

    def bare() -> None:
        with torch.no_grad():
            for start in range(0, n, BATCH):
                model(torch.as_tensor(x[start : start + BATCH]))

    return model, x, bare


def keras_setup(n: int):
    import keras

    keras.utils.set_random_seed(0)
    model = toy_convnet((28, 28, 1), framework="keras")
    x = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)

    def bare() -> None:
        for start in range(0, n, BATCH):
            model(x[start : start + BATCH], training=False)

    return model, x, bare


def many_detectors(model, x) -> None:
    feats = extract(
        model, x, feature_layers_id=["penultimate"], batch_size=BATCH, with_head=True, progress=False
    )
    for detector in (GEN(), MSP(), MLS(), Energy(), Entropy(), ReAct(), ASH(), SCALE()):
        detector.fit(feats).score(feats)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def summary(ratios: np.ndarray) -> str:
    """The median and, in brackets, the interquartile range of per-round ratios."""
    q25, median, q75 = np.percentile(ratios, [25, 50, 75])
    return f"{median:>10.3f} [{q25:.2f}-{q75:.2f}]"  # 22 characters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--frameworks", nargs="+", default=["torch", "keras"])
    parser.add_argument(
        "--default-allocator", action="store_true", help="leave glibc's malloc thresholds as they are"
    )
    args = parser.parse_args()
    print("allocator: as it is" if args.default_allocator else fix_thresholds())
    print(f"{args.n} inputs of 28x28, batch {BATCH}, {args.repeats} rounds (best times, median ratios [IQR])")
    columns = ("bare pass", "GEN.score", "ratio (a) [IQR]", "extract+8", "ratio (b) [IQR]")
    widths = (10, 10, 22, 10, 22)
    print(f"{'framework':<10} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for framework in args.frameworks:
        model, x, bare = (torch_setup if framework == "torch" else keras_setup)(args.n)
        gen = GEN().fit(model, batch_size=BATCH, progress=False)

        def gen_score() -> None:
            gen.score(x)  # noqa: B023 - called within this iteration

        def eight() -> None:
            many_detectors(model, x)  # noqa: B023

        bare(), gen_score(), eight()  # warm-up (graph tracing, allocator)
        t_bare, t_gen, t_many = [], [], []
        for _ in range(args.repeats):  # interleaved, so that machine noise hits all three alike
            t_bare.append(best(bare, 1))
            t_gen.append(best(gen_score, 1))
            t_many.append(best(eight, 1))
        ratio_a = summary(np.array(t_gen) / np.array(t_bare))
        ratio_b = summary(np.array(t_many) / np.array(t_bare))
        times = f"{min(t_bare):>9.3f}s {min(t_gen):>9.3f}s"
        print(f"{framework:<10} {times} {ratio_a} {min(t_many):>9.3f}s {ratio_b}")


if __name__ == "__main__":
    main()
