"""BLOOD: projected Jacobians between consecutive transformer blocks, checked against torch autograd (the
vector-Jacobian product of a block, and the exact Frobenius norm of its Jacobian), across frameworks (a
Keras twin with the same weights) and in the planner (one pass per distinct projection, shared by BLOOD_M
and BLOOD_L, never with the plain pass)."""

from __future__ import annotations

import numpy as np
import pytest

from oodscope import GEN, Features, bind, evaluate
from oodscope.detectors.blood import (
    BLOOD,
    ProjectedRepresentation,
    blood_score,
    projection,
    softmax_smoothness,
)
from oodscope.plan import Plan

TOKENS, FEATURES, WIDTH, HEADS, HIDDEN, CLASSES = 5, 3, 8, 2, 16, 4
BLOCKS = ("block0", "block1", "block2")


def tiny_transformer(torch):
    """A float input [B, T, F] embedded by a Linear, three post-norm encoder blocks addressed by name, and a
    Linear head on token 0 (CLS); seeded."""
    nn = torch.nn
    torch.manual_seed(0)

    class TinyTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(FEATURES, WIDTH)
            for name in BLOCKS:
                block = nn.TransformerEncoderLayer(WIDTH, HEADS, HIDDEN, dropout=0.0, batch_first=True)
                setattr(self, name, block)
            self.head = nn.Linear(WIDTH, CLASSES)

        def forward(self, x):
            h = self.embed(x)
            for name in BLOCKS:
                h = getattr(self, name)(h)
            return self.head(h[:, 0])

    return TinyTransformer().eval()


def keras_twin(net, keras):
    """The same network in Keras 3 (functional: Dense, MultiHeadAttention, LayerNormalization, Dense
    feed-forward) with the torch weights; each block's last LayerNormalization is named like its torch
    block."""
    layers = keras.layers
    inputs = keras.Input((TOKENS, FEATURES))
    embed = layers.Dense(WIDTH, name="embed")
    h = embed(inputs)
    copies = [(embed, [net.embed.weight.T, net.embed.bias])]
    for name in BLOCKS:
        block = getattr(net, name)
        attention = layers.MultiHeadAttention(HEADS, WIDTH // HEADS, name=f"{name}_attention")
        norm1 = layers.LayerNormalization(epsilon=block.norm1.eps, name=f"{name}_norm1")
        up = layers.Dense(HIDDEN, activation="relu", name=f"{name}_up")
        down = layers.Dense(WIDTH, name=f"{name}_down")
        norm2 = layers.LayerNormalization(epsilon=block.norm2.eps, name=name)
        h = norm1(layers.Add()([h, attention(h, h)]))
        h = norm2(layers.Add()([h, down(up(h))]))
        # torch stacks q, k, v as [3D, D] with head i in rows i·d..(i+1)·d; Keras keeps [D, heads, d]
        w, b = block.self_attn.in_proj_weight, block.self_attn.in_proj_bias
        qkv = [
            part
            for i in range(3)
            for part in (
                w[i * WIDTH : (i + 1) * WIDTH].T.reshape(WIDTH, HEADS, -1),
                b[i * WIDTH : (i + 1) * WIDTH].reshape(HEADS, -1),
            )
        ]
        out = block.self_attn.out_proj
        copies += [
            (attention, [*qkv, out.weight.T.reshape(HEADS, -1, WIDTH), out.bias]),
            (norm1, [block.norm1.weight, block.norm1.bias]),
            (up, [block.linear1.weight.T, block.linear1.bias]),
            (down, [block.linear2.weight.T, block.linear2.bias]),
            (norm2, [block.norm2.weight, block.norm2.bias]),
        ]
    head = layers.Dense(CLASSES, name="head")
    model = keras.Model(inputs, head(h[:, 0]))
    copies.append((head, [net.head.weight.T, net.head.bias]))
    for layer, weights in copies:
        layer.set_weights([weight.detach().numpy() for weight in weights])
    return model


def data(n: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, TOKENS, FEATURES)).astype(np.float32)


def block_inputs(torch, net, x, upto: str):
    """The output of the block before ``upto`` (or of the embedding), by hand."""
    with torch.no_grad():
        h = net.embed(torch.as_tensor(x))
        for name in BLOCKS[: BLOCKS.index(upto)]:
            h = getattr(net, name)(h)
    return h


def test_the_projected_loss_gradient_is_the_vjp_of_the_block():
    """The gradient of Σ_b vᵀ h1_b[0] with respect to block0's output is torch's vector-Jacobian product of
    block1 (all tokens), and BLOOD's per-pair estimate is the mean of its squared norms at the CLS token."""
    torch = pytest.importorskip("torch")
    from oodscope.backends.torch import TorchBackend

    net, x = tiny_transformer(torch), data()
    h0 = block_inputs(torch, net, x, "block1")
    expected = []
    for k in range(3):
        loss = ProjectedRepresentation("block1", k, random_state=7)
        v = torch.tensor(projection(7, k, "block1", (WIDTH,)), dtype=torch.float32)
        _, vjp = torch.autograd.functional.vjp(lambda h: net.block1(h)[:, 0], h0, v.expand(len(x), WIDTH))
        with TorchBackend(net, ["block0", "block1"]) as backend:
            _, _, grads = backend.gradients(x, loss, ("block0",))
        np.testing.assert_allclose(grads["block0"], vjp.numpy(), rtol=1e-4, atol=1e-6)
        assert np.abs(vjp[:, 1:].numpy()).max() > 1e-3, "the CLS output depends on the other tokens too"
        expected.append((vjp[:, 0] ** 2).sum(dim=1).numpy())

    detector = BLOOD(layers=["block0", "block1"], n_projections=3, random_state=7)
    result = detector.fit(net).score(x, batch_size=5)
    np.testing.assert_allclose(result.scores, np.mean(expected, axis=0), rtol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(
            result.info["logits"], net(torch.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-6
        )


def test_many_projections_approach_the_exact_frobenius_norm():
    """With K projections, each sample's estimate of ‖J‖_F² (J = ∂ block_p(h)[0] / ∂ h[0], exact from
    torch.autograd.functional.jacobian) is within 4 standard deviations of the estimator,
    sd = sqrt(2 ‖J Jᵀ‖_F² / K) for Gaussian v, and BLOOD_M / BLOOD_L are the mean and the last pair (read
    from the same passes, planned together)."""
    torch = pytest.importorskip("torch")
    net, x = tiny_transformer(torch), data(n=6, seed=1)
    k = 100
    exact, variance = [], []
    for name in ("block1", "block2"):
        h = block_inputs(torch, net, x, name)
        for i in range(len(x)):

            def cls_out(cls_in, i=i, h=h, name=name):
                tokens = torch.cat([cls_in[None, None], h[i : i + 1, 1:]], dim=1)
                return getattr(net, name)(tokens)[0, 0]

            jac = torch.autograd.functional.jacobian(cls_out, h[i, 0]).double().numpy()
            exact.append((jac**2).sum())
            variance.append(2 * ((jac @ jac.T) ** 2).sum() / k)
    exact, variance = np.reshape(exact, (2, -1)).T, np.reshape(variance, (2, -1)).T  # [N, pairs]

    detectors = {
        "mean": BLOOD(layers=BLOCKS, n_projections=k, random_state=3),
        "last": BLOOD(layers=BLOCKS, variant="last", n_projections=k, random_state=3),
    }
    plan = Plan(bind(net, batch_size=6), strict=True)
    for name, detector in detectors.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 2 * k
    views = plan.features(x)
    mean, last = (detectors[name].score(views[name]).scores for name in ("mean", "last"))
    assert np.all(np.abs(last - exact[:, 1]) <= 4 * np.sqrt(variance[:, 1])), (last, exact[:, 1])
    assert np.all(np.abs(mean - exact.mean(axis=1)) <= 4 * np.sqrt(variance.sum(axis=1)) / 2)
    assert np.all(4 * np.sqrt(variance) < 0.6 * exact)  # the tolerance is tight (about 25 % typically)
    assert np.abs(exact[:, 0] - exact[:, 1]).max() > 0.1 * exact.max(), "the two pairs differ"


def test_torch_and_keras_twins_agree():
    """The same weights and seeds give the same BLOOD on torch and on Keras (whichever Keras backend runs the
    tests), for BLOOD_M, BLOOD_L and the Features-level mode."""
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    net, x = tiny_transformer(torch), data(n=10)
    model = keras_twin(net, keras)
    with torch.no_grad():
        logits = net(torch.as_tensor(x)).numpy()
    keras_logits = keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(keras_logits, logits, rtol=1e-4, atol=1e-5)
    for detector in (
        BLOOD(layers=BLOCKS, n_projections=1, random_state=5),  # one pass per pair
        BLOOD(layers=BLOCKS, variant="last", n_projections=1, random_state=6, token=None),
        BLOOD(layers=()),  # the softmax form, on the plain pass
    ):
        from_torch = detector.fit(net).score(x, batch_size=4).scores
        from_keras = detector.fit(model).score(x, batch_size=4).scores
        np.testing.assert_allclose(from_keras, from_torch, rtol=1e-4)
        assert from_torch.std() > 1e-3 * from_torch.mean()


def test_blood_without_layers_says_which_to_give():
    # no choice of blocks fits every model: BLOOD() refuses, with a model as with Features, and names both
    # ways out
    torch = pytest.importorskip("torch")
    expected = r"BLOOD\(layers=\[\.\.\.\]\).*layers=\(\) for the softmax"
    with pytest.raises(ValueError, match=expected):
        BLOOD().fit(tiny_transformer(torch))
    with pytest.raises(ValueError, match=expected):
        BLOOD().score(Features(logits=np.zeros((2, 3))))


def test_evaluate_shares_each_projection_and_scores_as_each_detector_alone():
    torch = pytest.importorskip("torch")
    net, x = tiny_transformer(torch), data(n=16)
    k = 2
    detectors = {
        "blood_m": BLOOD(layers=BLOCKS, n_projections=k),
        "blood_l": BLOOD(layers=BLOCKS, variant="last", n_projections=k),  # the last pair's passes of blood_m
        "gen": GEN(),
    }
    plan = Plan(None)
    for name, detector in detectors.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 1 + 2 * k  # the plain pass, and one per (pair, projection)
    plan.add("other seed", BLOOD(layers=BLOCKS, n_projections=k, random_state=1).needs())
    plan.add("whole output", BLOOD(layers=BLOCKS, n_projections=k, token=None).needs())
    assert plan.passes() == 1 + 3 * 2 * k  # other directions or another representation: other passes

    report = evaluate(net, None, x[:8], {"rest": x[8:]}, detectors, batch_size=5)
    assert not report.errors
    for name, detector in detectors.items():
        alone = detector.fit(net).score(x[8:], batch_size=3).scores
        np.testing.assert_allclose(report.ood_scores[name]["rest"], alone, rtol=1e-6)


def test_bad_parameters_are_refused_before_any_pass():
    torch = pytest.importorskip("torch")
    net = tiny_transformer(torch)
    feats = Features(logits=np.zeros((2, 3)))
    for params, message in [
        ({"layers": ["block0"]}, "'layers' parameter of BLOOD must be \\(\\) or a list of at least two"),
        ({"layers": ["block0", "block0"]}, "'layers' parameter"),
        ({"layers": "block0"}, "'layers' parameter"),
        ({"variant": "median"}, "'variant' parameter of BLOOD must be one of 'mean', 'last'"),
        ({"n_projections": 0}, "'n_projections' parameter of BLOOD must be an int in \\[1, inf\\)"),
        ({"random_state": -1}, "'random_state' parameter"),
        ({"random_state": None}, "'random_state' parameter"),
        ({"token": 0.5}, "'token' parameter of BLOOD must be an int in \\(-inf, inf\\) or one of None"),
    ]:
        with pytest.raises(ValueError, match=message):
            BLOOD(**params).fit(feats)
        with pytest.raises(ValueError, match=message):
            BLOOD(**params).fit(net)
        with pytest.raises(ValueError, match=message):
            BLOOD(**params).needs()
    with pytest.raises(KeyError, match="no layer 'block9'"):
        BLOOD(layers=["block0", "block9"]).fit(net).score(data(n=2))
    with pytest.raises(ValueError, match="variant"):
        blood_score(np.ones((1, 1, 1)), "median")
    with pytest.raises(ValueError, match="at least one pair and one projection"):
        blood_score(np.ones((1, 0, 1)))


def test_a_token_of_a_layer_without_tokens_is_refused_and_token_none_takes_the_whole_output():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="token sequence \\[B, T, D\\], but the output of layer '3'"):
        BLOOD(layers=["1", "3"]).fit(mlp).score(x)
    scores = BLOOD(layers=["1", "3"], n_projections=500, token=None).fit(mlp).score(x).scores
    with torch.no_grad():
        a = torch.tanh(mlp[0](torch.as_tensor(x)))
        slope = 1 - torch.tanh(mlp[2](a)) ** 2
        exact = ((slope[:, :, None] * mlp[2].weight[None]) ** 2).sum(dim=(1, 2)).numpy()  # J = diag(tanh') W
    np.testing.assert_allclose(scores, exact, rtol=0.2)


def test_the_features_level_score_is_the_jacobian_of_the_softmax():
    """``layers=()``: ‖∂ softmax(z) / ∂z‖_F², against torch's Jacobian of the softmax."""
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(0).normal(size=(7, 4)) * 2
    logits[1] = [1.0, 1.0, 1.0, 1.0]  # uniform, (C − 1) / C²
    logits[2] = [0.5, 0.5, -3.0, 0.0]  # a tie at the top
    expected = [
        float(
            (torch.autograd.functional.jacobian(lambda v: torch.softmax(v, 0), torch.as_tensor(z)) ** 2).sum()
        )
        for z in logits
    ]
    np.testing.assert_allclose(softmax_smoothness(logits), expected, rtol=1e-12)
    assert softmax_smoothness(logits)[1] == pytest.approx(3 / 16)
    np.testing.assert_allclose(BLOOD(layers=()).score(Features(logits=logits)).scores, expected, rtol=1e-12)
    np.testing.assert_array_equal(softmax_smoothness(np.zeros((2, 1))), [0.0, 0.0])  # one class: p = 1

    # a confident row keeps its relative precision: in 50 digits, ‖diag(p) − p pᵀ‖_F² is about 2 e⁻⁶⁰
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        e = [mpmath.exp(z) for z in (30, 0, 0)]
        p = [value / sum(e) for value in e]
        by_hand = sum(((c == k) * p[c] - p[c] * p[k]) ** 2 for c in range(3) for k in range(3))
    np.testing.assert_allclose(softmax_smoothness([[30.0, 0.0, 0.0]]), [float(by_hand)], rtol=1e-12)
    assert by_hand < 1e-25
    with pytest.raises(ValueError, match="reads a forward pass with gradients of ProjectedRepresentation"):
        BLOOD(layers=BLOCKS).score(Features(logits=logits))


def test_the_pure_score_averages_projections_then_pairs():
    norms = np.arange(12, dtype=float).reshape(2, 3, 2)  # 2 samples, 3 pairs, 2 projections
    np.testing.assert_array_equal(blood_score(norms), norms.mean(axis=(1, 2)))
    np.testing.assert_array_equal(blood_score(norms, "last"), norms[:, 2].mean(axis=1))
    v = projection(4, 0, "block1", (WIDTH,))
    assert v.shape == (WIDTH,) and abs(v.mean()) < 2 and not v.flags.writeable
