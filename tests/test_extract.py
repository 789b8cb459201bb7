"""extract(): data forms, layers, post-processing, labels and the one-pass guarantee (torch models)."""

from __future__ import annotations

import numpy as np
import pytest

from oodscope import GEN, MLS, MSP, Energy, Entropy, Features, ReAct, extract
from oodscope.extract import global_average_pool

torch = pytest.importorskip("torch")
nn = torch.nn


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 50)


def reference_logits(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def test_numpy_inputs_and_labels(model, data):
    x, y = data
    feats = extract(model, (x, y), batch_size=16)
    np.testing.assert_allclose(feats.logits, reference_logits(model, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(feats.labels, y)
    assert feats.head_weight.shape == (3, 16)
    assert extract(model, x).labels is None


@pytest.mark.parametrize(
    "form",
    [
        "array",
        "tensor",
        "tuple",
        "dict",
        "list_of_tuples",
        "dataloader",
        "tensor_dataset",
        "generator",
        "dict_batches",
    ],
)
def test_every_data_form_gives_the_same_features(model, data, form):
    x, y = data
    tx, ty = torch.as_tensor(x), torch.as_tensor(y)
    dataset = torch.utils.data.TensorDataset(tx, ty)
    forms = {
        "array": x,
        "tensor": tx,
        "tuple": (x, y),
        "dict": {"image": x, "label": y},
        "list_of_tuples": [(x[i : i + 9], y[i : i + 9]) for i in range(0, 50, 9)],
        "dataloader": torch.utils.data.DataLoader(dataset, batch_size=11),
        "tensor_dataset": dataset,
        "generator": ((x[i : i + 20], y[i : i + 20]) for i in range(0, 50, 20)),
        "dict_batches": [{"image": x[i : i + 25], "label": y[i : i + 25]} for i in (0, 25)],
    }
    feats = extract(model, forms[form], feature_layers_id=["penultimate"], batch_size=13)
    expected = extract(model, (x, y), feature_layers_id=["penultimate"])
    np.testing.assert_allclose(feats.logits, expected.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        feats.layer("penultimate"), expected.layer("penultimate"), rtol=1e-5, atol=1e-6
    )
    if form not in ("array", "tensor"):
        np.testing.assert_array_equal(feats.labels, y)


def test_tf_dataset_input(model, data):
    tf = pytest.importorskip("tensorflow")
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    feats = extract(model, ds)
    np.testing.assert_allclose(feats.logits, reference_logits(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(feats.labels, y)


def test_layers_are_pooled_and_postprocessed(model, data):
    x, _ = data
    feats = extract(
        model, x, feature_layers_id=[0, "penultimate"], postproc_fns={0: lambda a: a.max(axis=(2, 3))}
    )
    with torch.no_grad():
        conv = model[0](torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(feats.layer(0), conv.max(axis=(2, 3)), rtol=1e-6)
    default = extract(model, x, feature_layers_id=0)
    np.testing.assert_allclose(default.layer(0), conv.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    penultimate = feats.layer("penultimate")
    np.testing.assert_allclose(penultimate @ feats.head_weight.T + feats.head_bias, feats.logits, atol=1e-5)


def test_global_average_pool_layouts():
    maps = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    np.testing.assert_allclose(global_average_pool(maps), maps.mean(axis=(2, 3)))
    np.testing.assert_allclose(global_average_pool(maps, channels_last=True), maps.mean(axis=(1, 2)))
    assert global_average_pool(np.ones(4)).shape == (4, 1)


def test_bad_postprocessing_and_data_are_explained(model, data):
    x, y = data
    with pytest.raises(ValueError, match="must return a 2-D array"):
        extract(model, x, feature_layers_id=[0], postproc_fns=[lambda a: a])
    with pytest.raises(ValueError, match="postproc_fns has 2 functions for 1 layers"):
        extract(model, x, feature_layers_id=[0], postproc_fns=[None, None])
    with pytest.raises(ValueError, match="different lengths"):
        extract(model, (x, y[:10]))
    with pytest.raises(ValueError, match="no batches"):
        extract(model, [])
    with pytest.raises(TypeError, match="Cannot iterate data of type int"):
        extract(model, 3)
    with pytest.raises(ValueError, match="pass input_key=..., e.g. input_key='pixels'"):
        extract(model, {"pixels": x})
    with pytest.raises(ValueError, match=r"in fit\(model, ...\), for every later pass, or in score"):
        GEN().fit(model).score([{"pixels": x, "y": y}])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        extract(model, x, batch_size=0)
    with pytest.raises(TypeError, match="expected a torch.nn.Module or a keras.Model"):
        extract(object(), x)


def notes(error: pytest.ExceptionInfo) -> str:
    return " ".join(getattr(error.value, "__notes__", []))


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11")
def test_an_error_inside_the_model_says_which_batch_and_how_the_data_was_read(model, data):
    x, y = data
    images = (np.abs(x) * 100).astype(np.uint8)
    with pytest.raises(RuntimeError) as error:  # torch's own message is kept as it is
        extract(model, images)
    assert "batch 1: inputs of shape (50, 1, 8, 8), uint8" in notes(error)
    assert "x.astype('float32') / 255" in notes(error)

    samples = list(x[:3])  # three samples, read as three batches of shape (1, 8, 8)
    with pytest.raises(RuntimeError) as error:
        GEN().fit(model).score(samples)
    assert "shape (1, 8, 8), float32" in notes(error) and "np.stack(samples)" in notes(error)
    assert "uint8" not in notes(error)

    class FailsOnThirdBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.calls = make_model(), 0

        def forward(self, inputs):
            self.calls += 1
            if self.calls == 3:
                raise ValueError("the user's own error")
            return self.body(inputs)

    with pytest.raises(ValueError, match="the user's own error") as error:
        extract(FailsOnThirdBatch(), (x, y), batch_size=20)
    assert "batch 3: inputs of shape (10, 1, 8, 8), float32" in notes(error)
    assert "sequence of batches" not in notes(error)  # (inputs, labels) is sliced, not read as batches

    with pytest.raises(ValueError, match="pass input_key") as error:  # reading batch 2 fails, not batch 1
        extract(model, [{"image": x[:10]}, {"pixels": x[10:]}])
    assert notes(error) == ""


class CountingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = make_model()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.body(x)


def test_one_pass_serves_many_detectors(data):
    x, y = data
    model = CountingModel()
    feats_fit = extract(model, (x, y), feature_layers_id=["penultimate"], batch_size=10)
    feats_in = extract(model, x[:20], feature_layers_id=["penultimate"], batch_size=10)
    assert model.calls == 5 + 2
    results = {}
    for detector in (
        GEN(),
        GEN(gamma=0.5, k=2),
        MSP(),
        MLS(),
        Energy(),
        Entropy(),
        ReAct(),
        ReAct(GEN(), 80),
    ):
        results[repr(detector)] = detector.fit(feats_fit).score(feats_in).scores
    assert model.calls == 7, "fitting and scoring cached Features runs no forward pass"
    assert len(results) == 8 and len({r.tobytes() for r in results.values()}) == 8


def test_model_level_scores_equal_array_level(model, data):
    x, y = data
    feats_fit = extract(model, (x, y), feature_layers_id=["penultimate"])
    feats = extract(model, x, feature_layers_id=["penultimate"])
    for detector in (GEN(), ReAct(GEN())):
        model_level = type(detector)(**detector.get_params(deep=False)).fit(model, (x, y)).score(x)
        array_level = detector.fit(feats_fit).score(feats)
        np.testing.assert_array_equal(model_level.scores, array_level.scores)
        np.testing.assert_array_equal(model_level.info["logits"], array_level.info["logits"])


def test_score_takes_pass_options_for_one_call(model, data):
    """OOD data may be batched differently from the fit data: score (and what calls it) takes the options."""
    x, y = data
    detector = ReAct(GEN()).fit(model, {"image": x, "label": y}, batch_size=16)
    expected = detector.score(x).scores
    ood = [{"pixels": x[:30], "target": y[:30]}, {"pixels": x[30:], "target": y[30:]}]
    result = detector.score(ood, input_key="pixels", label_key="target", batch_size=7, progress=False)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6)
    np.testing.assert_array_equal(result.info["labels"], y)
    assert detector._bound.input_key is None and detector._bound.batch_size == 16

    detector.calibrate(ood, input_key="pixels")
    np.testing.assert_array_equal(detector.predict(ood, input_key="pixels"), expected > detector.threshold_)
    assert detector.pvalues(ood, input_key="pixels").shape == (len(x),)
    with pytest.raises(TypeError, match="unexpected keyword argument 'head_layer_id'"):
        detector.score(x, head_layer_id=-1)  # what a pass captures is fixed at fit


def test_seed_style_fit_with_model_alone(model, data):
    x, y = data
    gen = GEN()
    assert gen.fit(model) is gen
    scores, info = gen.score((x, y))
    np.testing.assert_array_equal(info["labels"], y)
    assert scores.shape == (50,)
    with pytest.raises(ValueError, match="ReAct learns from in-distribution data"):
        ReAct().fit(model)


def test_features_have_no_forward_pass_arguments():
    feats = Features(logits=np.zeros((2, 2)))
    with pytest.raises(TypeError, match="takes no fit_data"):
        GEN().fit(feats, feats)


def test_batches_are_gathered_in_place_and_fall_back_to_concatenation():
    from oodscope.extract import _Columns

    batches = [np.arange(6.0).reshape(3, 2), np.arange(6.0, 12.0).reshape(3, 2)]
    expected = np.arange(12.0).reshape(6, 2)
    for rows in (6, None, 4, 10):  # exact, unknown, too few (falls back), too many (trimmed copy)
        columns = _Columns(rows)
        for batch in batches:
            columns.add(batch)
        result = columns.result()
        np.testing.assert_array_equal(result, expected)
        assert result.base is None, "the result owns its memory"
    columns = _Columns(6)
    columns.add(np.zeros((3, 2), np.float32))
    columns.add(np.ones((3, 2), np.float64))  # another dtype: concatenated, with numpy's promotion
    assert columns.result().dtype == np.float64
