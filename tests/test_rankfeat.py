"""RankFeat: the rank-1 edit against numpy's SVD in both layouts, the scores against a block-by-block torch
re-derivation, torch against Keras with the same weights, and the passes shared in the planner."""

from __future__ import annotations

import numpy as np
import pytest

from oodscope import GEN, Energy, Features, evaluate, load
from oodscope.detectors.rankfeat import RankFeat, RankOneRemoved, rankfeat_score, remove_rank_one
from oodscope.needs import LOGITS, FromPass
from oodscope.plan import Plan

BLOCKS = ("block1", "block2")


def matrices(maps: np.ndarray, channels_last: bool) -> np.ndarray:
    """Each sample's map as a C × S matrix (a 3-D batch as it is), float64 [B, M, N]."""
    maps = maps.astype(np.float64)
    if maps.ndim == 3:
        return maps
    if channels_last:
        return np.swapaxes(maps.reshape(len(maps), -1, maps.shape[-1]), 1, 2)
    return maps.reshape(len(maps), maps.shape[1], -1)


def numpy_rank_one_removed(maps: np.ndarray, channels_last: bool) -> np.ndarray:
    """Per sample: the matrix minus σ₁ u₁ v₁ᵀ from np.linalg.svd, in float64, back in the input's shape."""
    rest = []
    for matrix in matrices(maps, channels_last):
        u, s, vh = np.linalg.svd(matrix, full_matrices=False)
        rest.append(matrix - s[0] * np.outer(u[:, 0], vh[0]))
    rest = np.stack(rest)
    if maps.ndim > 3 and channels_last:
        return np.swapaxes(rest, 1, 2).reshape(maps.shape)
    return rest.reshape(maps.shape)


def _torch_ops():
    pytest.importorskip("torch")
    from oodscope.backends.torch import TorchOps

    return TorchOps()


def _keras_ops():
    pytest.importorskip("keras")
    from oodscope.backends.keras import KerasOps

    return KerasOps()


def _run(ops, maps: np.ndarray, power_iterations: int = 0) -> np.ndarray:
    if ops.channels_last:
        native = ops.native
        return native.convert_to_numpy(remove_rank_one(native.convert_to_tensor(maps), ops, power_iterations))
    return remove_rank_one(ops.native.from_numpy(maps), ops, power_iterations).numpy()


@pytest.mark.parametrize(
    ("framework", "shape"),
    [
        ("torch", (3, 6, 4, 5)),  # [B, C, H, W]
        ("torch", (2, 4, 3, 2, 3)),  # [B, C, D, H, W]
        ("torch", (3, 7, 5)),  # [B, T, D]
        ("keras", (3, 4, 5, 6)),  # [B, H, W, C]
        ("keras", (3, 7, 5)),
    ],
)
def test_the_edit_is_numpys_rank_one_removal_in_either_layout(framework, shape):
    ops = _torch_ops() if framework == "torch" else _keras_ops()
    maps = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = numpy_rank_one_removed(maps, ops.channels_last)
    got = _run(ops, maps)
    assert got.shape == maps.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.abs(got - maps).max() > 0.1, "the rank-1 part is not small"
    # what is left is the rest of the spectrum: the map's singular values but the largest
    before = np.linalg.svd(matrices(maps, ops.channels_last), compute_uv=False)
    after = np.linalg.svd(matrices(got, ops.channels_last), compute_uv=False)
    np.testing.assert_allclose(after[:, 0], before[:, 1], rtol=1e-4)
    np.testing.assert_allclose(after[:, -1], 0.0, atol=1e-4)


def test_both_layouts_remove_the_same_rank_one_part():
    """A torch map [B, C, H, W] and the same map in Keras' layout [B, H, W, C] give the same edited map."""
    maps = np.random.default_rng(1).random(size=(2, 6, 3, 4)).astype(np.float32)
    from_torch = _run(_torch_ops(), maps)
    from_keras = _run(_keras_ops(), np.moveaxis(maps, 1, -1))
    np.testing.assert_allclose(np.moveaxis(from_keras, -1, 1), from_torch, atol=1e-5)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_power_iteration_approximates_the_svd_on_non_negative_maps(framework):
    ops = _torch_ops() if framework == "torch" else _keras_ops()
    maps = np.random.default_rng(2).random(size=(4, 6, 5, 5)).astype(np.float32)  # post-ReLU-like
    if ops.channels_last:
        maps = np.moveaxis(maps, 1, -1)
    exact = numpy_rank_one_removed(maps, ops.channels_last)
    np.testing.assert_allclose(_run(ops, maps, power_iterations=20), exact, atol=5e-5)
    assert np.abs(_run(ops, maps, power_iterations=1) - exact).max() > 1e-6, "one iteration is not enough"
    assert RankOneRemoved(20) == RankOneRemoved(power_iterations=20) != RankOneRemoved()


@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 1, 1), (4, 1, 3, 3)])
def test_a_layer_without_a_map_per_sample_is_refused(shape):
    ops = _torch_ops()
    with pytest.raises(ValueError, match=r"removes the rank-1 part of each sample's feature map"):
        remove_rank_one(ops.native.zeros(shape), ops)


def test_the_score_is_the_energy_of_the_mean_logits():
    rng = np.random.default_rng(3)
    z3, z4 = rng.normal(size=(2, 5, 7))
    mean = (z3 + z4) / 2
    for t in (1.0, 2.5):
        expected = -t * np.log(np.exp(mean / t).sum(axis=1))
        np.testing.assert_allclose(rankfeat_score([z3, z4], temperature=t), expected, rtol=1e-12)
    np.testing.assert_allclose(rankfeat_score(z4), Energy().score(Features(logits=z4)).scores, rtol=1e-12)
    with pytest.raises(ValueError, match="must have one shape"):
        rankfeat_score([z3, z4[:, :3]])
    with pytest.raises(ValueError, match="'temperature' parameter of rankfeat_score"):
        rankfeat_score([z3], temperature=0.0)


# --- on a model -------------------------------------------------------------------------------------------


def two_block_net(torch):
    """Conv(2 → 6, 3x3)-ReLU, Conv(6 → 5, 3x3)-ReLU, global average pool, Linear(5 → 4); 8x8 inputs."""

    class TwoBlockNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block1 = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3), torch.nn.ReLU())
            self.block2 = torch.nn.Sequential(torch.nn.Conv2d(6, 5, 3), torch.nn.ReLU())
            self.fc = torch.nn.Linear(5, 4)
            self.calls = 0

        def head(self, maps):
            return self.fc(maps.mean(dim=(2, 3)))

        def forward(self, x):
            self.calls += 1
            return self.head(self.block2(self.block1(x)))

    torch.manual_seed(0)
    return TwoBlockNet()


def keras_twin(net, keras, spatial=(8, 8)):
    """The Keras functional model with the weights of :func:`two_block_net` (channels last)."""
    inputs = keras.Input((*spatial, 2))
    hidden = keras.layers.Conv2D(6, 3, activation="relu", name="block1")(inputs)
    hidden = keras.layers.Conv2D(5, 3, activation="relu", name="block2")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(hidden))
    for name in BLOCKS:
        conv = getattr(net, name)[0]
        weights = [conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()]
        model.get_layer(name).set_weights(weights)
    model.get_layer("fc").set_weights([net.fc.weight.detach().numpy().T, net.fc.bias.detach().numpy()])
    return model


def reference_scores(torch, net, x, temperature=1.0):
    """RankFeat by hand in plain torch: run block by block, remove the rank-1 part with torch.linalg.svd in
    float64, continue; average the two forwards' logits; −T·logsumexp(z / T)."""

    def strip(maps):
        b, c, h, w = maps.shape
        m = maps.double().reshape(b, c, h * w)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return (m - s[:, 0, None, None] * (u[:, :, :1] @ vh[:, :1, :])).reshape(b, c, h, w).float()

    with torch.no_grad():
        x = torch.as_tensor(x)
        first = net.block1(x)
        z1 = net.head(net.block2(strip(first)))
        z2 = net.head(strip(net.block2(first)))
        plain = net.head(net.block2(first))
        z = (z1.double() + z2.double()) / 2
        scores = -temperature * torch.logsumexp(z / temperature, dim=1)
    return scores.numpy(), z1.numpy(), plain.numpy()


def test_scores_equal_a_block_by_block_torch_rederivation():
    torch = pytest.importorskip("torch")
    net = two_block_net(torch)
    x = np.random.default_rng(4).normal(size=(12, 2, 8, 8)).astype(np.float32)
    for temperature in (1.0, 3.0):
        expected, first_logits, plain = reference_scores(torch, net, x, temperature)
        result = RankFeat(layers=BLOCKS, temperature=temperature).fit(net).score(x, batch_size=5)
        np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.info["logits"], first_logits, rtol=1e-5, atol=1e-6)
    assert np.abs(first_logits - plain).max() > 1e-2, "the edit changed the logits"
    approx = RankFeat(layers=BLOCKS, accelerate=True).fit(net).score(x, batch_size=5).scores
    np.testing.assert_allclose(approx, reference_scores(torch, net, x)[0], rtol=1e-4, atol=1e-5)


def test_one_block_is_the_block_4_only_variant():
    torch = pytest.importorskip("torch")
    net = two_block_net(torch)
    x = np.random.default_rng(5).normal(size=(6, 2, 8, 8)).astype(np.float32)
    with torch.no_grad():
        maps = net.block2(net.block1(torch.as_tensor(x))).numpy()
        stripped = torch.as_tensor(numpy_rank_one_removed(maps, channels_last=False), dtype=torch.float32)
        z = net.head(stripped).numpy()
    result = RankFeat(layers="block2").fit(net).score(x)
    np.testing.assert_allclose(result.scores, Energy().score(Features(logits=z)).scores, rtol=1e-5)


def test_torch_and_keras_agree_with_the_same_weights():
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    net = two_block_net(torch)
    x = np.random.default_rng(6).normal(size=(20, 2, 8, 8)).astype(np.float32)
    x_last = np.moveaxis(x, 1, -1)
    for accelerate in (False, True):
        detector = RankFeat(layers=BLOCKS, accelerate=accelerate)
        from_torch = detector.fit(net).score(x, batch_size=8)
        from_keras = detector.fit(keras_twin(net, keras)).score(x_last, batch_size=8)
        np.testing.assert_allclose(from_keras.info["logits"], from_torch.info["logits"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(from_keras.scores, from_torch.scores, rtol=1e-4)
    # a free height and width: in a compiled function the map's sizes are known only at run time
    free = keras_twin(net, keras, spatial=(None, None))
    np.testing.assert_allclose(
        RankFeat(layers=BLOCKS).fit(free).score(x_last).scores, from_torch.scores, rtol=1e-4
    )


def test_equal_rankfeats_share_their_passes_with_each_other():
    plan = Plan(None)
    for name, detector in {
        "rankfeat": RankFeat(layers=BLOCKS),
        "gen": GEN(),
        "rankfeat again": RankFeat(layers=BLOCKS),
    }.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 3, "one plain pass and one edited pass per block"
    plan.add("reversed", RankFeat(layers=BLOCKS[::-1]).needs())
    plan.add("block2 only", RankFeat(layers="block2").needs())
    assert plan.passes() == 3
    plan.add("accelerated", RankFeat(layers=BLOCKS, accelerate=True).needs())
    assert plan.passes() == 5


def test_evaluate_runs_one_plain_and_two_edited_passes_per_dataset():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    ind = rng.normal(size=(20, 2, 8, 8)).astype(np.float32)
    oods = {"wide": rng.normal(0, 3, (10, 2, 8, 8)).astype(np.float32)}

    reference = two_block_net(torch)
    alone = RankFeat(layers=BLOCKS).fit(reference, batch_size=10)
    expected = {"id": alone.score(ind).scores, "wide": alone.score(oods["wide"]).scores}
    assert reference.calls == 2 * (2 + 1), "one edited forward per block and batch"

    model = two_block_net(torch)
    detectors = {"a": RankFeat(layers=BLOCKS), "gen": GEN(), "b": RankFeat(layers=BLOCKS)}
    report = evaluate(model, None, ind, oods, detectors, batch_size=10, progress=False)
    assert not report.errors
    assert model.calls == 3 * (2 + 1), "a plain pass and two edited ones, per dataset"
    for name in ("a", "b"):
        np.testing.assert_array_equal(report.id_scores[name], expected["id"])
        np.testing.assert_array_equal(report.ood_scores[name]["wide"], expected["wide"])


def test_features_hold_the_other_blocks_logits_and_without_blocks_it_is_energy():
    rng = np.random.default_rng(8)
    z1, z2 = rng.normal(size=(2, 6, 3))
    detector = RankFeat(layers=BLOCKS, temperature=2.0)
    feats = Features(logits=z1, layers={FromPass("block2", LOGITS): z2}, pass_kind=detector.needs().kind())
    np.testing.assert_allclose(detector.score(feats).scores, rankfeat_score([z1, z2], 2.0), rtol=1e-12)
    plain = Features(logits=z1)
    with pytest.raises(ValueError, match=r"reads a forward pass with edits of .*block1.*plain forward pass"):
        detector.score(plain)
    np.testing.assert_array_equal(RankFeat(layers=()).score(plain).scores, Energy().score(plain).scores)


def test_save_and_load_with_the_model(tmp_path):
    torch = pytest.importorskip("torch")
    net = two_block_net(torch)
    x = np.random.default_rng(9).normal(size=(6, 2, 8, 8)).astype(np.float32)
    detector = RankFeat(layers=["block2", "block1"], temperature=2.0).fit(net)
    loaded = load(detector.save(tmp_path / "rankfeat.oodscope"), model=net)
    assert loaded.get_params() == detector.get_params()
    np.testing.assert_array_equal(loaded.score(x).scores, detector.score(x).scores)


def test_a_dense_layer_is_refused_when_the_pass_runs():
    torch = pytest.importorskip("torch")
    net = two_block_net(torch)
    detector = RankFeat(layers="fc").fit(net)
    with pytest.raises(ValueError, match=r"got a tensor of shape \(3, 4\), in which each sample is a vector"):
        detector.score(np.zeros((3, 2, 8, 8), np.float32))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0.0}, r"'temperature' parameter of RankFeat must be a float in \(0, inf\). Got 0.0"),
        ({"temperature": "1"}, r"'temperature' parameter of RankFeat must be a float"),
        ({"layers": ["layer4", "layer4"]}, r"'layers' parameter of RankFeat must be a layer id .* distinct"),
        ({"layers": 2.5}, r"'layers' parameter of RankFeat .* Got 2.5"),
        ({"layers": None}, r"'layers' parameter of RankFeat .* Got None"),
        ({"accelerate": "yes"}, r"'accelerate' parameter of RankFeat must be one of False, True"),
    ],
)
def test_bad_hyperparameters_are_refused_clearly(params, message):
    with pytest.raises(ValueError, match=message):
        RankFeat(**params).score(Features(logits=np.zeros((2, 3))))
    with pytest.raises(ValueError, match=message):
        RankFeat(**params).needs()  # before any pass
