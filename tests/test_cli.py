"""The command line: the train -> fit -> bench -> score round trip on Keras and torch, exit codes, argument
checks before any work, model files of the wrong framework, safe detector parsing."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re

import numpy as np
import pytest

from oodscope import GEN, KNN, ReAct, load
from oodscope._cli_tasks import (
    UsageError,
    detector_file_name,
    parse_data_spec,
    parse_detector,
)
from oodscope.cli import main
from oodscope.data import load_named
from oodscope.metrics import conformal_pvalues

from conftest import mnist_and_fashion_installed

# scikit-learn's 8x8 digits ship with scikit-learn: small, offline, always there
TRAIN, TEST, OOD = "digits:train:0-4", "digits:test:0-4", "digits:test:5-9"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digits(split: str, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_named("digits", split)
    keep = (data.labels >= low) & (data.labels <= high)
    return data.inputs[keep], data.labels[keep]


def _model_inputs(images: np.ndarray, framework: str) -> np.ndarray:
    x = images.astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if framework == "torch" else x


@pytest.fixture(scope="module", params=["keras", "torch"])
def trained(request, tmp_path_factory):
    """A toy MLP trained by `oodscope train` on digits 0-4, per framework."""
    framework = request.param
    if importlib.util.find_spec(framework) is None:  # not imported here: the command imports it, quietly
        pytest.skip(f"{framework} is not installed")
    folder = tmp_path_factory.mktemp(f"cli_{framework}")
    model_path = folder / ("mlp.keras" if framework == "keras" else "mlp.pt")
    argv = ["train", "--data", TRAIN, "--out", str(model_path), "--architecture", "toy_mlp", "--epochs", "3"]
    stream = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(stream):
        code = main([*argv, "--validation", TEST, "--batch-size", "32"])
    assert code == 0
    return framework, folder, model_path, stream.getvalue()


def test_train_saves_a_model_in_the_frameworks_format(trained):
    framework, _, model_path, out = trained
    n_train = int(np.sum(load_named("digits", "train").labels < 5))
    lines = out.splitlines()
    assert lines[0] == f"Trained toy_mlp ({framework}) on {n_train} samples of {TRAIN} for 3 epochs."
    accuracy = float(
        re.fullmatch(r"Accuracy on \d+ samples of digits:test:0-4: ([0-9.]+)", lines[1]).group(1)
    )
    assert accuracy > 0.8
    assert lines[2] == f"Saved the model to {model_path}" and len(lines) == 3
    if framework == "torch":
        assert model_path.with_name("mlp.pt.json").is_file()  # the architecture, next to the weights
    from oodscope.training import load_model

    model = load_model(model_path)
    images, labels = _digits("test", 0, 4)
    from oodscope import extract

    logits = extract(model, _model_inputs(images, framework)).logits
    assert float((logits.argmax(axis=1) == labels).mean()) == pytest.approx(accuracy, abs=5e-5)


def test_round_trip_fit_calibrate_bench_score(trained, tmp_path, capsys):
    framework, _, model_path, _ = trained
    model = str(model_path)

    # fit, calibrated
    det_path = tmp_path / "knn.oodscope"
    args = ["fit", "--model", model, "--detector", "KNN(k=5)", "--data", TRAIN]
    code, out, err = _run(capsys, *args, "--calibrate", TEST, "--tpr", "0.9", "--out", str(det_path))
    assert code == 0, err
    n_test = int(np.sum(load_named("digits", "test").labels < 5))
    assert out.splitlines()[0].startswith("Fitted KNN(k=5) on ")
    assert f"Calibrated on {n_test} samples of {TEST}: threshold" in out and "keeps 90%" in out
    assert out.splitlines()[-1] == f"Saved to {det_path}"

    from oodscope.training import load_model

    loaded_model = load_model(model_path)
    detector = load(det_path, model=loaded_model)
    id_x = _model_inputs(_digits("test", 0, 4)[0], framework)
    assert np.mean(detector.score(id_x).scores <= detector.threshold_) >= 0.9

    # bench, saving the fitted detectors
    report, saved = tmp_path / "report", tmp_path / "detectors"
    args = ["bench", "--model", model, "--fit", TRAIN, "--id", TEST, "--ood", f"near={OOD}"]
    args += [
        "--detectors",
        "GEN()",
        "KNN(k=5)",
        "KNN()",
        "--out",
        f"{report}/",
        "--save-detectors",
        str(saved),
    ]
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    assert "KNN(k=5)" in out and "KNN()" in out  # each named by its repr: KNN() is KNN(k=50), the default
    assert f"Report written to {report}/ (report.md, report.csv, report.json" in out and "//" not in out
    assert sorted(p.name for p in saved.iterdir()) == ["GEN.oodscope", "KNN.oodscope", "KNN_k=5.oodscope"]
    rows = json.loads((report / "report.json").read_text())
    assert "KNN(k=5)" in json.dumps(rows)

    # score with the calibrated detector: one pass gives scores, decisions and p-values
    ood_x = _model_inputs(_digits("test", 5, 9)[0], framework)
    code, out, err = _run(capsys, "score", "--detector", str(det_path), "--model", model, "--inputs", OOD)
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["index", "score", "is_ood", "p_value"] and len(table) == len(ood_x)
    np.testing.assert_allclose([float(r["score"]) for r in table], detector.score(ood_x).scores, rtol=1e-6)
    np.testing.assert_array_equal([int(r["is_ood"]) for r in table], detector.predict(ood_x))
    np.testing.assert_allclose([float(r["p_value"]) for r in table], detector.pvalues(ood_x), rtol=1e-12)
    assert np.mean([int(r["is_ood"]) for r in table]) > 0.3  # digits 5-9 are mostly flagged

    # score with a detector from bench: not calibrated, so scores only
    out_file = tmp_path / "scores.csv"
    args = ["score", "--detector", str(saved / "KNN_k=5.oodscope"), "--model", model, "--inputs", OOD]
    code, out, err = _run(capsys, *args, "--out", str(out_file))
    assert code == 0 and out == ""
    table = list(csv.DictReader(out_file.open()))
    assert list(table[0]) == ["index", "score"]
    np.testing.assert_allclose([float(r["score"]) for r in table], detector.score(ood_x).scores, rtol=1e-6)


def test_score_refuses_another_model_unless_told(trained, tmp_path, capsys):
    framework, folder, model_path, _ = trained
    det_path = tmp_path / "gen.oodscope"
    assert (
        _run(capsys, "fit", "--model", str(model_path), "--detector", "GEN()", "--out", str(det_path))[0] == 0
    )

    from oodscope.training import load_model

    other = load_model(model_path)  # the same architecture, its head changed: as if trained further
    if framework == "keras":
        from oodscope.training import save_tf_model

        head = other.get_layer("head")
        head.bias.assign(head.bias.numpy() + 0.5)
        other_path = save_tf_model(other, tmp_path / "other.keras")
    else:
        import torch

        from oodscope.training import save_torch_model

        with torch.no_grad():
            other.head.bias += 0.5
        other_path = save_torch_model(other, tmp_path / "other.pt")
    args = ["score", "--detector", str(det_path), "--model", str(other_path), "--inputs", OOD]
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    assert f"{other_path} is not the model that {det_path} was fitted on" in err
    assert "the head's weights differ" in err and "--ignore-model-mismatch" in err
    code, out, err = _run(capsys, *args, "--ignore-model-mismatch")
    assert code == 0 and out.startswith("index,score\n")


def test_model_files_of_the_wrong_framework_or_broken(trained, tmp_path, capsys):
    framework, _, model_path, _ = trained
    GEN().save(tmp_path / "gen.oodscope")
    content = model_path.read_bytes()
    wrong = tmp_path / ("model.pt" if framework == "keras" else "model.keras")
    wrong.write_bytes(content)
    truncated = tmp_path / model_path.name
    truncated.write_bytes(content[: len(content) // 2])
    cases = {
        wrong: f"but its name ends in '{wrong.suffix}'",
        truncated: "truncated or damaged",
        tmp_path / "gen.oodscope": "it is a saved oodscope detector",
        tmp_path / "missing.pt": "no model file at",
    }
    for path, message in cases.items():
        args = ["score", "--detector", str(tmp_path / "gen.oodscope"), "--model", str(path), "--inputs", OOD]
        code, out, err = _run(capsys, *args)
        assert code == 2 and message in err, (path, err)
        assert "h5py" not in err and "weights_only" not in err


def test_arguments_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    import oodscope._cli_tasks as tasks

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(tasks, "load_model", no_model)
    model = tmp_path / "m.pt"
    model.write_bytes(b"not read")
    bench = ["bench", "--model", str(model), "--id", TEST, "--ood", f"near={OOD}", "--detectors", "GEN()"]
    fit = ["fit", "--model", str(model), "--detector", "GEN()", "--out", str(tmp_path / "d.oodscope")]
    score = ["score", "--detector", str(tmp_path / "d.oodscope"), "--model", str(model), "--inputs", OOD]
    cases = [
        ([*bench, "--batch-size", "0"], "argument --batch-size: must be an int in [1, inf); got '0'"),
        ([*bench, "--scale", "0"], "argument --scale: must be a float in (0, inf); got '0'"),
        ([*bench, "--scale", "nan"], "argument --scale: must be a float in (0, inf)"),
        ([*bench[:4], "mnsit:test:0-4", *bench[5:]], "--id: unknown data set 'mnsit'"),
        ([*bench[:4], "digits:tset", *bench[5:]], "--id: digits has the splits train, test; got 'tset'"),
        ([*bench[:4], "digits:test:0-12", *bench[5:]], "--id: digits has classes 0 to 9"),
        ([*bench[:4], "digits:test:a-b", *bench[5:]], "cannot read the classes"),
        ([*bench[:6], "noise", *bench[7:]], "argument --ood: takes NAME=SPEC"),
        ([*bench[:6], f"far={tmp_path / 'none.npz'}", *bench[7:]], "--ood far: no data file at"),
        ([*bench[:-1], "Nope()"], "Unknown detector 'Nope'"),
        ([*bench[:-1], "GEN(gamma=-1)"], "In 'GEN(gamma=-1)'"),
        ([*fit, "--calibrate", TEST, "--tpr", "1.5"], "argument --tpr: must be a float in (0, 1]"),
        ([*fit, "--tpr", "0.9"], "argument --tpr: sets the threshold of --calibrate"),
        ([*fit[:4], "KNN()", *fit[5:]], "KNN() learns from in-distribution data: give --data"),
        (["train", "--data", TRAIN, "--out", str(tmp_path / "m.onnx")], "--out"),
        (["train", "--data", TRAIN, "--out", str(tmp_path / "m.pt"), "--epochs", "0"], "--epochs"),
        ([*score, "--batch-size", "-3"], "argument --batch-size: must be an int in [1, inf)"),
        (score, "--detector: no detector file"),
        ([*bench[:2], str(tmp_path / "nothing.keras"), *bench[3:]], "--model: no model file at"),
        ([*bench[:2], str(model), *bench[3:]], "--model: Cannot read"),  # checked, never loaded
    ]
    for argv, message in cases:  # argparse's own errors (flags, data specs) exit; the others return 2
        try:
            code = main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        out, err = capsys.readouterr()
        assert code == 2 and message in err, (argv, err)
        assert out == ""


def test_every_detector_failing_is_a_failed_run(tmp_path, capsys, caplog):
    torch = pytest.importorskip("torch")
    from oodscope.training import save_torch_model, toy_mlp

    torch.manual_seed(0)
    model = save_torch_model(toy_mlp((1, 8, 8), 10, framework="torch"), tmp_path / "mlp.pt")
    args = ["bench", "--model", str(model), "--fit", TRAIN, "--id", TEST, "--ood", f"near={OOD}"]
    args += ["--out", str(tmp_path / "r"), "--detectors", "Mahalanobis(layers=['nope'])"]
    code, out, err = _run(capsys, *args)
    assert code == 1
    assert "every detector failed" in err and "no layer 'nope'" in err
    assert "Report written to" in out
    caplog.clear()
    code, out, err = _run(capsys, *args, "GEN()")  # one failure of two: a warning (on stderr), exit 0
    assert code == 0 and "GEN()" in out and "failed to extract" in caplog.text


def test_a_bad_layer_in_fit_is_a_bad_argument(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from oodscope.training import save_torch_model, toy_mlp

    torch.manual_seed(0)
    model = save_torch_model(toy_mlp((1, 8, 8), 10, framework="torch"), tmp_path / "mlp.pt")
    args = ["fit", "--model", str(model), "--detector", "Mahalanobis(layers=['nope'])", "--data", TRAIN]
    code, _, err = _run(capsys, *args, "--out", str(tmp_path / "m.oodscope"))
    assert code == 2 and "The model has no layer 'nope'" in err


def test_verbose_goes_before_or_after_the_command(capsys):
    from oodscope.cli import build_parser

    assert build_parser().parse_args(["-v", "bench"]).verbose is True
    assert build_parser().parse_args(["bench", "-v"]).verbose is True
    assert not hasattr(build_parser().parse_args(["bench"]), "verbose")


def test_parse_detector_builds_known_classes_from_literals():
    det = parse_detector("ReAct(GEN(gamma=0.5), percentile=80)")
    assert isinstance(det, ReAct) and isinstance(det.detector, GEN)
    assert det.detector.gamma == 0.5 and det.percentile == 80
    assert isinstance(parse_detector("KNN"), KNN)
    assert repr(parse_detector("KNN(k=50)")) == "KNN()"  # the repr shows what differs from the defaults
    with pytest.raises(UsageError, match="Unknown detector 'Nope'"):
        parse_detector("Nope()")
    with pytest.raises(UsageError, match="Cannot read the detector"):
        parse_detector("GEN(gamma=__import__('os').system('true'))")
    with pytest.raises(UsageError, match="literals or detectors"):
        parse_detector("GEN(gamma=x)")
    with pytest.raises(UsageError, match="unexpected keyword"):
        parse_detector("GEN(gama=1)")
    with pytest.raises(UsageError, match="'k' parameter of KNN"):
        parse_detector("KNN(k=0)")


def test_data_specs_and_file_names():
    spec = parse_data_spec("mnist:train:0-4", "--fit")
    assert (spec.name, spec.split, spec.classes, spec.path) == ("mnist", "train", (0, 1, 2, 3, 4), None)
    assert parse_data_spec("Fashion-MNIST", "--ood").name == "fashion_mnist"
    assert parse_data_spec("mnist:test:1,3", "--id").classes == (1, 3)
    assert detector_file_name("KNN(k=5)") == "KNN_k=5.oodscope"
    assert (
        detector_file_name("ReAct(GEN(gamma=0.5), percentile=80)")
        == "ReAct_GEN_gamma=0.5_,_percentile=80.oodscope"
    )
    assert detector_file_name("mymod:Mine(k=3)") == "mymod_Mine_k=3.oodscope"


def test_pvalues_from_scores_match_the_detector(toy):
    det = GEN().fit(toy["fit"]).calibrate(toy["id"])
    scores = det.score(toy["ood"]).scores
    np.testing.assert_array_equal(conformal_pvalues(scores, det.calibration_scores_), det.pvalues(toy["ood"]))
    assert conformal_pvalues(np.array([np.inf]), np.arange(9.0))[0] == pytest.approx(0.1)
    assert conformal_pvalues(np.array([-np.inf]), np.arange(9.0))[0] == 1.0


# --- torch on .npz files ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pytest.importorskip("torch")
    from oodscope.training import save_torch_model, train_torch_model

    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    inputs = (rng.random((300, 8, 8, 1)) * 60 + labels[:, None, None, None] * 60).astype(np.uint8)
    model = train_torch_model(
        (np.moveaxis(inputs, -1, 1) / 255.0, labels), model="toy_mlp", input_shape=(1, 8, 8), epochs=3, seed=0
    )
    model_path = save_torch_model(model, folder / "mlp.pt")
    np.savez(folder / "fit.npz", x=inputs[:200], y=labels[:200])
    np.savez(folder / "id.npz", x=inputs[200:], y=labels[200:])
    np.savez(folder / "ood.npz", x=rng.integers(0, 255, (80, 8, 8, 1)).astype(np.uint8))
    return folder, model_path


def test_bench_from_a_config_file(saved, tmp_path):
    folder, model_path = saved
    config = {
        "model": str(model_path),
        "id": str(folder / "id.npz"),
        "ood": {"noise": str(folder / "ood.npz")},
        "detectors": ["Energy()"],
        "out": str(tmp_path / "r"),
        "batch_size": 50,
    }
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["bench", "--config", str(tmp_path / "c.json")]) == 0
    assert (tmp_path / "r" / "report.csv").read_text().count("\n") >= 2
    config["batch_size"] = "50"
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["bench", "--config", str(tmp_path / "c.json")]) == 2


def test_score_of_npz_files_agrees_with_python(saved, tmp_path):
    from oodscope.training import load_torch_model

    folder, model_path = saved
    model = load_torch_model(model_path)
    fit = np.load(folder / "fit.npz")
    x = np.moveaxis(fit["x"], -1, 1) / 255.0
    det = GEN().fit(model, batch_size=64).calibrate(x[:100].astype(np.float32))
    det.save(tmp_path / "gen.oodscope")
    out = tmp_path / "scores.csv"
    args = ["score", "--detector", str(tmp_path / "gen.oodscope"), "--model", str(model_path)]
    assert main([*args, "--inputs", str(folder / "ood.npz"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 80 and set(rows[0]) == {"index", "score", "is_ood", "p_value"}
    ood = np.moveaxis(np.load(folder / "ood.npz")["x"], -1, 1).astype(np.float32) / 255
    expected = det.score(ood).scores
    np.testing.assert_allclose([float(row["score"]) for row in rows], expected, rtol=1e-5)
    np.testing.assert_array_equal([int(row["is_ood"]) for row in rows], det.predict(ood))
    # channels-first files are left as they are; float files with --scale 1
    np.savez(tmp_path / "first.npz", x=ood)
    assert main([*args, "--inputs", str(tmp_path / "first.npz"), "--scale", "1", "--out", str(out)]) == 0
    np.testing.assert_allclose(
        [float(row["score"]) for row in csv.DictReader(out.open())], expected, rtol=1e-5
    )


def test_exit_codes(saved, tmp_path, capsys):
    folder, model_path = saved
    assert main(["bench", "--model", str(model_path)]) == 2
    assert "bench needs 'id'" in capsys.readouterr().err
    bad = tmp_path / "bad.oodscope"
    bad.write_bytes(b"\x80\x04junk")
    code = main(
        ["score", "--detector", str(bad), "--model", str(model_path), "--inputs", str(folder / "ood.npz")]
    )
    assert code == 2 and "never loads" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--batch-size", "x"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11")
def test_a_model_error_is_reported_with_its_batch(saved, tmp_path, capsys):
    from oodscope.training import load_torch_model

    folder, model_path = saved
    GEN().fit(load_torch_model(model_path)).save(tmp_path / "gen.oodscope")
    np.savez(tmp_path / "small.npz", x=np.zeros((10, 6, 6, 1), np.uint8))  # 6x6 images for an 8x8 model
    args = ["score", "--detector", str(tmp_path / "gen.oodscope"), "--model", str(model_path)]
    assert main([*args, "--inputs", str(tmp_path / "small.npz"), "--out", str(tmp_path / "s.csv")]) == 1
    err = capsys.readouterr().err
    assert "error: RuntimeError" in err and "batch 1: inputs of shape (10, 1, 6, 6)" in err, err


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs Keras")
def test_legacy_h5_models_go_through_the_cli(tmp_path, capsys):
    model = str(tmp_path / "mlp.h5")
    args = ["train", "--data", TRAIN, "--out", model, "--architecture", "toy_mlp", "--epochs", "1"]
    assert _run(capsys, *args)[0] == 0
    detector = str(tmp_path / "react.oodscope")
    args = ["fit", "--model", model, "--detector", "ReAct(Energy())", "--data", TRAIN, "--out", detector]
    assert _run(capsys, *args)[0] == 0
    code, out, err = _run(capsys, "score", "--detector", detector, "--model", model, "--inputs", OOD)
    assert code == 0 and out.startswith("index,score\n") and err == ""


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".pt"])
def test_mnist_round_trip(suffix, tmp_path, capsys):
    """The README's commands on real data, one epoch of the small MLP: digits 0-4 against 5-9 and fashion."""
    if importlib.util.find_spec("keras" if suffix == ".keras" else "torch") is None:
        pytest.skip("framework not installed")
    if not mnist_and_fashion_installed():
        pytest.skip("MNIST / Fashion-MNIST not installed")
    model = str(tmp_path / f"toy{suffix}")
    args = [
        "train",
        "--data",
        "mnist:train:0-4",
        "--out",
        model,
        "--architecture",
        "toy_mlp",
        "--epochs",
        "1",
    ]
    code, out, err = _run(capsys, *args, "--validation", "mnist:test:0-4")
    assert code == 0, err
    assert float(out.splitlines()[1].rsplit(" ", 1)[1]) > 0.95
    report = tmp_path / "report"
    args = ["bench", "--model", model, "--fit", "mnist:train:0-4", "--id", "mnist:test:0-4", "--ood"]
    args += ["near=mnist:test:5-9", "far=fashion_mnist:test", "--detectors", "GEN()", "KNN(k=10)"]
    code, out, err = _run(capsys, *args, "--out", str(report), "--save-detectors", str(tmp_path / "dets"))
    assert code == 0, err
    rows = [
        r for r in json.loads((report / "report.json").read_text())["rows"] if r["detector"] == "KNN(k=10)"
    ]
    assert {row["ood"]: row["auroc"] for row in rows}["far"] > 0.8  # one epoch of an MLP: far above chance
    code, out, err = _run(
        capsys, "score", "--detector", str(tmp_path / "dets" / "KNN_k=10.oodscope"), "--model", model,
        "--inputs", "fashion_mnist:test",
    )  # fmt: skip
    assert code == 0 and len(out.splitlines()) == 10_001
