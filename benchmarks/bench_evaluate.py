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

glibc's malloc thresholds are fixed first (see ``_allocator.py``). ``--default-allocator`` leaves them and
runs each of the two in a fresh process per round instead (one warm-up, then ``--passes`` timed calls, their
median), so that both meet glibc's states alike; ``--separately`` is then not available.

Run: python benchmarks/bench_evaluate.py [--n 3000] [--repeats 5] [--frameworks torch keras] [--separately]
     [--default-allocator [--passes 3]]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _allocator import fix_thresholds  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from _fresh import run_child  # noqa: E402

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


def arms(framework: str, n: int) -> tuple[dict[str, Callable[[], None]], list]:
    """The two timed calls, and the list that collects the reports of ``evaluate``."""
    model, shape = torch_model() if framework == "torch" else keras_model()
    data = datasets(n, shape)
    oods = {"ood_a": data["ood_a"], "ood_b": data["ood_b"]}
    reports: list = []

    def one_pass() -> None:
        for values in data.values():
            extract(model, values, ["penultimate"], batch_size=BATCH, with_head=True, progress=False)

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

    return {"extract": one_pass, "evaluate": run_evaluate, "separately": separately}, reports


def inside(reports: list) -> float:
    """evaluate's total time / the time of its own extraction passes, median over reports."""
    return float(np.median([r.timings["total"] / sum(r.timings["extract"].values()) for r in reports]))


Measured = tuple[list[float], list[float], float, str]  # extract times, evaluate times, inside, extra column


def in_one_process(framework: str, n: int, repeats: int, with_separately: bool) -> Measured:
    fns, reports = arms(framework, n)
    fns["extract"](), fns["evaluate"]()  # warm-up (allocator, graph tracing)
    reports.clear()
    t_pass, t_eval = [], []
    for _ in range(repeats):  # interleaved, so that machine noise hits both alike
        t_pass.append(timed(fns["extract"]))
        t_eval.append(timed(fns["evaluate"]))
    extra = f" {timed(fns['separately']):>10.3f}s" if with_separately else ""
    return t_pass, t_eval, inside(reports), extra


def child(arm: str, framework: str, n: int, count: int) -> None:
    """In a fresh process: one warm-up call of ``arm``, then ``count`` timed ones; prints their median."""
    fns, reports = arms(framework, n)
    fns[arm]()
    reports.clear()
    seconds = float(np.median([timed(fns[arm]) for _ in range(count)]))
    print(json.dumps({"seconds": seconds, "inside": inside(reports) if reports else None}))


def in_fresh_processes(framework: str, n: int, repeats: int, count: int) -> Measured:
    t_pass, t_eval, insides = [], [], []
    args = ["--frameworks", framework, "--n", str(n), "--passes", str(count)]
    for _ in range(repeats):
        t_pass.append(run_child(__file__, "extract", args)["seconds"])
        measured = run_child(__file__, "evaluate", args)
        t_eval.append(measured["seconds"])
        insides.append(measured["inside"])
    return t_pass, t_eval, float(np.median(insides)), ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000, help="samples per dataset")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frameworks", nargs="+", default=["torch"], choices=["torch", "keras"])
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc thresholds as they are, and run each call in a fresh process",
    )
    parser.add_argument("--passes", type=int, default=3, help="timed calls per fresh process")
    parser.add_argument("--separately", action="store_true", help="also time each detector on its own")
    parser.add_argument("--child", choices=["extract", "evaluate"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.frameworks[0], args.n, args.passes)
        return
    if args.default_allocator and args.separately:
        parser.error("--separately runs in one process; leave out --default-allocator")
    if args.default_allocator:
        print(
            f"allocator: as it is; each call in a fresh process ({args.passes} timed after a warm-up, median)"
        )
    else:
        print(fix_thresholds())
    print(f"4 datasets x {args.n} inputs of 28x28, batch {BATCH}, 10 detectors, {args.repeats} rounds")
    header = f"{'framework':<10} {'extract':>9} {'evaluate':>9} {'ratio':>7} {'inside':>7}"
    print(header + (f" {'separately':>11}" if args.separately else ""))
    for framework in args.frameworks:
        if args.default_allocator:
            t_pass, t_eval, within, extra = in_fresh_processes(framework, args.n, args.repeats, args.passes)
        else:
            t_pass, t_eval, within, extra = in_one_process(framework, args.n, args.repeats, args.separately)
        ratio = float(np.median(np.array(t_eval) / np.array(t_pass)))
        print(
            f"{framework:<10} {min(t_pass):>8.3f}s {min(t_eval):>8.3f}s {ratio:>7.3f} {within:>7.3f}{extra}"
        )


if __name__ == "__main__":
    main()
