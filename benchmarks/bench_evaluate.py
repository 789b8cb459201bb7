"""Cost of ``oodscope.bench.evaluate`` with ten detectors, relative to one extraction pass over the same data.

A toy convnet (Conv32-Pool-Conv64-Pool-Flatten-Dropout-Dense10) on random 28x28 inputs: a fit set, an ID set
and two OOD sets of ``--n`` samples each, batches of 128. Side by side in one run, in ``--repeats``
interleaved rounds (best times over the rounds; each ratio is the median over rounds of the ratio within a
round, which cancels the machine's drifting speed):

- ``extract``: one :func:`oodscope.extract` pass (logits, penultimate layer, head weights) over each of the
  four datasets -- the passes ``evaluate`` cannot avoid;
- ``evaluate``: ``evaluate(model, fit, id, {ood_a, ood_b}, ten detectors)`` -- those passes, plus fitting
  and scoring the ten detectors on the cached features, plus the metric table;
- ``ratio`` = evaluate / extract (target <= 1.3);
- ``inside``: evaluate's total time / the time of its own extraction passes (from ``Report.timings``, so
  within one call: less sensitive to a busy machine than the ratio of two separate calls);
- ``separately`` (context, with ``--separately``): each detector's own ``fit(model, fit)`` and
  ``score(data)``, i.e. a pass per detector and dataset.

glibc's malloc thresholds are fixed first (see ``_allocator.py``); ``--default-allocator`` leaves them.

Run: python benchmarks/bench_evaluate.py [--n 3000] [--repeats 5] [--frameworks torch keras] [--separately]
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
from oodscope.bench import evaluate  # noqa: E402
from oodscope.training import toy_convnet  # noqa: E402

BATCH = 128


def ten_detectors() -> list:
    return [GEN(), MSP(), MLS(), Energy(), Entropy(), GEN(gamma=0.5), ReAct(), ASH(), SCALE(), ReAct(GEN())]


def torch_model():
    import torch

    torch.manual_seed(0)
    return toy_convnet((1, 28, 28), framework="torch"), (1, 28, 28)


def keras_model():
    import keras

    keras.utils.set_random_seed(0)
    return toy_convnet((28, 28, 1), framework="keras"), (28, 28, 1)


def datasets(n: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "fit": rng.random((n, *shape), dtype=np.float32),
        "id": rng.random((n, *shape), dtype=np.float32),
        "ood_a": rng.random((n, *shape), dtype=np.float32) ** 3,
        "ood_b": rng.normal(0.5, 0.5, (n, *shape)).astype(np.float32),
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(framework: str, n: int, repeats: int, with_separately: bool) -> str:
    model, shape = torch_model() if framework == "torch" else keras_model()
    data = datasets(n, shape)
    oods = {"ood_a": data["ood_a"], "ood_b": data["ood_b"]}

    def one_pass() -> None:
        for values in data.values():
            extract(model, values, ["penultimate"], batch_size=BATCH, with_head=True, progress=False)

    reports = []

    def run_evaluate() -> None:
        detectors = ten_detectors()
        reports.append(
            evaluate(model, data["fit"], data["id"], oods, detectors, batch_size=BATCH, progress=False)
        )

    def separately() -> None:
        for detector in ten_detectors():
            detector.fit(model, data["fit"], batch_size=BATCH, progress=False)
            for key in ("id", "ood_a", "ood_b"):
                detector.score(data[key])

    one_pass(), run_evaluate()  # warm-up (allocator, graph tracing)
    reports.clear()
    t_pass, t_eval = [], []
    for _ in range(repeats):  # interleaved, so that machine noise hits both alike
        t_pass.append(timed(one_pass))
        t_eval.append(timed(run_evaluate))
    ratio = float(np.median(np.array(t_eval) / np.array(t_pass)))
    inside = float(np.median([r.timings["total"] / sum(r.timings["extract"].values()) for r in reports]))
    line = f"{framework:<10} {min(t_pass):>8.3f}s {min(t_eval):>8.3f}s {ratio:>7.3f} {inside:>7.3f}"
    if with_separately:
        line += f" {timed(separately):>10.3f}s"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000, help="samples per dataset")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frameworks", nargs="+", default=["torch"], choices=["torch", "keras"])
    parser.add_argument(
        "--default-allocator", action="store_true", help="leave glibc's malloc thresholds as they are"
    )
    parser.add_argument("--separately", action="store_true", help="also time each detector on its own")
    args = parser.parse_args()
    print("allocator: as it is" if args.default_allocator else fix_thresholds())
    print(f"4 datasets x {args.n} inputs of 28x28, batch {BATCH}, 10 detectors, {args.repeats} rounds")
    header = f"{'framework':<10} {'extract':>9} {'evaluate':>9} {'ratio':>7} {'inside':>7}"
    print(header + (f" {'separately':>11}" if args.separately else ""))
    for framework in args.frameworks:
        print(bench(framework, args.n, args.repeats, args.separately))


if __name__ == "__main__":
    main()
