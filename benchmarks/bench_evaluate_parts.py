"""``oodscope.bench.evaluate`` with ten detectors against the sum of the work it cannot avoid.

The torch toy convnet (Conv32-Pool-Conv64-Pool-Flatten-Dropout-Dense10: logits [N, 10], penultimate layer
[N, 1600]) on random 28x28 inputs: a fit set of ``--n-fit`` labelled samples (random labels: Mahalanobis and
RMDS learn per class), an ID set of ``--n-id`` and two OOD sets ``ood_a``, ``ood_b`` of ``--n-ood`` each (by
default 10,000 / 5,000 / 5,000, the sizes of the issue's measurement; ``--scale`` multiplies all three, to run
tiny). ``evaluate(model, fit, id, {ood_a, ood_b}, [GEN, MLS, MSP, Energy, Entropy, ODIN, KNN, Mahalanobis,
RMDS, ViM])`` is timed beside the parts of its work that no implementation can skip, each a bare loop or a
single BLAS call, in the same interleaved rounds:

- ``forward``: one plain forward pass over each of the four datasets, as a bare torch loop under
  ``no_grad`` that copies the logits and the penultimate activations (read by a hook on the head) into
  preallocated numpy arrays. A bare loop rather than :func:`oodscope.extract`: the bound then holds no
  oodscope code at all, and the passes' own overhead shows in the breakdown below (``bench_overhead.py``
  measures it for a single detector);
- ``ODIN``: for each scored dataset (ID and both OOD sets), exactly ODIN's work per batch: a forward pass,
  the cross-entropy of the logits / T to the predicted class, its gradient with respect to the input, the
  input moved by eps times the gradient's sign, and a forward pass over the moved input;
- ``KNN GEMM``: the float32 similarities of every scored sample (ID and OOD: 15,000 queries) to every fit
  sample over the 1,600 features, computed in blocks of queries into one reused 32 MB buffer (an exact
  k-th neighbour search cannot do less than this product; the normalisation is not counted);
- ``scatter``: one float64 ``h.T @ h`` of the fit features [N, D], which numpy computes as a symmetric
  rank-k update (the covariance that Mahalanobis, RMDS and ViM all start from; counted once, since one
  can be shared by all three).

The list above leaves out work that scoring with the covariance detectors cannot skip either, so a second,
fuller bound adds it: per scored set, Mahalanobis's float64 whitening, a triangular product [M, D] x [D, D]
(BLAS ``trmm``), and ViM's projection [M, D] x [D, min(d, D - d)] on the smaller of its two bases (RMDS's
linear form, [M, D] x [D, 2K], is negligible); and ViM's D x D eigendecomposition.

Printed: each part, their sum, evaluate's time, and ``ratio`` = evaluate / sum of parts (target <= 1.25):
the median over rounds of the ratio within each round (times taken seconds apart, so the machine's
drifting speed cancels), with the interquartile range of the per-round ratios. Then where evaluate's time
over the bound goes, from ``Report.timings`` (median over rounds): its passes (the plain passes and the
ODIN pass of each dataset are timed together) against ``forward`` + ``ODIN``; each detector's fit + score
against its part (KNN against the GEMM, Mahalanobis + RMDS + ViM together against the scatter); the rest
(metric table, bookkeeping).

glibc's malloc thresholds are fixed first, as in the other benchmarks (see ``_allocator.py``). Detectors
run with ``errors="raise"``, so a failing detector stops the benchmark instead of making it look fast.

Run: python benchmarks/bench_evaluate_parts.py [--n-fit 10000] [--n-id 5000] [--n-ood 5000] [--scale 1]
     [--repeats 3] [--side 28]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from _allocator import fix_thresholds  # benchmarks/ is on sys.path when run as a script

from oodscope import GEN, KNN, MLS, MSP, ODIN, RMDS, Energy, Entropy, Mahalanobis, ViM
from oodscope.bench import evaluate
from oodscope.detectors.vim import vim_principal_dim
from oodscope.training import toy_convnet

BATCH = 128
TILE_BYTES = 32 << 20  # the KNN GEMM's reused similarity buffer
LOGIT_DETECTORS = ("GEN()", "MLS()", "MSP()", "Energy()", "Entropy()")
COVARIANCE_DETECTORS = ("Mahalanobis()", "RMDS()", "ViM()")


def ten_detectors() -> list:
    return [GEN(), MLS(), MSP(), Energy(), Entropy(), ODIN(), KNN(), Mahalanobis(), RMDS(), ViM()]


def datasets(n_fit: int, n_id: int, n_ood: int, side: int = 28) -> dict[str, np.ndarray]:
    """Inputs [N, 1, side, side] float32 by dataset name; the fit set's labels are under ``fit_labels``."""
    rng = np.random.default_rng(0)
    shape = (1, side, side)
    ood_b = rng.standard_normal((n_ood, *shape), dtype=np.float32)
    ood_b *= 0.5
    ood_b += 0.5
    return {
        "fit": rng.random((n_fit, *shape), dtype=np.float32),
        "fit_labels": rng.integers(0, 10, n_fit),
        "id": rng.random((n_id, *shape), dtype=np.float32),
        "ood_a": rng.random((n_ood, *shape), dtype=np.float32) ** 3,
        "ood_b": ood_b,
    }


class Parts:
    """The bare parts, with their outputs preallocated once (so that no timed part faults its memory in)."""

    def __init__(self, model, data: dict[str, np.ndarray]) -> None:
        import torch

        self.torch, self.model, self.data = torch, model, data
        self.inputs = {key: data[key] for key in ("fit", "id", "ood_a", "ood_b")}
        self.scored = ("id", "ood_a", "ood_b")
        odin = ODIN()
        self.temperature, self.eps = float(odin.temperature), float(odin.eps)
        n_classes, dim = model.head.out_features, model.head.in_features
        self.logits = {key: np.empty((len(x), n_classes), np.float32) for key, x in self.inputs.items()}
        self.penultimate = {key: np.empty((len(x), dim), np.float32) for key, x in self.inputs.items()}
        self.perturbed = {
            key: np.empty((len(self.inputs[key]), n_classes), np.float32) for key in self.scored
        }
        self.forward()  # the features the GEMMs multiply
        fit = self.penultimate["fit"]
        self.references = fit / np.linalg.norm(fit, axis=1, keepdims=True).clip(1e-12)
        self.queries = {key: self.penultimate[key] for key in self.scored}
        self.tile = np.empty((max(1, TILE_BYTES // (4 * len(fit))), len(fit)), np.float32)
        self.fit64 = fit.astype(np.float64)
        dim = fit.shape[1]
        rng = np.random.default_rng(0)
        self.triangle = np.asfortranarray(np.triu(rng.normal(size=(dim, dim))))  # a [D, D] whitening
        principal = vim_principal_dim(dim)
        self.vim_basis = rng.normal(size=(dim, min(principal, dim - principal)))  # ViM's smaller basis
        self.moment = np.cov(self.fit64[: 4 * dim], rowvar=False)

    def forward(self) -> None:
        torch, model = self.torch, self.model
        captured = []
        handle = model.head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            with torch.no_grad():
                for key, x in self.inputs.items():
                    for start in range(0, len(x), BATCH):
                        stop = start + BATCH
                        self.logits[key][start:stop] = model(torch.from_numpy(x[start:stop])).numpy()
                        self.penultimate[key][start:stop] = captured.pop().numpy()
        finally:
            handle.remove()

    def odin(self) -> None:
        torch, model = self.torch, self.model
        for key in self.scored:
            x = self.inputs[key]
            for start in range(0, len(x), BATCH):
                batch = torch.from_numpy(x[start : start + BATCH]).requires_grad_(True)
                logits = model(batch)
                loss = torch.nn.functional.cross_entropy(
                    logits / self.temperature, logits.detach().argmax(dim=1), reduction="sum"
                )
                (gradient,) = torch.autograd.grad(loss, batch)
                with torch.no_grad():
                    moved = batch.detach() - self.eps * gradient.sign()
                    self.perturbed[key][start : start + BATCH] = model(moved).numpy()

    def knn_gemm(self) -> None:
        rows = len(self.tile)
        for queries in self.queries.values():
            for start in range(0, len(queries), rows):
                block = queries[start : start + rows]
                np.matmul(block, self.references.T, out=self.tile[: len(block)])

    def scatter(self) -> None:
        self.fit64.T @ self.fit64

    def covariance_scoring(self) -> None:
        """The products scoring cannot skip: per scored set, the float64 triangular whitening [M, D] x
        [D, D] of Mahalanobis and ViM's projection on its smaller basis."""
        from scipy.linalg import blas

        for queries in self.queries.values():
            q64 = queries.astype(np.float64)
            blas.dtrmm(1.0, self.triangle, q64.T, lower=0, trans_a=1, overwrite_b=0)
            q64 @ self.vim_basis

    def eigh(self) -> None:
        """ViM's principal subspace: one D x D symmetric eigendecomposition."""
        np.linalg.eigh(self.moment)

    def extra(self) -> dict[str, Callable[[], None]]:
        """Work the issue's list of parts leaves out, timed for a second, fuller bound."""
        return {"covariance scoring": self.covariance_scoring, "eigh": self.eigh}

    def named(self) -> dict[str, Callable[[], None]]:
        return {
            "forward": self.forward,
            "ODIN": self.odin,
            "KNN GEMM": self.knn_gemm,
            "scatter": self.scatter,
        }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_evaluate(model, data: dict[str, np.ndarray]):
    return evaluate(
        model,
        (data["fit"], data["fit_labels"]),
        data["id"],
        {"ood_a": data["ood_a"], "ood_b": data["ood_b"]},
        ten_detectors(),
        batch_size=BATCH,
        progress=False,
        errors="raise",
    )


def summary(ratios: np.ndarray) -> str:
    """The median and, in brackets, the interquartile range of per-round ratios."""
    q25, median, q75 = np.percentile(ratios, [25, 50, 75])
    return f"{median:.3f} [{q25:.2f}-{q75:.2f}]"


def breakdown(reports: list, parts: dict[str, float]) -> list[tuple[str, float, str, float | None]]:
    """Rows (phase, seconds, the part it is compared with, seconds over that part), medians over reports."""

    def median(read: Callable[[dict], float]) -> float:
        return float(np.median([read(report.timings) for report in reports]))

    def work(names: tuple[str, ...]) -> Callable[[dict], float]:
        return lambda t: sum(t["fit"].get(name, 0.0) + t["score"].get(name, 0.0) for name in names)

    passes = median(lambda t: sum(t["extract"].values()))
    bound = parts["forward"] + parts["ODIN"]
    rows = [("passes (plain + ODIN)", passes, "forward + ODIN", passes - bound)]
    for name in ("ODIN()", "KNN()"):
        seconds = median(work((name,)))
        part = "KNN GEMM" if name == "KNN()" else ""
        rows.append((f"fit + score {name}", seconds, part, seconds - parts[part] if part else seconds))
    covariance = median(work(COVARIANCE_DETECTORS))
    rows.append(("fit + score Mahalanobis, RMDS, ViM", covariance, "scatter", covariance - parts["scatter"]))
    for name in COVARIANCE_DETECTORS:
        rows.append((f"  {name}", median(work((name,))), "", None))
    logit = median(work(LOGIT_DETECTORS))
    rows.append(("fit + score GEN, MLS, MSP, Energy, Entropy", logit, "", logit))
    rest = median(
        lambda t: t["total"] - sum(t["extract"].values()) - sum(t["fit"].values()) - sum(t["score"].values())
    )
    rows.append(("metric table and bookkeeping", rest, "", rest))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-fit", type=int, default=10_000)
    parser.add_argument("--n-id", type=int, default=5_000)
    parser.add_argument("--n-ood", type=int, default=5_000, help="samples in each of the two OOD sets")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the three sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--side", type=int, default=28, help="input side (28: penultimate 1600-D; 12: 64-D, for quick runs)"
    )
    args = parser.parse_args()
    n_fit, n_id, n_ood = (max(BATCH, round(n * args.scale)) for n in (args.n_fit, args.n_id, args.n_ood))
    print(fix_thresholds().split(";")[0])  # this script has no --default-allocator

    import torch

    torch.manual_seed(0)
    model = toy_convnet((1, args.side, args.side), framework="torch").eval()
    data = datasets(n_fit, n_id, n_ood, args.side)
    parts = Parts(model, data)
    fns, extra = parts.named(), parts.extra()
    # ViM needs more fit samples than its principal subspace has dimensions (512 for 1600-D)
    small = datasets(min(n_fit, 8 * BATCH), min(n_id, 2 * BATCH), min(n_ood, 2 * BATCH), args.side)
    run_evaluate(model, small)  # warm-up: thread pools, allocator, first-call costs
    for fn in [*fns.values(), *extra.values()]:
        fn()

    times: dict[str, list[float]] = {name: [] for name in [*fns, *extra, "evaluate"]}
    reports = []
    for _ in range(args.repeats):  # interleaved, so that the machine's speed hits parts and evaluate alike
        for name, fn in [*fns.items(), *extra.items()]:
            times[name].append(timed(fn))
        start = time.perf_counter()
        reports.append(run_evaluate(model, data))
        times["evaluate"].append(time.perf_counter() - start)
    seconds = {name: np.array(values) for name, values in times.items()}
    total_parts = sum(seconds[name] for name in fns)

    dim = model.head.in_features
    print(
        f"fit {n_fit:,} (labelled), ID {n_id:,}, 2 OOD sets x {n_ood:,}; {args.side}x{args.side} inputs, "
        f"batch {BATCH}; penultimate {dim}-D; 10 detectors; {args.repeats} rounds (median seconds)"
    )
    labels = {
        "forward": f"forward (bare torch loop, 4 datasets, {n_fit + n_id + 2 * n_ood:,} inputs)",
        "ODIN": f"ODIN fwd+bwd+fwd (bare torch loop, {n_id + 2 * n_ood:,} inputs)",
        "KNN GEMM": f"KNN GEMM float32 ({n_id + 2 * n_ood:,} x {n_fit:,} x {dim})",
        "scatter": f"scatter GEMM float64 (h.T @ h, [{n_fit:,}, {dim}])",
    }
    medians = {name: float(np.median(values)) for name, values in seconds.items()}
    for name in fns:
        print(f"  {labels[name]:<62} {medians[name]:>8.3f}")
    print(f"  {'sum of parts':<62} {float(np.median(total_parts)):>8.3f}")
    print(f"  {'evaluate':<62} {medians['evaluate']:>8.3f}")
    print(f"ratio evaluate / sum of parts: {summary(seconds['evaluate'] / total_parts)} (target <= 1.25)")
    fuller = total_parts + sum(seconds[name] for name in extra)
    for name, label in (
        ("covariance scoring", f"+ Mahalanobis/RMDS/ViM scoring products ({n_id + 2 * n_ood:,} rows)"),
        ("eigh", f"+ ViM's eigendecomposition ({dim} x {dim})"),
    ):
        print(f"  {label:<62} {medians[name]:>8.3f}")
    print(f"ratio evaluate / fuller bound (parts + the two above): {summary(seconds['evaluate'] / fuller)}")
    print("where evaluate's time goes (Report.timings, median seconds):")
    print(f"  {'phase':<44} {'seconds':>8}  {'against':<15} {'over':>8}")
    for phase, value, part, over in breakdown(reports, medians):
        over_text = "" if over is None else f"{over:>8.3f}"
        print(f"  {phase:<44} {value:>8.3f}  {part:<15} {over_text}")


if __name__ == "__main__":
    main()
