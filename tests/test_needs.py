"""Needs as data: detectors that read gradients or an edited forward are served by the planner, on torch
and on Keras (whichever Keras backend runs the tests), and share their passes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from oodscope import GEN, ODIN, Features, bind, evaluate, extract
from oodscope.detectors import Detector
from oodscope.detectors.energy import energy_score
from oodscope.losses import KLToUniform, MaxLogit
from oodscope.needs import LOGITS, FromPass, Gradient, GradientOf, Needs, PassKind, Perturbation, Unperturbed
from oodscope.plan import Plan


class GradientNorm(Detector):
    """L1 norm of the gradient of KL(uniform || softmax) with respect to the penultimate features."""

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def needs(self, layers=None):
        return dataclasses.replace(super().needs(layers), gradient=Gradient(KLToUniform(), ("penultimate",)))

    def _score(self, features):
        return self.scale * np.abs(features.layer(GradientOf("penultimate"))).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class Clip:
    """An edit: clip a layer's output from above, on any framework."""

    value: float

    def __call__(self, tensor, ops):
        return ops.minimum(tensor, self.value)


class ClippedEnergy(Detector):
    """Energy of the logits of a forward whose penultimate features are clipped at ``value``."""

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def needs(self, layers=None):
        return dataclasses.replace(super().needs(layers), edits={"penultimate": Clip(float(self.value))})

    def _score(self, features):
        return energy_score(features.logits)


def torch_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    return model, np.random.default_rng(0).normal(size=(20, 1, 3, 4)).astype(np.float32)


def keras_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3, 4, 1))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    return model, np.random.default_rng(0).normal(size=(20, 3, 4, 1)).astype(np.float32)


CASES = [torch_model, keras_model]


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_a_gradient_need_gives_the_gradient_as_features(case):
    model, x = case()
    plain = extract(model, x, ["penultimate"], with_head=True)
    p = np.exp(plain.logits - plain.logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # d/dh of -mean_c log softmax(W h + b)_c is W^T (p - 1/C): by hand from the plain pass
    expected = (p - 1.0 / p.shape[1]) @ plain.head_weight
    result = GradientNorm(scale=2.0).fit(model).score(x, batch_size=7)
    np.testing.assert_allclose(result.scores, 2.0 * np.abs(expected).sum(axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.info["logits"], plain.logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reads a forward pass with gradients of KLToUniform"):
        GradientNorm().score(plain)


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_an_edit_need_gives_the_edited_forward(case):
    model, x = case()
    plain = extract(model, x, ["penultimate"], with_head=True)
    clipped = np.minimum(plain.layer("penultimate"), 0.3) @ plain.head_weight.T + plain.head_bias
    result = ClippedEnergy(value=0.3).fit(model).score(x)
    np.testing.assert_allclose(result.info["logits"], clipped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.scores, energy_score(clipped), rtol=1e-5)
    assert np.abs(clipped - plain.logits).max() > 1e-2, "the edit changed the logits"


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_evaluate_serves_every_kind_of_need_from_one_pass_per_kind(case):
    model, x = case()
    detectors = {
        "gen": GEN(),
        "grad": GradientNorm(),
        "grad x3": GradientNorm(scale=3.0),
        "clip": ClippedEnergy(value=0.3),
        "odin": ODIN(temperature=10.0, eps=0.01),
    }
    report = evaluate(model, None, x[:10], {"rest": x[10:]}, detectors, batch_size=5)
    assert not report.errors
    for name, detector in detectors.items():  # each as its own run would score
        alone = detector.fit(model).score(x[10:], batch_size=5).scores
        np.testing.assert_allclose(report.ood_scores[name]["rest"], alone, rtol=1e-6)
    np.testing.assert_allclose(report.ood_scores["grad x3"]["rest"], 3 * report.ood_scores["grad"]["rest"])


def test_the_plan_groups_detectors_by_the_kind_of_pass():
    plan = Plan(None)
    for name, detector in {
        "gen": GEN(),
        "msp-like": ODIN(eps=0.0),  # eps=0: the plain pass
        "grad": GradientNorm(),
        "grad x3": GradientNorm(scale=3.0),  # the same loss: the same gradient pass
        "clip": ClippedEnergy(value=0.3),
        "clip again": ClippedEnergy(value=0.3),  # equal edits (a frozen dataclass): the same pass
        "clip other": ClippedEnergy(value=0.5),
        "odin": ODIN(eps=0.01),
    }.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 5
    assert Needs().kind() == PassKind() and str(PassKind()) == "a plain forward pass"


def test_a_gradient_or_an_edit_of_a_missing_layer_is_an_error_before_any_pass():
    model, x = torch_model()

    class Broken(GradientNorm):
        def needs(self, layers=None):
            return dataclasses.replace(super().needs(layers), gradient=Gradient(MaxLogit(), ("nope",)))

    report = evaluate(bind(model, batch_size=5), None, x, {"same": x}, [Broken(), GEN()])
    assert [(e["detector"], e["stage"]) for e in report.errors] == [("Broken()", "extract")]
    assert "no layer 'nope'" in report.errors[0]["error"]
    assert isinstance(Features(logits=np.zeros((1, 2))).pass_kind, type(None))


class Shift(Detector):
    """How far a perturbation moved the penultimate features: ``‖h(x̃) − h(x)‖``, reading the layer before
    the perturbation as ``Unperturbed``."""

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self, eps: float = 0.1) -> None:
        self.eps = eps

    def needs(self, layers=None):
        move = Perturbation(loss=MaxLogit(), step=float(self.eps))
        return Needs(layers=("penultimate", Unperturbed("penultimate")), perturbation=move)

    def _score(self, features):
        moved = features.layer("penultimate") - features.layer(Unperturbed("penultimate"))
        return np.linalg.norm(moved, axis=1)


@dataclasses.dataclass(frozen=True)
class Zero:
    """An edit: a layer's output set to zero."""

    def __call__(self, tensor, ops):
        return tensor * 0.0


class TwoPasses(Detector):
    """The largest of the plain logits plus those of a pass with the penultimate features clipped: a
    detector that reads three passes (one of them for nothing but the test)."""

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self) -> None:
        pass

    def needs(self, layers=None):
        return Needs(
            also={
                "clipped": Needs(edits={"penultimate": Clip(0.3)}),
                "zeroed": Needs(edits={"penultimate": Zero()}),
            }
        )

    def _score(self, features):
        return (features.logits + features.layer(FromPass("clipped", LOGITS))).max(axis=1)


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_a_perturbed_pass_also_gives_the_layer_before_the_perturbation(case):
    model, x = case()
    before = extract(model, x, ["penultimate"]).layer("penultimate")
    plan = Plan(bind(model, batch_size=7), strict=True)
    plan.add("shift", Shift(eps=0.1).needs())
    got = plan.features(x)["shift"]
    np.testing.assert_allclose(got.layer(Unperturbed("penultimate")), before, rtol=1e-6)
    after = got.layer("penultimate")
    assert np.abs(after - before).max() > 1e-3, "the perturbation moved the inputs"
    result = Shift(eps=0.1).fit(model).score(x, batch_size=7)
    np.testing.assert_allclose(result.scores, np.linalg.norm(after - before, axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="Unperturbed keys need Needs\\(perturbation"):
        Plan(None).add("bad", Needs(layers=(Unperturbed("penultimate"),)))


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_a_detector_reads_other_passes_which_it_shares_with_other_detectors(case):
    model, x = case()
    plain = extract(model, x, ["penultimate"], with_head=True)
    clipped = np.minimum(plain.layer("penultimate"), 0.3) @ plain.head_weight.T + plain.head_bias
    result = TwoPasses().fit(model).score(x, batch_size=7)
    np.testing.assert_allclose(result.scores, (plain.logits + clipped).max(axis=1), rtol=1e-5)

    plan = Plan(bind(model, batch_size=7))
    for name, detector in {"two": TwoPasses(), "clip": ClippedEnergy(value=0.3), "gen": GEN()}.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 3 and plan.names == ["two", "clip", "gen"]  # plain, clipped, zeroed
    views = plan.features(x)
    np.testing.assert_allclose(views["two"].layer(FromPass("clipped", LOGITS)), views["clip"].logits)
    assert sorted(map(repr, views["two"].layers)) == sorted(
        map(repr, [FromPass("clipped", LOGITS), FromPass("zeroed", LOGITS)])
    )
    report = evaluate(model, None, x[:10], {"rest": x[10:]}, {"two": TwoPasses(), "gen": GEN()}, batch_size=5)
    np.testing.assert_allclose(report.ood_scores["two"]["rest"], result.scores[10:], rtol=1e-6)


def test_passes_of_passes_are_refused():
    nested = Needs(also={"a": Needs(also={"b": Needs()})})
    with pytest.raises(ValueError, match="declares passes of its own"):
        Plan(None).add("nested", nested)


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_ops_svd_is_the_thin_svd_on_every_framework(case):
    model, _ = case()
    from oodscope.backends import get_backend

    ops = get_backend(model).ops
    m = np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32)
    native = ops.native
    tensor = native.convert_to_tensor(m) if hasattr(native, "convert_to_tensor") else native.from_numpy(m)
    u, s, vh = (
        np.asarray(part if isinstance(part, np.ndarray) else _numpy(part)) for part in ops.svd(tensor)
    )
    assert u.shape == (2, 5, 3) and s.shape == (2, 3) and vh.shape == (2, 3, 3)
    np.testing.assert_allclose(np.einsum("bik,bk,bkj->bij", u, s, vh), m, atol=1e-5)
    np.testing.assert_allclose(s, np.linalg.svd(m, compute_uv=False), rtol=1e-5)
    assert ops.channels_last == get_backend(model).channels_last


def _numpy(tensor):
    if hasattr(tensor, "detach"):
        return tensor.detach().cpu().numpy()
    import keras

    return keras.ops.convert_to_numpy(tensor)


@dataclasses.dataclass(frozen=True)
class HalfSquaredNorm:
    """A loss that reads a layer: ``Σ_i ½‖pool(h_i) − c‖²``, whose gradient with respect to a [B, D] layer h
    is ``h − c``."""

    layer: str = "penultimate"
    centre: float = 0.0

    @property
    def reads(self):
        return (self.layer,)

    def __call__(self, logits, ops, taps):
        h = ops.pool(taps[self.layer])
        shifted = h - ops.constant(np.full(h.shape[1:], self.centre), like=h)
        return ops.total(shifted * shifted) * 0.5


class LayerPull(Detector):
    """The norm of the gradient of a loss that reads the penultimate layer."""

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self, centre: float = 0.0) -> None:
        self.centre = centre

    def needs(self, layers=None):
        loss = HalfSquaredNorm(centre=float(self.centre))
        return Needs(gradient=Gradient(loss, ("penultimate",)))

    def _score(self, features):
        return np.linalg.norm(features.layer(GradientOf("penultimate")), axis=1)


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_a_loss_may_read_layers(case):
    model, x = case()
    h = extract(model, x, ["penultimate"]).layer("penultimate")
    plan = Plan(bind(model, batch_size=7), strict=True)
    plan.add("pull", LayerPull(centre=0.25).needs())
    got = plan.features(x)["pull"].layer(GradientOf("penultimate"))
    np.testing.assert_allclose(got, h - 0.25, rtol=1e-5, atol=1e-6)
    scores = LayerPull(centre=0.25).fit(model).score(x).scores
    np.testing.assert_allclose(scores, np.linalg.norm(h - 0.25, axis=1), rtol=1e-5)
    assert LayerPull().needs().model_layers() == ("penultimate",)


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_a_loss_reading_a_layer_the_backend_does_not_tap_is_refused(case):
    from oodscope.backends import INPUT, get_backend

    model, x = case()
    with get_backend(model)(model, layer_ids=()) as backend:
        with pytest.raises(ValueError, match="reads layer 'penultimate', which is not one of"):
            backend.gradients(x[:2], HalfSquaredNorm(), (INPUT,))


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_ops_pool_averages_feature_maps_in_the_framework_layout(case):
    model, _ = case()
    from oodscope.backends import get_backend

    ops = get_backend(model).ops
    maps = np.random.default_rng(2).normal(size=(3, 4, 5, 6)).astype(np.float32)
    tensor = ops.constant(maps, like=ops.constant(np.zeros(1, np.float32), like=_like(ops)))
    axes = (1, 2) if ops.channels_last else (2, 3)
    np.testing.assert_allclose(_numpy(ops.pool(tensor)), maps.mean(axis=axes), rtol=1e-5)
    flat = ops.constant(maps[:, :, 0, 0], like=tensor)
    np.testing.assert_array_equal(_numpy(ops.pool(flat)), maps[:, :, 0, 0])


def _like(ops):
    native = ops.native
    if hasattr(native, "convert_to_tensor"):
        return native.convert_to_tensor(np.zeros(1, np.float32))
    return native.zeros(1)


class _PullToCentre:
    """``Σ_i ½‖h_i − μ‖²`` with μ the learned centre of a :class:`CentrePull`: a loss that reads learned
    state, equal for the same detector across its fits, with a ``state_token`` that changes with every fit."""

    reads = ("penultimate",)

    def __init__(self, owner) -> None:
        self.owner = owner

    def __eq__(self, other) -> bool:
        return isinstance(other, _PullToCentre) and other.owner is self.owner

    def __hash__(self) -> int:
        return id(self.owner)

    @property
    def state_token(self):
        return self.owner.fits

    def __call__(self, logits, ops, taps):
        h = taps["penultimate"]
        shifted = h - ops.constant(self.owner.centre_, like=h)
        return ops.total(shifted * shifted) * 0.5


class CentrePull(Detector):
    """Learns the mean μ of the plain penultimate features, then scores by the norm of the gradient of
    ``½‖h − μ‖²`` (which is ``‖h − μ‖``): its scoring pass depends on what it learned."""

    requires = frozenset({"logits"})

    def __init__(self) -> None:
        self.fits = 0

    def fit_needs(self, layers=None):
        return Needs(layers=("penultimate",))

    def needs(self, layers=None):
        return Needs(gradient=Gradient(_PullToCentre(self), ("penultimate",)))

    def _fit(self, features):
        self.centre_ = features.layer("penultimate").mean(axis=0)
        self.fits += 1

    def _score(self, features):
        return np.linalg.norm(features.layer(GradientOf("penultimate")), axis=1)


@pytest.mark.parametrize("case", CASES, ids=["torch", "keras"])
def test_a_detector_may_read_the_fit_data_otherwise_than_it_scores(case):
    model, x = case()
    h = extract(model, x, ["penultimate"]).layer("penultimate")
    detector = CentrePull().fit(model, x[:12], batch_size=5)
    np.testing.assert_allclose(detector.centre_, h[:12].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        detector.score(x[12:]).scores, np.linalg.norm(h[12:] - detector.centre_, axis=1), rtol=1e-4
    )
    detector.fit(model, x[12:], batch_size=5)  # a refit: the loss's constants change, and are used
    np.testing.assert_allclose(
        detector.score(x[:12]).scores, np.linalg.norm(h[:12] - h[12:].mean(axis=0), axis=1), rtol=1e-4
    )
    report = evaluate(
        model, x[:12], x[12:16], {"rest": x[16:]}, {"pull": CentrePull(), "gen": GEN()}, batch_size=5
    )
    assert not report.errors
    np.testing.assert_allclose(
        report.ood_scores["pull"]["rest"], np.linalg.norm(h[16:] - h[:12].mean(axis=0), axis=1), rtol=1e-4
    )
