"""A detector written in the user's own module, with no edit of oodscope, works everywhere: fit / score,
evaluate, tune, save / load and the CLI by its import path."""

from __future__ import annotations

import importlib
import json
import textwrap
import zipfile

import numpy as np
import pytest

from oodscope import GEN, evaluate, extract, load, tune
from oodscope.cli import main
from oodscope.detectors import available

torch = pytest.importorskip("torch")

SOURCE = textwrap.dedent(
    '''
    """A user's own OOD method: the distance of the penultimate features to their fit mean."""

    import numpy as np

    from oodscope.detectors import Detector


    class MeanDistance(Detector):
        """Euclidean distance to the mean of the fit data's penultimate features, divided by ``scale``."""

        requires = frozenset({"features"})

        def __init__(self, scale: float = 1.0) -> None:
            self.scale = scale

        def _fit(self, features):
            self.mean_ = features.layer("penultimate").mean(axis=0)

        def _score(self, features):
            return np.linalg.norm(features.layer("penultimate") - self.mean_, axis=1) / self.scale
    '''
)


def write_module(folder, name: str) -> None:
    (folder / f"{name}.py").write_text(SOURCE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from oodscope.training import save_torch_model, train_torch_model

    folder = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240)
    inputs = (rng.random((240, 8, 8, 1)) * 60 + labels[:, None, None, None] * 60).astype(np.uint8)
    model = train_torch_model(
        (np.moveaxis(inputs, -1, 1) / 255.0, labels), model="toy_mlp", input_shape=(1, 8, 8), epochs=2, seed=0
    )
    np.savez(folder / "fit.npz", x=inputs[:160], y=labels[:160])
    np.savez(folder / "id.npz", x=inputs[160:], y=labels[160:])
    noise = rng.integers(0, 255, (60, 8, 8, 1)).astype(np.uint8)
    np.savez(folder / "ood.npz", x=noise)

    def torch_data(x):
        return np.moveaxis(x, -1, 1).astype(np.float32) / 255.0

    data = {
        "fit": (torch_data(inputs[:160]), labels[:160]),
        "id": (torch_data(inputs[160:]), labels[160:]),
        "ood": torch_data(noise),
    }
    return folder, model, save_torch_model(model, folder / "mlp.pt"), data


def test_a_detector_in_the_users_module_works_everywhere(setup, monkeypatch, tmp_path):
    folder, model, _, data = setup
    write_module(tmp_path, "my_ood_methods")
    monkeypatch.syspath_prepend(str(tmp_path))
    MeanDistance = importlib.import_module("my_ood_methods").MeanDistance
    assert available()["my_ood_methods:MeanDistance"] is MeanDistance

    # the expected scores, by hand from one extraction
    fit_h = extract(model, data["fit"], ["penultimate"]).layer("penultimate")
    ood_h = extract(model, data["ood"], ["penultimate"]).layer("penultimate")
    expected = np.linalg.norm(ood_h - fit_h.mean(axis=0), axis=1) / 2.0

    det = MeanDistance(scale=2.0).fit(model, data["fit"])
    np.testing.assert_allclose(det.score(data["ood"]).scores, expected, rtol=1e-12)

    report = evaluate(
        model, data["fit"], data["id"], {"noise": data["ood"]}, [MeanDistance(scale=2.0), GEN()]
    )
    assert not report.errors
    np.testing.assert_allclose(report.ood_scores["MeanDistance(scale=2.0)"]["noise"], expected, rtol=1e-12)

    result = tune(MeanDistance(), {"scale": [1.0, 2.0]}, data["fit"], data["id"], data["ood"], model=model)
    assert [row["error"] for row in result.table] == [None, None]
    assert result.table[0]["auroc"] == result.table[1]["auroc"]  # a scale does not change the ranking

    loaded = load(det.save(tmp_path / "mine.oodscope"), model=model)
    assert type(loaded) is MeanDistance and loaded.scale == 2.0
    np.testing.assert_array_equal(loaded.score(data["ood"]).scores, det.score(data["ood"]).scores)
    saved = json.loads(zipfile.ZipFile(tmp_path / "mine.oodscope").read("detector.json"))
    assert saved["detector"]["__detector__"] == "my_ood_methods:MeanDistance"


def test_the_cli_imports_a_users_detector_by_its_path(setup, monkeypatch, tmp_path, capsys):
    folder, _, model_path, _ = setup
    write_module(tmp_path, "my_cli_methods")  # not imported before: the CLI imports it
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "report"
    code = main(
        [
            "bench",
            "--model", str(model_path),
            "--fit", str(folder / "fit.npz"),
            "--id", str(folder / "id.npz"),
            "--ood", f"noise={folder / 'ood.npz'}",
            "--detectors", "my_cli_methods:MeanDistance(scale=2.0)", "GEN()",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {row["detector"] for row in rows} == {"MeanDistance(scale=2.0)", "GEN()"}
    assert all(0.0 <= row["auroc"] <= 1.0 for row in rows)

    ood = f"noise={folder / 'ood.npz'}"
    args = ["--model", str(model_path), "--id", str(folder / "id.npz"), "--ood", ood]
    code = main(["bench", *args, "--detectors", "no_such_module:Thing()"])
    assert code == 2 and "Cannot import the module 'no_such_module'" in capsys.readouterr().err
