"""Model files: the framework is read from the content, and a file of the other framework, a whole pickled
module, a damaged file or weights without their architecture get a message that says what the file is."""

from __future__ import annotations

import pickle

import pytest

from oodscope.training import ModelFileError, check_model_file, load_model
from oodscope.training._common import file_kind

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
    from oodscope.training import save_torch_model, toy_mlp

    torch.manual_seed(0)
    return save_torch_model(toy_mlp((1, 4, 4), 3, framework="torch"), tmp_path_factory.mktemp("m") / "mlp.pt")


def test_torch_files_by_content(torch_file, tmp_path):
    assert file_kind(torch_file) == "torch" and check_model_file(torch_file) == "torch"
    assert load_model(torch_file).head.out_features == 3

    renamed = tmp_path / "mlp.keras"
    renamed.write_bytes(torch_file.read_bytes())
    with pytest.raises(ModelFileError, match=r"is a torch file .* ends in '.keras', .* Rename it to mlp.pt"):
        load_model(renamed)
    from oodscope.training import load_tf_model

    pytest.importorskip("keras")
    with pytest.raises(ModelFileError, match="is a torch file .*, not a Keras model"):
        load_tf_model(torch_file)


def test_pickled_modules_and_missing_architecture(torch_file, tmp_path):
    from oodscope.training import load_torch_model

    whole = tmp_path / "whole.pt"
    torch.save(load_model(torch_file), whole)  # the module itself: loading it would run code
    with pytest.raises(ModelFileError, match=r"pickled objects other than tensors.*state_dict\(\)"):
        load_torch_model(whole)

    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"anything": 1}))
    assert file_kind(legacy) == "pickle"

    alone = tmp_path / "alone.pt"
    alone.write_bytes(torch_file.read_bytes())  # without alone.pt.json
    with pytest.raises(ModelFileError, match="without alone.pt.json"):
        load_torch_model(alone)

    from oodscope.training import toy_mlp

    with pytest.raises(ModelFileError, match="do not fit the ToyMLP model"):
        load_torch_model(torch_file, model=toy_mlp((1, 5, 5), 3, framework="torch"))


def test_damaged_empty_and_foreign_files(torch_file, tmp_path):
    cases = {
        "half.pt": torch_file.read_bytes()[:200],
        "empty.pt": b"",
        "text.pt": b"hello",
    }
    messages = {"half.pt": "truncated or damaged", "empty.pt": "it is empty", "text.pt": "neither a Keras"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=messages[name]):
            load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="No model file at"):
        load_model(tmp_path / "missing.pt")
    unnamed = tmp_path / "weights.bin"
    unnamed.write_bytes(torch_file.read_bytes())
    with pytest.raises(ModelFileError, match="its name does not say so; rename it to weights.pt"):
        load_model(unnamed)


def test_keras_files_by_content(tmp_path):
    keras = pytest.importorskip("keras")
    from oodscope.training import load_tf_model, save_tf_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(inputs))
    native = save_tf_model(model, tmp_path / "m.keras")
    legacy = save_tf_model(model, tmp_path / "m.h5")
    assert (file_kind(native), file_kind(legacy)) == ("keras", "hdf5")
    assert load_model(native).get_layer("head").units == 3 and load_model(legacy).get_layer("head").units == 3

    for wrong, right in (("archive.h5", "archive.keras"), ("hdf5.keras", "hdf5.h5")):
        source = native if wrong == "archive.h5" else legacy
        (tmp_path / wrong).write_bytes(source.read_bytes())
        with pytest.raises(ModelFileError, match=f"Keras reads it only as {right}"):
            load_tf_model(tmp_path / wrong)
    (tmp_path / "m.pt").write_bytes(native.read_bytes())
    with pytest.raises(
        ModelFileError, match=r"is a Keras model \(.keras archive\), but its name ends in '.pt'"
    ):
        load_model(tmp_path / "m.pt")
