"""Peak memory of ``oodscope.bench.evaluate``: it must grow with one dataset's features, not with all of them.

``evaluate`` scores each dataset as soon as its passes are done and then releases its features, so that
memory holds one dataset's activations at a time (plus what the fitted detectors keep). This checks it on
the torch toy convnet (logits [N, 10] and penultimate [N, 1600], float32: 6,440 bytes of features per sample)
with the same random data and ten detectors as ``bench_evaluate_parts.py`` (GEN, MLS, MSP, Energy, Entropy,
ODIN, KNN, Mahalanobis, RMDS, ViM; ``--no-odin`` leaves ODIN out, whose gradient passes are the slowest part
and hold no features of their own beyond logits).

What is scaled, and why: KNN keeps its fit vectors by design, and Mahalanobis, RMDS and ViM hold fit-sized
temporaries while they fit, so a larger fit set grows the peak by fit-sized amounts that say nothing about
whether scored datasets are released. So the fit and ID sets keep their sizes (``--n-fit``, ``--n-id``) and
only the OOD sets are scaled, each having ``--n-ood`` samples at 1x. Three runs, each ``evaluate`` in a
fresh subprocess (so that no run inherits another's heap):

- ``1x``: both OOD sets at ``--n-ood``;
- ``4x one``: ``ood_a`` at 4x, ``ood_b`` at 1x;
- ``4x``: both OOD sets at 4x.

In each child the data is built and ``evaluate`` runs once on a few samples (libraries imported on first
use, thread pools and the framework's one-time allocations are not evaluate's memory for the data). Then
the resident memory is read (``VmRSS``), the kernel's high-water mark is reset (``/proc/self/clear_refs``;
where that is refused, ``ru_maxrss`` is used instead), ``evaluate`` runs, and the high-water mark
``VmHWM`` is read, with ``VmRSS`` while the Report is still alive.

Two measures of each run, side by side:

- RSS (what the operating system sees): the process's peak, evaluate's peak above its start (``VmHWM``
  minus the resident memory before it: the inputs, the model, the interpreter and its libraries are not
  evaluate's) and what stays resident after it with the Report alive;
- numpy (``tracemalloc``, started just before evaluate; numpy reports its array buffers to it, torch's own
  allocations it does not see): the peak of the arrays alive at once, and those still alive after it. This
  is what evaluate holds, without the allocator: glibc keeps freed blocks resident (in the heap and in the
  arenas of other threads, e.g. KNN's search threads), so RSS after a large dataset stays above what is
  alive, and a later dataset may not reuse it all.

The growth of evaluate's peak from 1x to 4x is divided by the growth of one dataset's features (one OOD
set from 1x to 4x: 3 x n_ood x 6,440 bytes) and by the growth of all datasets' features (both OOD sets:
twice that). The requirement reads from these and from the ``4x one`` run:

- ``extra for the second set`` = (peak at 4x - peak at 4x one) / one dataset's growth: about 0 when each
  dataset's features are released once it is scored (the peak is reached while one set is being scored,
  whichever it is), about 1 or more when the first OOD set's features are still held while the second is
  scored;
- ``growth / one dataset`` is then how many copies of one dataset's features the peak holds per sample (the
  features themselves plus the scoring temporaries of the detectors, e.g. float64 copies);
- ``kept after / one dataset``: about 0 when only scores are kept (10 detectors x 8 bytes per sample, 1.2%
  of the features), 1 or more when features outlive evaluate.

glibc's allocator is left as it is, as in a user's process (the timing benchmarks fix its thresholds so that
freed memory stays resident, which here would hide what is released).

Run: python benchmarks/bench_memory.py [--n-fit 10000] [--n-id 5000] [--n-ood 5000] [--scale 1] [--side 28]
     [--no-odin]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tracemalloc

import numpy as np
from _fresh import run_child  # benchmarks/ is on sys.path when run as a script

BATCH = 128
N_CLASSES = 10
RUNS = {"1x": (1, 1), "4x one": (4, 1), "4x": (4, 4)}  # (ood_a, ood_b) multiples of --n-ood


def detectors(with_odin: bool) -> list:
    from oodscope import GEN, KNN, MLS, MSP, ODIN, RMDS, Energy, Entropy, Mahalanobis, ViM

    chosen = [GEN(), MLS(), MSP(), Energy(), Entropy(), ODIN(), KNN(), Mahalanobis(), RMDS(), ViM()]
    return [detector for detector in chosen if with_odin or not isinstance(detector, ODIN)]


def status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as lines:
        for line in lines:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> bool:
    """Reset the kernel's high-water mark of resident memory to the current RSS; False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def penultimate_dim(side: int) -> int:
    """The toy convnet's penultimate width on side x side inputs (64 channels of the second pooled map)."""
    pooled = ((side - 2) // 2 - 2) // 2
    return 64 * pooled * pooled


def inputs(rng: np.random.Generator, n: int, side: int, cube: bool = False) -> np.ndarray:
    values = rng.random((n, 1, side, side), dtype=np.float32)
    if cube:
        values **= 3  # in place: no second array
    return values


def child(n_fit: int, n_id: int, n_a: int, n_b: int, side: int, with_odin: bool) -> None:
    """In a fresh process: evaluate once and print its memory as JSON."""
    import torch

    from oodscope.bench import evaluate
    from oodscope.training import toy_convnet

    torch.manual_seed(0)
    model = toy_convnet((1, side, side), framework="torch").eval()
    rng = np.random.default_rng(0)
    fit = (inputs(rng, n_fit, side), rng.integers(0, N_CLASSES, n_fit))
    data = {
        "id": inputs(rng, n_id, side),
        "ood_a": inputs(rng, n_a, side, cube=True),
        "ood_b": inputs(rng, n_b, side),
    }

    def run(fit, data):
        oods = {"ood_a": data["ood_a"], "ood_b": data["ood_b"]}
        chosen = detectors(with_odin)
        return evaluate(
            model, fit, data["id"], oods, chosen, batch_size=BATCH, progress=False, errors="raise"
        )

    # warm-up on a few samples: the libraries evaluate imports on first use, thread pools, the framework's
    # one-time allocations -- none of which is evaluate's memory for the data
    run((fit[0][: 2 * BATCH], fit[1][: 2 * BATCH]), {key: values[:BATCH] for key, values in data.items()})
    gc.collect()
    tracemalloc.start()
    before = status()["VmRSS"]
    reset = reset_peak()
    report = run(fit, data)
    gc.collect()
    after = status()
    numpy_kept, numpy_peak = tracemalloc.get_traced_memory()
    peak = after["VmHWM"] if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert len(report.ood_scores) == len(detectors(with_odin))
    measured = {"before": before, "peak": peak, "after": after["VmRSS"], "reset": reset}
    print(json.dumps({**measured, "numpy_peak": numpy_peak, "numpy_kept": numpy_kept}))


def mb(value: float) -> str:
    return f"{value / 2**20:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-fit", type=int, default=10_000)
    parser.add_argument("--n-id", type=int, default=5_000)
    parser.add_argument("--n-ood", type=int, default=5_000, help="samples in each OOD set at 1x")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the three sizes")
    parser.add_argument(
        "--side", type=int, default=28, help="input side (28: penultimate 1600-D; 12: 64-D, for quick runs)"
    )
    parser.add_argument("--no-odin", action="store_true", help="leave ODIN out (its passes are the slowest)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n_a, n_b = (int(value) for value in args.child.split(","))
        child(args.n_fit, args.n_id, n_a, n_b, args.side, not args.no_odin)
        return
    if not sys.platform.startswith("linux"):
        parser.error("this benchmark reads /proc/self/status (Linux only)")
    n_fit, n_id, n_ood = (max(BATCH, round(n * args.scale)) for n in (args.n_fit, args.n_id, args.n_ood))
    shared = ["--n-fit", str(n_fit), "--n-id", str(n_id), "--side", str(args.side)]
    shared += ["--no-odin"] if args.no_odin else []
    measured = {}
    for name, (a, b) in RUNS.items():
        measured[name] = run_child(__file__, f"{a * n_ood},{b * n_ood}", shared)
    count = 9 if args.no_odin else 10
    dim = penultimate_dim(args.side)
    feature_bytes = 4 * (N_CLASSES + dim)  # float32 logits + penultimate, per sample
    print(
        f"fit {n_fit:,} (labelled), ID {n_id:,}, 2 OOD sets of {n_ood:,} at 1x; {args.side}x{args.side} "
        f"inputs; {count} detectors; features {feature_bytes:,} bytes per sample (float32 logits + {dim}-D "
        "penultimate)"
    )
    if not all(values["reset"] for values in measured.values()):
        print("(the kernel refused to reset the high-water mark: RSS peaks are ru_maxrss)")

    def rss(name: str, key: str = "peak") -> int:
        """evaluate's resident memory above its start: at the peak, or left after it ("after")."""
        return measured[name][key] - measured[name]["before"]

    def traced(name: str, key: str = "peak") -> int:
        return measured[name][f"numpy_{key}"]

    header = ("run", "ood_a", "ood_b", "peak RSS", "eval. peak", "kept after", "numpy peak", "numpy kept")
    print(f"  {header[0]:<8} {header[1]:>7} {header[2]:>7} " + " ".join(f"{h:>11}" for h in header[3:]))
    for name, (a, b) in RUNS.items():
        values = [mb(measured[name]["peak"]), mb(rss(name)), mb(rss(name, "after"))]
        values += [mb(traced(name)), mb(traced(name, "kept"))]
        print(f"  {name:<8} {a * n_ood:>7,} {b * n_ood:>7,} " + " ".join(f"{v:>11}" for v in values))

    one = 3 * n_ood * feature_bytes  # one OOD set's features, 1x to 4x
    every = 2 * one  # both OOD sets' features (the fit and ID sets do not change)
    print(f"one dataset's features grow by {mb(one)} from 1x to 4x, all datasets' features by {mb(every)}")
    print(
        f"growth of evaluate's peak from 1x to 4x: {mb(rss('4x') - rss('1x'))} RSS, "
        f"{mb(traced('4x') - traced('1x'))} numpy"
    )

    def ratio(name: str, of_rss: float, of_numpy: float, note: str = "") -> None:
        print(f"ratio {name}: {of_rss:.3f} RSS, {of_numpy:.3f} numpy{note}")

    ratio("growth / one dataset", (rss("4x") - rss("1x")) / one, (traced("4x") - traced("1x")) / one)
    ratio("growth / all datasets", (rss("4x") - rss("1x")) / every, (traced("4x") - traced("1x")) / every)
    ratio(
        "extra for the second set",
        (rss("4x") - rss("4x one")) / one,
        (traced("4x") - traced("4x one")) / one,
        " (about 0 when released)",
    )
    ratio(
        "kept after / one dataset",
        (rss("4x", "after") - rss("1x", "after")) / one,
        (traced("4x", "kept") - traced("1x", "kept")) / one,
        " (about 0 when only scores are kept)",
    )


if __name__ == "__main__":
    main()
