"""The command line: bench and score on a small saved torch model, exit codes, safe detector parsing."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from oodscope import GEN, KNN, ReAct
from oodscope._cli_tasks import UsageError, parse_detector
from oodscope.cli import main

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
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


def test_parse_detector_builds_known_classes_from_literals():
    det = parse_detector("ReAct(GEN(gamma=0.5), percentile=80)")
    assert isinstance(det, ReAct) and isinstance(det.detector, GEN)
    assert det.detector.gamma == 0.5 and det.percentile == 80
    assert isinstance(parse_detector("KNN"), KNN)
    with pytest.raises(UsageError, match="Unknown detector 'Nope'"):
        parse_detector("Nope()")
    with pytest.raises(UsageError, match="Cannot read the detector"):
        parse_detector("GEN(gamma=__import__('os').system('true'))")
    with pytest.raises(UsageError, match="literals or detectors"):
        parse_detector("GEN(gamma=x)")
    with pytest.raises(UsageError, match="unexpected keyword"):
        parse_detector("GEN(gama=1)")


def test_bench_writes_a_report(saved, tmp_path, capsys):
    folder, model_path = saved
    out = tmp_path / "report"
    code = main(
        [
            "bench",
            "--model", str(model_path),
            "--fit", str(folder / "fit.npz"),
            "--id", str(folder / "id.npz"),
            "--ood", f"noise={folder / 'ood.npz'}",
            "--detectors", "GEN()", "MSP()", "KNN(k=5)",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert "| GEN()" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.csv", "report.json", "report.html"}
    rows = json.loads((out / "report.json").read_text())
    assert "KNN(k=5)" in json.dumps(rows)


def test_bench_from_a_config_file(saved, tmp_path):
    folder, model_path = saved
    config = {
        "model": str(model_path),
        "id": str(folder / "id.npz"),
        "ood": {"noise": str(folder / "ood.npz")},
        "detectors": ["Energy()"],
        "out": str(tmp_path / "r"),
    }
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["bench", "--config", str(tmp_path / "c.json")]) == 0
    assert (tmp_path / "r" / "report.csv").read_text().count("\n") >= 2


def test_score_writes_csv_with_decisions(saved, tmp_path):
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


def test_exit_codes(saved, tmp_path, capsys):
    folder, model_path = saved
    assert main(["bench", "--model", str(model_path)]) == 2
    assert "bench needs 'id'" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--detector",
                str(tmp_path / "missing"),
                "--model",
                str(model_path),
                "--inputs",
                "x.npz",
            ]
        )
        == 2
    )
    bad = tmp_path / "bad.oodscope"
    bad.write_bytes(b"\x80\x04junk")
    code = main(
        ["score", "--detector", str(bad), "--model", str(model_path), "--inputs", str(folder / "ood.npz")]
    )
    assert code == 1 and "never loads" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11")
def test_a_model_error_is_reported_with_its_batch(saved, tmp_path, capsys):
    folder, model_path = saved
    GEN().fit(torch.nn.Linear(2, 2)).save(tmp_path / "gen.oodscope")
    np.savez(tmp_path / "small.npz", x=np.zeros((10, 6, 6, 1), np.uint8))  # 6x6 images for an 8x8 model
    args = ["score", "--detector", str(tmp_path / "gen.oodscope"), "--model", str(model_path)]
    assert main([*args, "--inputs", str(tmp_path / "small.npz"), "--out", str(tmp_path / "s.csv")]) == 1
    err = capsys.readouterr().err
    assert "error: RuntimeError" in err and "batch 1: inputs of shape (10, 1, 6, 6)" in err, err
