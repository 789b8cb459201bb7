"""Saving and loading detectors: no pickle, clear errors for foreign or damaged files, exact round trips."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from oodscope import GEN, Features, Mahalanobis, ReAct, load
from oodscope.persistence import DetectorFileError

from conftest import make_toy

TOY = make_toy()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "det.oodscope"
    payload.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(DetectorFileError, match="a pickle, which oodscope never loads"):
        load(payload)
    assert not marker.exists()


def test_foreign_truncated_and_tampered_files(tmp_path):
    path = ReAct(GEN()).fit(TOY["fit"]).calibrate(TOY["id"]).save(tmp_path / "react.oodscope")
    data = path.read_bytes()

    truncated = tmp_path / "truncated.oodscope"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DetectorFileError, match="damaged or truncated"):
        load(truncated)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DetectorFileError, match="not a zip archive"):
        load(text)

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(DetectorFileError, match="not an oodscope detector file"):
        load(foreign)

    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("detector.json"))
        entries = {name: archive.read(name) for name in archive.namelist()}
    newer = tmp_path / "newer.oodscope"
    meta["format_version"] = 99
    with zipfile.ZipFile(newer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, json.dumps(meta) if name == "detector.json" else content)
    with pytest.raises(DetectorFileError, match="format 99, .* Upgrade oodscope"):
        load(newer)

    missing = tmp_path / "missing.oodscope"
    with zipfile.ZipFile(missing, "w") as archive:
        for name, content in entries.items():
            if not name.endswith(".npy"):
                archive.writestr(name, content)
    with pytest.raises(DetectorFileError, match="lacks the array"):
        load(missing)

    bad_params = tmp_path / "bad_params.oodscope"
    meta["format_version"] = 1
    meta["detector"]["params"]["__items__"][1][1] = -5.0  # percentile
    with zipfile.ZipFile(bad_params, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, json.dumps(meta) if name == "detector.json" else content)
    with pytest.raises(ValueError, match="The 'percentile' parameter of ReAct"):
        load(bad_params)

    meta["detector"]["params"]["__items__"][1][1] = 90.0
    for name in ("score", "_model"):  # state may only restore learned attributes (name_)
        meta["detector"]["state"]["__items__"][0][0] = name
        forged = tmp_path / "forged_state.oodscope"
        with zipfile.ZipFile(forged, "w") as archive:
            for entry, content in entries.items():
                archive.writestr(entry, json.dumps(meta) if entry == "detector.json" else content)
        with pytest.raises(DetectorFileError, match="Malformed detector state"):
            load(forged)


def test_flipped_array_bytes_are_detected(tmp_path):
    path = ReAct().fit(TOY["fit"]).calibrate(TOY["id"]).save(tmp_path / "react.oodscope")
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(next(n for n in archive.namelist() if n.endswith(".npy")))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    tampered = tmp_path / "tampered.oodscope"
    tampered.write_bytes(bytes(raw))
    with pytest.raises(DetectorFileError):
        load(tampered)


def test_model_level_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    det = ReAct(GEN(), percentile=80).fit(model, x, batch_size=16).calibrate(x[:20])
    loaded = load(det.save(tmp_path / "react.oodscope"), model=model)
    np.testing.assert_array_equal(loaded.score(x).scores, det.score(x).scores)
    assert loaded._bound.batch_size == 16
    assert loaded.detector.get_params() == det.detector.get_params()
    with pytest.raises(TypeError, match=r"no model is known.*load\(path, model=model\)"):
        load(tmp_path / "react.oodscope").score(x)


def test_unfitted_and_stateless_detectors_save_too(tmp_path):
    loaded = load(GEN(gamma=0.3, k=4).save(tmp_path / "gen.oodscope"))
    assert isinstance(loaded, GEN) and (loaded.gamma, loaded.k) == (0.3, 4)


def test_threshold_uses_float_tpr_like_the_metrics():
    det = GEN().fit(TOY["fit"])
    scores = np.sort(det.score(TOY["id"]).scores)
    det.calibrate(TOY["id"], tpr=1.0)
    assert det.threshold_ == scores[-1]
    det.calibrate(TOY["id"], tpr=0.5)
    assert det.threshold_ == scores[int(np.ceil(0.5 * scores.size)) - 1]
    with pytest.raises(ValueError, match="tpr must be in \\(0, 1\\]"):
        det.calibrate(TOY["id"], tpr=95)
    with pytest.raises(Exception, match="no threshold yet"):
        GEN().predict(TOY["id"])


def test_arrays_come_back_in_their_memory_order(tmp_path):
    rng = np.random.default_rng(0)
    h = rng.normal(size=(300, 20))
    det = Mahalanobis().fit(Features(layers={"penultimate": h}, labels=rng.integers(0, 3, 300)))
    assert det.whitening_.flags.f_contiguous and not det.whitening_.flags.c_contiguous
    loaded = load(det.save(tmp_path / "m.oodscope"))
    assert loaded.whitening_.flags.f_contiguous and np.array_equal(loaded.whitening_, det.whitening_)
    test = Features(layers={"penultimate": rng.normal(size=(50, 20))})
    np.testing.assert_array_equal(loaded.score(test).scores, det.score(test).scores)


def _replace_array(path, target, attribute, array):
    """Copy the detector file ``path`` to ``target`` with the array saved for ``attribute`` replaced."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(entries["detector.json"])
    state = dict(meta["detector"]["state"]["__items__"])
    key = state[attribute]["__array__"]
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    entries[f"{key}.npy"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


@pytest.mark.parametrize(
    "attribute, array",
    [
        ("class_means_", np.zeros((4, 3))),  # another width than the covariance and the fit features
        ("calibration_scores_", np.zeros((2, 2))),  # a declared 1-D array saved 2-D
        ("whitening_", np.zeros((5, 2))),  # a whitening matrix of another width
    ],
    ids=["means-width", "calibration-2d", "whitening-width"],
)
def test_arrays_that_do_not_fit_the_detector_are_refused_at_load(tmp_path, attribute, array):
    path = Mahalanobis().fit(TOY["fit"]).calibrate(TOY["id"]).save(tmp_path / "maha.oodscope")
    tampered = _replace_array(path, tmp_path / "tampered.oodscope", attribute, array)
    with pytest.raises(DetectorFileError, match=r"tampered\.oodscope holds a state that does not fit"):
        load(tampered)


def test_a_scalar_saved_as_a_list_is_refused_at_load(tmp_path):
    path = GEN().fit(TOY["fit"]).calibrate(TOY["id"]).save(tmp_path / "gen.oodscope")
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(entries["detector.json"])
    state = meta["detector"]["state"]["__items__"]
    next(item for item in state if item[0] == "threshold_")[1] = [0.5, 0.7]
    entries["detector.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "tampered.oodscope", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(DetectorFileError, match=r"GEN\.threshold_ has shape \(2,\), but it must have 0 axes"):
        load(tmp_path / "tampered.oodscope")


def _two_layers(features: Features) -> Features:
    """The toy Features with a second layer (a fixed non-negative projection of the penultimate one)."""
    projection = np.abs(np.random.default_rng(1).normal(size=(features.layer("penultimate").shape[1], 12)))
    return Features(
        logits=features.logits,
        layers={**features.layers, "block": features.layer("penultimate") @ projection},
        labels=features.labels,
        head_weight=features.head_weight,
        head_bias=features.head_bias,
    )


def _variants():
    from oodscope import ASH, KNN, MSP, RMDS, SCALE, SHE, Energy, ViM
    from oodscope.aggregation import FisherAggregator, MeanNormalizedAggregator, StdNormalizedAggregator

    yield "ReAct(GEN)", ReAct(GEN(gamma=0.5))
    yield "ASH(MSP)", ASH(MSP(), percentile=80)
    yield "SCALE(Energy)", SCALE(Energy())
    yield "ViM(dim=0.9)", ViM(dim=0.9)
    for aggregator in (FisherAggregator(), StdNormalizedAggregator(), MeanNormalizedAggregator()):
        for detector in (KNN(k=5), Mahalanobis(), RMDS(), SHE()):
            detector.set_params(layers=["penultimate", "block"], aggregator=aggregator)
            yield f"{type(detector).__name__}+{type(aggregator).__name__}", detector


@pytest.mark.parametrize("detector", [d for _, d in _variants()], ids=[name for name, _ in _variants()])
def test_every_kind_of_fitted_state_round_trips_bit_identically(detector, tmp_path):
    fit, id_, ood = (_two_layers(TOY[key]) for key in ("fit", "id", "ood"))
    detector.fit(fit).calibrate(id_)
    loaded = load(detector.save(tmp_path / "det.oodscope"))
    np.testing.assert_array_equal(loaded.score(ood).scores, detector.score(ood).scores)
    np.testing.assert_array_equal(loaded.pvalues(ood), detector.pvalues(ood))
    assert loaded.threshold_ == detector.threshold_


def test_an_array_that_would_broadcast_silently_is_refused_at_load(tmp_path):
    from oodscope import ViM

    path = ViM(dim=8).fit(TOY["fit"]).save(tmp_path / "vim.oodscope")
    tampered = _replace_array(path, tmp_path / "tampered.oodscope", "origin_", np.zeros(1))
    with pytest.raises(DetectorFileError, match=r"ViM\.origin_ has shape \(1,\).*axis 'D'"):
        load(tampered)
