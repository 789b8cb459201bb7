"""Overhead of oodscope's model passes over a bare forward loop, for a torch and a Keras toy convnet.

Prints, per framework, on 10,000 random 28x28 inputs in batches of 128:

(a) ``GEN().fit(model).score(x)`` time / a bare loop of ``model(x)`` over the same batches (target <= 1.05);
(b) one ``extract`` (logits + penultimate + head) followed by fit+score of the five logit detectors and the
    three shaping variants on the cached Features, / one bare pass (target <= 1.3).

The three are run in interleaved rounds. Each ratio is the median over rounds of the ratio within a round
(times taken seconds apart, so that the machine's drifting speed cancels out), followed by the interquartile
range of the per-round ratios in brackets; the best times over all rounds are printed beside them, and the
median page faults of one pass below. On a 2-core virtual machine a single torch pass varies by +-15% from one
to the next, hence the many rounds.

glibc's malloc state decides whether a torch pass faults in its activations again at every batch (half its
time; see ``_allocator.py``), and that state depends on everything the process did before. Two ways to keep it
from deciding the ratios:

- by default, glibc's thresholds are fixed in this process, so that no pass faults; the bare loop then runs
  at its fastest and a ratio to it is the strictest;
- ``--default-allocator`` leaves glibc as it is and runs every pass of a round in a fresh process instead, so
  that each of the three meets glibc's states as often as the others (``--passes`` timed passes per process,
  their median, after one warm-up pass). In one process the ratio would compare two states of the allocator
  rather than two pieces of code.

Run: python benchmarks/bench_overhead.py [--n 10000] [--repeats R] [--frameworks torch keras]
     [--default-allocator [--passes 3]]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _allocator import fix_thresholds  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from _fresh import run_child  # noqa: E402

from oodscope import ASH, GEN, MLS, MSP, SCALE, Energy, Entropy, ReAct, extract  # noqa: E402
from oodscope.training import toy_convnet  # noqa: E402

BATCH = 128
ARMS = ("bare", "gen", "eight")


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


def passes(framework: str, n: int, arms: tuple[str, ...] = ARMS) -> dict[str, Callable[[], None]]:
    """The timed passes over the same model and inputs, by arm; only the arms asked for are set up."""
    model, x, bare = (torch_setup if framework == "torch" else keras_setup)(n)
    fns: dict[str, Callable[[], None]] = {}
    if "bare" in arms:
        fns["bare"] = bare
    if "gen" in arms:
        gen = GEN().fit(model, batch_size=BATCH, progress=False)
        fns["gen"] = lambda: gen.score(x)
    if "eight" in arms:
        fns["eight"] = lambda: many_detectors(model, x)
    return fns


def timed(fn: Callable[[], None]) -> tuple[float, int]:
    """Seconds and minor page faults of one call."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def in_one_process(framework: str, n: int, rounds: int) -> dict[str, list[tuple[float, int]]]:
    fns = passes(framework, n)
    for fn in fns.values():  # warm-up (graph tracing, allocator)
        fn()
    results: dict[str, list[tuple[float, int]]] = {arm: [] for arm in fns}
    for _ in range(rounds):  # interleaved, so that machine noise hits all three alike
        for arm, fn in fns.items():
            results[arm].append(timed(fn))
    return results


def child(arm: str, framework: str, n: int, count: int) -> None:
    """Run in a fresh process: one warm-up pass, then ``count`` timed ones; prints their median as JSON."""
    fn = passes(framework, n, (arm,))[arm]
    fn()
    runs = [timed(fn) for _ in range(count)]
    seconds, faults = np.median([s for s, _ in runs]), np.median([f for _, f in runs])
    print(json.dumps({"seconds": float(seconds), "faults": int(faults)}))


def in_fresh_processes(framework: str, n: int, rounds: int, count: int) -> dict[str, list[tuple[float, int]]]:
    results: dict[str, list[tuple[float, int]]] = {arm: [] for arm in ARMS}
    for _ in range(rounds):
        for arm in ARMS:
            args = ["--frameworks", framework, "--n", str(n), "--passes", str(count)]
            measured = run_child(__file__, arm, args)
            results[arm].append((measured["seconds"], measured["faults"]))
    return results


def summary(ratios: np.ndarray) -> str:
    """The median and, in brackets, the interquartile range of per-round ratios."""
    q25, median, q75 = np.percentile(ratios, [25, 50, 75])
    return f"{median:>10.3f} [{q25:.2f}-{q75:.2f}]"  # 22 characters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, help="default: 21 in one process, 9 in fresh processes")
    parser.add_argument("--frameworks", nargs="+", default=["torch", "keras"])
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc thresholds as they are, and run each pass in a fresh process",
    )
    parser.add_argument("--passes", type=int, default=3, help="timed passes per fresh process")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.frameworks[0], args.n, args.passes)
        return
    if args.default_allocator:
        rounds = args.repeats or 9
        print(
            f"allocator: as it is; each pass in a fresh process ({args.passes} timed passes after a warm-up, "
            "their median)"
        )
    else:
        rounds = args.repeats or 21
        print(fix_thresholds())
    print(f"{args.n} inputs of 28x28, batch {BATCH}, {rounds} rounds (best times, median ratios [IQR])")
    columns = ("bare pass", "GEN.score", "ratio (a) [IQR]", "extract+8", "ratio (b) [IQR]")
    widths = (10, 10, 22, 10, 22)
    print(f"{'framework':<10} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    faults = []
    for framework in args.frameworks:
        if args.default_allocator:
            results = in_fresh_processes(framework, args.n, rounds, args.passes)
        else:
            results = in_one_process(framework, args.n, rounds)
        seconds = {arm: np.array([s for s, _ in runs]) for arm, runs in results.items()}
        ratio_a = summary(seconds["gen"] / seconds["bare"])
        ratio_b = summary(seconds["eight"] / seconds["bare"])
        times = f"{seconds['bare'].min():>9.3f}s {seconds['gen'].min():>9.3f}s"
        print(f"{framework:<10} {times} {ratio_a} {seconds['eight'].min():>9.3f}s {ratio_b}")
        medians = (f"{arm} {int(np.median([f for _, f in runs])):,}" for arm, runs in results.items())
        faults.append(f"  {framework}: {', '.join(medians)}")
    print("page faults per pass (median):", *faults, sep="\n")


if __name__ == "__main__":
    main()
