"""The model-level contract, for every detector on both backends.

Fit and score through a real model must equal the array-level path on extracted Features, leave the model
untouched (outputs, weights, hooks, training flags, attributes), not depend on the batch size, and leave
nothing behind when the user's forward raises.
"""

from __future__ import annotations

import numpy as np
import pytest

from oodscope import bind, clone, extract
from oodscope.plan import Plan

from conftest import all_detector_classes

DETECTORS = all_detector_classes()
N_CLASSES = 4


#: settings for detectors whose defaults name layers the toy models lack (RankFeat: ResNet blocks)
# RankFeat's default names ResNet blocks; BLOOD has no default (here: the first layer and the head's input)
MODEL_PARAMS = {"RankFeat": {"layers": 0}, "BLOOD": {"layers": [0, -2], "token": None, "n_projections": 2}}


def torch_model():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(6 * 6 * 6, 16),
        nn.ReLU(),
        nn.Linear(16, N_CLASSES),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    model.train()  # the user left it in training mode: it must stay so
    model[1].eval()  # and one submodule in eval mode: mixed flags must be restored exactly
    return model


def keras_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )


def make_data(backend: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    shape = (n, 1, 8, 8) if backend == "torch" else (n, 8, 8, 1)
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, N_CLASSES, n)


def snapshot(model, backend: str, x) -> dict:
    """Everything about the model that fit/score must leave as it was."""
    if backend == "torch":
        import torch

        with torch.no_grad():
            model_was_training = {name: m.training for name, m in model.named_modules()}
            model.eval()
            output = model(torch.as_tensor(x)).numpy().copy()
            for name, m in model.named_modules():
                m.training = model_was_training[name]
        return {
            "output": output,
            "state": {k: v.detach().clone().numpy() for k, v in model.state_dict().items()},
            "training": {name: m.training for name, m in model.named_modules()},
            "attributes": {name: sorted(vars(m)) for name, m in model.named_modules()},
            "hooks": sum(
                len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules()
            ),
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [p.grad is None for p in model.parameters()],
        }
    import keras

    return {
        "output": keras.ops.convert_to_numpy(model(x, training=False)).copy(),
        "weights": [w.copy() for w in model.get_weights()],
        "layers": [(layer.name, type(layer).__name__) for layer in model.layers],
        "configs": [layer.get_config() for layer in model.layers],
        "attributes": sorted(vars(model)),
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if key == "output":
            np.testing.assert_array_equal(before[key], after[key])
        elif key in ("state",):
            assert before[key].keys() == after[key].keys()
            for name in before[key]:
                np.testing.assert_array_equal(before[key][name], after[key][name], err_msg=name)
        elif key == "weights":
            for old, new in zip(before[key], after[key], strict=True):
                np.testing.assert_array_equal(old, new)
        else:
            assert before[key] == after[key], key


@pytest.fixture(scope="module", params=["torch", "keras"])
def setup(request):
    backend = request.param
    model = torch_model() if backend == "torch" else keras_model()
    return backend, model, make_data(backend, 60, 0), make_data(backend, 30, 1)


@pytest.fixture(params=DETECTORS, ids=lambda cls: cls.__name__)
def cls(request):
    return request.param


def test_model_level_equals_array_level(cls, setup):
    backend, model, fit_data, test_data = setup
    params = dict(cls._features_only_params)  # ODIN compares its eps=0 form, which Features can score
    detector = cls(**params).fit(model, fit_data)
    result = detector.score(test_data)
    layers = list(cls(**params).needs().layers)
    with_head = True if "head" in cls.requires else None
    feats_fit = extract(model, fit_data, feature_layers_id=layers, with_head=with_head)
    feats = extract(model, test_data, feature_layers_id=layers, with_head=with_head)
    expected = cls(**params).fit(feats_fit).score(feats)
    np.testing.assert_array_equal(result.scores, expected.scores)
    np.testing.assert_array_equal(result.info["logits"], expected.info["logits"])
    np.testing.assert_array_equal(result.info["labels"], test_data[1])


def test_model_is_untouched(cls, setup):
    backend, model, fit_data, test_data = setup
    before = snapshot(model, backend, test_data[0][:8])
    detector = cls(**MODEL_PARAMS.get(cls.__name__, {})).fit(
        model, fit_data
    )  # defaults: ODIN takes input gradients here
    detector.score(test_data)
    detector.score(test_data[0])
    assert_same_snapshot(before, snapshot(model, backend, test_data[0][:8]))


def test_scores_do_not_depend_on_batch_size(cls, setup):
    backend, model, fit_data, test_data = setup
    detector = cls(**MODEL_PARAMS.get(cls.__name__, {})).fit(model, fit_data, batch_size=32)
    by_size = [detector.score(test_data, batch_size=size).scores for size in (1, 7, 256)]
    for scores in by_size[1:]:
        np.testing.assert_allclose(scores, by_size[0], rtol=1e-5, atol=1e-5)


def test_clone_forgets_the_model(cls, setup):
    backend, model, fit_data, test_data = setup
    detector = cls(**MODEL_PARAMS.get(cls.__name__, {})).fit(model, fit_data)
    twin = clone(detector)
    if twin._needs_fit():  # the Features its own fit(model, ...) would see (a perturbed pass's too)
        plan = Plan(bind(model), strict=True)
        plan.add("twin", twin.fit_needs())
        twin.fit(plan.features(fit_data)["twin"])
    with pytest.raises(TypeError, match="no model is known"):
        twin.score(test_data[0])


def test_an_exception_in_the_forward_leaves_nothing_behind(cls, setup):
    backend, model, fit_data, test_data = setup
    before = snapshot(model, backend, test_data[0][:8])
    detector = cls(**MODEL_PARAMS.get(cls.__name__, {})).fit(model, fit_data)
    wrong = np.zeros((4, 3, 5, 5), dtype=np.float32)  # wrong shape: the model's own forward raises
    with pytest.raises(Exception):  # noqa: B017 - whatever the framework raises, nothing may be left behind
        detector.score(wrong)
    assert_same_snapshot(before, snapshot(model, backend, test_data[0][:8]))
