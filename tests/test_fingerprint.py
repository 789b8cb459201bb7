"""A saved detector remembers its model by a fingerprint; load(path, model=...) refuses another model."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest

from oodscope import GEN, KNN, load
from oodscope.fingerprint import ModelFingerprint, ModelMismatchError, fingerprint
from oodscope.persistence import DetectorFileError

torch = pytest.importorskip("torch")

X = np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32)


def _mlp(seed: int = 0, hidden: int = 8) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))


def _meta(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("detector.json"))


def _rewrite_meta(path, meta):
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["detector.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_fingerprint_reads_layers_shapes_and_the_head():
    model = _mlp()
    found = fingerprint(model)
    assert found.framework == "torch"
    assert found.layers == (("0", ((8, 6), (8,))), ("2", ((3, 8), (3,))))
    assert found == fingerprint(_mlp())  # same seed, same weights
    assert found.head_sha256 != fingerprint(_mlp(seed=1)).head_sha256
    assert ModelFingerprint.from_json(json.loads(json.dumps(found.to_json()))) == found
    # buffers count as weights too (a BatchNorm's running statistics)
    with_norm = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    assert fingerprint(with_norm).layers[1] == ("1", ((4,), (4,), (4,), (4,), ()))


def test_a_head_that_is_not_linear_has_no_hash():
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fit warns that the head is not linear; the fingerprint does not
        assert fingerprint(model).head_sha256 is None
    assert fingerprint(model, head_layer_id="0").head_sha256 is not None


def test_saved_detector_refuses_another_model(tmp_path):
    model = _mlp()
    det = KNN(k=3).fit(model, X, batch_size=16)
    path = det.save(tmp_path / "knn.oodscope")
    assert _meta(path)["model"] == fingerprint(model).to_json()
    assert _meta(path)["format_version"] == 1

    same = _mlp()  # another object with the same weights
    np.testing.assert_array_equal(load(path, model=same).score(X).scores, det.score(X).scores)

    with pytest.raises(ModelMismatchError, match=r"head's weights differ.*check_model=False"):
        load(path, model=_mlp(seed=1))
    with pytest.raises(ModelMismatchError, match=r"layer 0 is '0' with weights 8x6, 8 .* 16x6, 16 here"):
        load(path, model=_mlp(hidden=16))
    deeper = torch.nn.Sequential(*_mlp(), torch.nn.Linear(3, 3))
    with pytest.raises(ModelMismatchError, match="has 2 layers with weights, this one has 3"):
        load(path, model=deeper)

    other = _mlp(seed=1)
    forced = load(path, model=other, check_model=False)
    assert forced._bound.model is other
    assert not np.array_equal(forced.score(X).scores, det.score(X).scores)


def test_a_retrained_model_is_noticed(tmp_path):
    model = _mlp()
    path = GEN().fit(model).save(tmp_path / "gen.oodscope")
    with torch.no_grad():
        model[2].weight.mul_(1.01)
    with pytest.raises(ModelMismatchError, match="head's weights differ"):
        load(path, model=model)


def test_files_without_a_fingerprint_load_as_before(tmp_path):
    # fitted on Features: no model, so no fingerprint; any model may be given
    from conftest import make_toy

    toy = make_toy(dim=8, n_classes=3)
    path = GEN().fit(toy["fit"]).save(tmp_path / "features.oodscope")
    assert "model" not in _meta(path)
    assert load(path, model=_mlp())._bound is not None

    # a file written before fingerprints existed
    path = KNN(k=3).fit(_mlp(), X).save(tmp_path / "old.oodscope")
    meta = _meta(path)
    del meta["model"]
    _rewrite_meta(path, meta)
    assert load(path, model=_mlp(seed=5))._bound is not None


def test_a_malformed_fingerprint_is_a_damaged_file(tmp_path):
    path = GEN().fit(_mlp()).save(tmp_path / "gen.oodscope")
    meta = _meta(path)
    meta["model"] = {"framework": "torch", "layers": "nonsense"}
    _rewrite_meta(path, meta)
    with pytest.raises(DetectorFileError, match="malformed model fingerprint"):
        load(path, model=_mlp())


def test_keras_models_have_fingerprints_and_differ_from_torch(tmp_path):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(hidden))
    found = fingerprint(model)
    assert found.framework == "keras"
    assert found.layers == (("hidden", ((6, 8), (8,))), ("head", ((8, 3), (3,))))
    weight, bias = model.get_layer("head").kernel.numpy().T, model.get_layer("head").bias.numpy()
    from oodscope.fingerprint import _hash_arrays

    assert found.head_sha256 == _hash_arrays(weight, bias)

    path = GEN().fit(model).save(tmp_path / "gen.oodscope")
    assert load(path, model=model)._bound.model is model
    with pytest.raises(ModelMismatchError, match="fitted on a keras model, and this is a torch model"):
        load(path, model=_mlp())
