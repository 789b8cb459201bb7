"""Cost of the detectors that need gradients or an edited forward, against their unavoidable passes.

For each method, on the torch toy convnet (28x28 inputs, batches of 128), ``detector.score(x)`` of a fitted
detector is timed against a bare torch loop over the same batches that runs only the passes the method cannot
do without, written by hand:

- a perturbed pass (ODIN, iODIN, AdaSCALE, MDSEns on one layer): a forward with the input requiring a
  gradient, the input gradient of a scalar of the logits (``torch.autograd.grad``), the step, and a second
  forward without gradients;
- a gradient pass with respect to layers (NAC): a forward whose hooks keep the layers' outputs, and their
  gradients of a scalar of the logits;
- edited forwards (RankFeat): one forward per block whose hook replaces the block's output by the output
  with its rank-1 part removed (``torch.linalg.svd``), the method's own unavoidable work;
- projected vector-Jacobian products (BLOOD): per projection, a forward keeping both layers' outputs and
  the gradient of ``Σ vᵀ h_after`` with respect to ``h_before``.

Everything else (the direction of the step, reductions, the score itself, copying to numpy) is the method's
overhead. Rounds are interleaved; each ratio is the median over rounds of the ratio within a round, with the
interquartile range in brackets (target <= 1.25).

Run: python benchmarks/bench_gradient_methods.py [--n 5000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _allocator import fix_thresholds  # noqa: E402 - benchmarks/ is on sys.path when run as a script

import oodscope  # noqa: E402
from oodscope.training import toy_convnet  # noqa: E402

BATCH = 128


def setup(n: int):
    import torch

    torch.manual_seed(0)
    model = toy_convnet((1, 28, 28), framework="torch").eval()
    x = np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)
    return torch, model, x


def batches(torch, x):
    for start in range(0, len(x), BATCH):
        yield torch.as_tensor(x[start : start + BATCH])


def perturbed_pass(torch, model, x, eps: float = 0.0014) -> Callable[[], None]:
    """Forward, input gradient, step, second forward: what every perturbation needs."""

    def run() -> None:
        for batch in batches(torch, x):
            batch = batch.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(batch).max(dim=1).values.sum(), batch)
            with torch.no_grad():
                model(batch.detach() - eps * grad.sign())

    return run


def layer_gradient_pass(torch, model, x, layers: list[str]) -> Callable[[], None]:
    """Forward keeping the layers' outputs, and their gradients of a scalar of the logits."""
    modules = dict(model.named_modules())

    def run() -> None:
        kept: list = []
        hooks = [modules[name].register_forward_hook(lambda m, i, o: kept.append(o)) for name in layers]
        try:
            for batch in batches(torch, x):
                kept.clear()
                logits = model(batch)
                torch.autograd.grad(logits.log_softmax(dim=1).mean(dim=1).sum(), kept)
        finally:
            for hook in hooks:
                hook.remove()

    return run


def edited_passes(torch, model, x, blocks: list[str]) -> Callable[[], None]:
    """One forward per block, with its output's rank-1 part removed."""
    modules = dict(model.named_modules())

    def remove_rank_one(module, inputs, output):
        m = output.flatten(2)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return (m - s[:, :1, None] * u[:, :, :1] @ vh[:, :1, :]).view_as(output)

    def run() -> None:
        with torch.no_grad():
            for block in blocks:
                hook = modules[block].register_forward_hook(remove_rank_one)
                try:
                    for batch in batches(torch, x):
                        model(batch)
                finally:
                    hook.remove()

    return run


def projected_passes(torch, model, x, before: str, after: str, k: int) -> Callable[[], None]:
    """One forward and backward per projection: the gradient of a random projection of ``after``'s output
    with respect to ``before``'s."""
    modules = dict(model.named_modules())

    def run() -> None:
        kept: dict = {}
        hooks = [
            modules[name].register_forward_hook(lambda m, i, o, name=name: kept.__setitem__(name, o))
            for name in (before, after)
        ]
        try:
            for index in range(k):
                v = None
                for batch in batches(torch, x):
                    model(batch)
                    if v is None:
                        v = torch.randn(kept[after].shape[1:], generator=torch.Generator().manual_seed(index))
                    torch.autograd.grad((kept[after] * v).sum(), kept[before])
        finally:
            for hook in hooks:
                hook.remove()

    return run


def methods(torch, model, x) -> dict[str, tuple[Callable[[], None], Callable[[], None], str]]:
    """``{name: (detector.score, bare loop of its unavoidable passes, what the passes are)}``."""
    fit = (x[:1024], np.arange(len(x[:1024])) % 10)  # labels for the methods that read them (MDSEns)
    options = {"batch_size": BATCH, "progress": False}
    perturbed = perturbed_pass(torch, model, x)
    found: dict[str, tuple[Callable[[], None], Callable[[], None], str]] = {}

    def add(name: str, detector, bare: Callable[[], None], passes: str, **fit_options) -> None:
        detector.fit(model, fit, **options, **fit_options)
        found[name] = (lambda: detector.score(x), bare, passes)

    add("ODIN", oodscope.ODIN(), perturbed, "forward + backward + forward")
    add("IODIN", oodscope.IODIN(), perturbed, "forward + backward + forward")
    if hasattr(oodscope, "AdaSCALE"):
        for variant in ("a", "l"):
            add(
                f"AdaSCALE-{variant.upper()}",
                oodscope.AdaSCALE(variant=variant),
                perturbed_pass(torch, model, x, eps=0.5),
                "forward + backward + forward",
            )
    if hasattr(oodscope, "MDSEns"):
        add("MDSEns", oodscope.MDSEns(), perturbed, "forward + backward + forward")
    if hasattr(oodscope, "NAC"):
        layers = ["pool1", "pool2", "penultimate"]
        bare = layer_gradient_pass(torch, model, x, ["pool1", "pool2", "dropout"])
        add("NAC (3 layers)", oodscope.NAC(layers=layers), bare, "forward + backward")
    if hasattr(oodscope, "RankFeat"):
        blocks = ["pool1", "pool2"]
        add(
            "RankFeat",
            oodscope.RankFeat(layers=blocks),
            edited_passes(torch, model, x, blocks),
            "2 edited forwards",
        )
    if hasattr(oodscope, "BLOOD"):
        add(
            "BLOOD (K=2)",
            oodscope.BLOOD(layers=["pool1", "pool2"], token=None, n_projections=2),
            projected_passes(torch, model, x, "pool1", "pool2", 2),
            "2 x (forward + backward)",
        )
    return found


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(ratios: np.ndarray) -> str:
    q25, median, q75 = np.percentile(ratios, [25, 50, 75])
    return f"{median:>6.3f} [{q25:.2f}-{q75:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(fix_thresholds())
    torch, model, x = setup(args.n)
    found = methods(torch, model, x)
    print(f"{args.n} inputs of 28x28, batch {BATCH}, torch toy convnet, {args.repeats} rounds")
    print(f"{'method':<16} {'passes':<30} {'bare':>8} {'score':>8}  ratio [IQR]")
    for name, (score, bare, passes) in found.items():
        score(), bare()  # warm-up
        times = np.array([(timed(score), timed(bare)) for _ in range(args.repeats)])
        print(
            f"{name:<16} {passes:<30} {times[:, 1].min():>7.3f}s {times[:, 0].min():>7.3f}s  "
            f"{summary(times[:, 0] / times[:, 1])}"
        )


if __name__ == "__main__":
    main()
