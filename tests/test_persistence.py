"""transferkit.persistence: files that load without running code, written atomically."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

import transferkit
from transferkit import FineTunedClassifier, KerasFeatureExtractor, persistence
from transferkit.cache import MemoryFeatureCache
from transferkit.persistence import FileVersionWarning, ModelFileError, load, save

from .conftest import REPO, noise_images

# Random VGG16 weights at 32 px: fast to build, and unlike random MobileNets their features
# are far from zero, so "identical output" compares real numbers.
EXTRACTOR = {"backbone": "VGG16", "weights": None, "input_size": 32, "random_state": 0,
             "cache": None}
# Cut after block 2: a small file for the tests that damage one.
SMALL = {**EXTRACTOR, "cut": "block2"}
CLASSIFIER = {"backbone": "VGG16", "weights": None, "cut": "block3", "input_size": 32,
              "epochs": 1, "head_epochs": 3, "batch_size": 8, "random_state": 0}


@pytest.fixture(scope="module")
def data():
    return noise_images(8)


@pytest.fixture(scope="module")
def extractor():
    return KerasFeatureExtractor(**EXTRACTOR).fit()


@pytest.fixture(scope="module")
def small():
    return KerasFeatureExtractor(**SMALL).fit()


@pytest.fixture(scope="module")
def classifier(data):
    return FineTunedClassifier(**CLASSIFIER).fit(*data)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make any use of pickle while loading fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("transferkit.persistence.load unpickled something")

    class RefusingUnpickler(pickle.Unpickler):  # still a class: modules subclass it
        __init__ = refuse

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rewrite(path: Path, *, manifest=None, members=None) -> None:
    """Rewrite a saved file as a tamperer would: a valid zip with edited content.

    ``manifest`` edits the parsed manifest in place; ``members`` maps member names to new
    content (None removes one).
    """
    contents = _members(path)
    if manifest is not None:
        parsed = json.loads(contents["manifest.json"])
        manifest(parsed)
        contents["manifest.json"] = json.dumps(parsed).encode()
    for name, data in (members or {}).items():
        if data is None:
            contents.pop(name)
        else:
            contents[name] = data
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def _set_digest(manifest: dict, member: str, data: bytes) -> None:
    import hashlib

    manifest["members"][member] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------ round trips
def test_fitted_extractor_round_trip_gives_identical_features(extractor, data, tmp_path,
                                                             no_unpickling):
    X, _ = data
    path = save(extractor, tmp_path / "extractor.tkz")
    assert path == tmp_path / "extractor.tkz"
    assert sorted(_members(path)) == ["manifest.json", "weights.npz"]
    restored = load(path)
    assert type(restored) is KerasFeatureExtractor
    assert restored.get_params() == extractor.get_params()
    for name in ("backbone_name_", "cut_layer_", "input_size_", "preprocessing_",
                 "n_features_out_", "_fingerprint_"):
        assert getattr(restored, name) == getattr(extractor, name), name
    assert restored.model_ is not extractor.model_
    np.testing.assert_array_equal(restored.transform(X), extractor.transform(X))
    # Same estimator, same versions: the same bytes (fixed zip timestamps, stable order).
    assert save(extractor, tmp_path / "again.tkz").read_bytes() == path.read_bytes()


def test_fitted_classifier_round_trip_gives_identical_predictions(classifier, data, tmp_path,
                                                                  no_unpickling):
    X, _ = data
    restored = load(save(classifier, tmp_path / "classifier.tkz"))
    assert type(restored) is FineTunedClassifier
    assert restored.get_params() == classifier.get_params()
    np.testing.assert_array_equal(restored.classes_, classifier.classes_)
    assert restored.classes_.dtype == classifier.classes_.dtype
    assert restored.history_ == classifier.history_
    for name in ("backbone_name_", "cut_layer_", "freeze_layer_", "input_size_", "cached_",
                 "n_trainable_weights_", "_seeds"):
        assert getattr(restored, name) == getattr(classifier, name), name
    np.testing.assert_array_equal(restored.predict_proba(X), classifier.predict_proba(X))
    np.testing.assert_array_equal(restored.predict(X), classifier.predict(X))


def test_round_trip_in_a_fresh_process_without_network(extractor, classifier, data, tmp_path):
    X, _ = data
    save(extractor, tmp_path / "extractor.tkz")
    save(classifier, tmp_path / "classifier.tkz")
    np.savez(tmp_path / "expected.npz", X=X, features=extractor.transform(X),
             proba=classifier.predict_proba(X))
    script = textwrap.dedent(f"""
        import pickle
        import numpy as np
        from transferkit.persistence import load

        def refuse(*args, **kwargs):
            raise AssertionError("load unpickled something")
        class RefusingUnpickler(pickle.Unpickler):  # still a class: Keras subclasses it
            __init__ = refuse
        pickle.load, pickle.loads, pickle.Unpickler = refuse, refuse, RefusingUnpickler

        expected = np.load({str(tmp_path / "expected.npz")!r})
        extractor = load({str(tmp_path / "extractor.tkz")!r})
        classifier = load({str(tmp_path / "classifier.tkz")!r})
        assert np.array_equal(extractor.transform(expected["X"]), expected["features"])
        assert np.array_equal(classifier.predict_proba(expected["X"]), expected["proba"])
        print("identical")
    """)
    # No network and an empty Keras home: loading must not fetch anything.
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty_keras_home"),
           "PYTHONPATH": str(REPO), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical" in result.stdout


@pytest.mark.parametrize("estimator", [
    KerasFeatureExtractor("VGG16", weights=Path("/models/vgg16.weights.h5"), input_size=(32, 48),
                          backbone_kwargs={"classifier_activation": None}, cut=-3,
                          pooling=None, cache="/tmp/features"),
    FineTunedClassifier("VGG16", augment=("flip", "zoom"), class_weight={0: 1.0, 1: 2.5},
                        learning_rate=np.float64(3e-4), random_state=np.int64(7)),
], ids=["extractor", "classifier"])
def test_unfitted_estimators_are_saved_as_parameters_only(estimator, tmp_path, no_unpickling):
    path = save(estimator, tmp_path / "unfitted.tkz")
    assert sorted(_members(path)) == ["manifest.json"]
    manifest = json.loads(_members(path)["manifest.json"])
    assert manifest["fitted"] is False and manifest["members"] == {}
    restored = load(path)
    assert not hasattr(restored, "model_")
    # Tuples stay tuples, paths paths, integer dict keys integers.
    params = estimator.get_params()
    assert restored.get_params() == params
    for name, value in params.items():
        assert type(restored.get_params()[name]) is type(value) or isinstance(
            value, np.generic), name
    if isinstance(restored, FineTunedClassifier):
        with pytest.raises(NotFittedError):
            restored.predict(np.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("value", [
    (1, 2.5, "a", None, True),
    {"x": [1, {2: (3, 4)}], 5: b"\x00\xff"},
    [float("nan"), float("inf"), -float("inf"), 1e-300],
    np.array([["bright", "dark"], ["a", "bb"]]),
    np.array(["aa", "bb", 3], dtype=object),
    np.array([[1, 2], [3, 4]], dtype=np.int16),
    np.array([True, False]),
    np.arange(0, dtype=np.float32),
    Path("some/where.h5"),
], ids=lambda value: type(value).__name__)
def test_values_survive_the_json_encoding(value):
    encoded = json.loads(json.dumps(persistence._encode(value, "v"), allow_nan=False))
    decoded = persistence._decode(encoded, "v")
    assert type(decoded) is type(value)
    if isinstance(value, np.ndarray):
        assert decoded.dtype == value.dtype and decoded.shape == value.shape
        np.testing.assert_array_equal(decoded, value)
    elif isinstance(value, list):
        np.testing.assert_array_equal(decoded, value)
    else:
        assert decoded == value


# ------------------------------------------------------------------ refused on save
def test_values_with_no_plain_data_form_are_refused_naming_the_parameter(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs), name="mine")
    cases = [
        (KerasFeatureExtractor(model), "backbone", "model.save"),
        (KerasFeatureExtractor(random_state=np.random.RandomState(0)), "random_state",
         "integer seed"),
        (KerasFeatureExtractor(cache=MemoryFeatureCache()), "cache", "joblib.dump"),
        (FineTunedClassifier(class_weight={"a": object()}), "class_weight", "joblib.dump"),
    ]
    for estimator, name, hint in cases:
        with pytest.raises(ValueError, match=name) as info:
            save(estimator, tmp_path / "refused.tkz")
        assert hint in str(info.value) and "joblib" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_only_the_two_estimators_are_saved(tmp_path):
    class Mine(KerasFeatureExtractor):
        pass

    for estimator in (LogisticRegression(), Mine()):
        with pytest.raises(TypeError, match="joblib.dump"):
            save(estimator, tmp_path / "other.tkz")
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        save(KerasFeatureExtractor(), tmp_path)


# ------------------------------------------------------------------ damaged files
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_a_truncated_file_fails_clearly(small, tmp_path, keep):
    path = save(small, tmp_path / "small.tkz")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="truncated"):
        load(path)


def test_a_flipped_byte_in_the_weights_fails_clearly(small, tmp_path):
    path = save(small, tmp_path / "small.tkz")
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("weights.npz")
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:
                                                          info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="'weights.npz' is damaged"):
        load(path)


def test_weights_replaced_inside_a_valid_zip_fail_the_digest(small, tmp_path):
    # A rewritten zip has valid CRCs: only the SHA-256 recorded at save time catches it.
    path = save(small, tmp_path / "small.tkz")
    weights = bytearray(_members(path)["weights.npz"])
    weights[len(weights) // 2] ^= 0x01
    _rewrite(path, members={"weights.npz": bytes(weights)})
    with pytest.raises(ModelFileError, match="SHA-256"):
        load(path)


def test_weights_of_another_architecture_fail_to_load(small, classifier, tmp_path):
    path = save(small, tmp_path / "small.tkz")
    other = _members(save(classifier, tmp_path / "classifier.tkz"))
    other_manifest = json.loads(other["manifest.json"])

    def swap(manifest):
        manifest["weights"] = other_manifest["weights"]
        manifest["members"] = other_manifest["members"]

    _rewrite(path, manifest=swap, members={"weights.npz": other["weights.npz"]})
    with pytest.raises(ModelFileError, match="could not rebuild the KerasFeatureExtractor"):
        load(path)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.update(estimator="FineTunedClassifier"), "do not fit"),
    (lambda m: m.update(estimator="sklearn.linear_model.LogisticRegression"),
     "does not load"),
    (lambda m: m.update(estimator="os.system"), "does not load"),
    (lambda m: m.update(format="something.else"), "format"),
    (lambda m: m.update(fitted=False), "exactly"),
    (lambda m: m["params"].update(batch_size={"__type__": "set", "items": [1]}),
     "unknown type tag 'set'"),
    (lambda m: m["params"].update(unknown_parameter=1), "do not fit"),
    (lambda m: m["attributes"].pop("_fingerprint_"), "could not rebuild"),
    (lambda m: m["weights"][0].update(shape=[1]), "weight 0 has shape"),
], ids=["other-class", "not-allow-listed", "module-path", "format", "fitted-flag",
        "unknown-tag", "unknown-parameter", "missing-attribute", "weight-shape"])
def test_an_edited_manifest_fails_clearly(small, tmp_path, edit, match):
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, manifest=edit)
    with pytest.raises(ModelFileError, match=match):
        load(path)


def test_members_added_or_removed_fail_clearly(small, tmp_path):
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, members={"extra.py": b"print('hello')"})
    with pytest.raises(ModelFileError, match="extra.py"):
        load(path)
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, members={"weights.npz": None})
    with pytest.raises(ModelFileError, match="exactly"):
        load(path)


def test_files_that_are_not_transferkit_files_say_what_they_are(small, tmp_path):
    joblib.dump(small, tmp_path / "model.joblib")
    with pytest.raises(ModelFileError, match="joblib.load"):
        load(tmp_path / "model.joblib")
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ModelFileError, match="manifest.json"):
        load(tmp_path / "model.keras")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.tkz")


def test_the_expected_class_is_checked(small, tmp_path):
    path = save(small, tmp_path / "small.tkz")
    assert type(load(path, estimator_class=KerasFeatureExtractor)) is KerasFeatureExtractor
    with pytest.raises(ModelFileError, match="holds a KerasFeatureExtractor, not a "
                                             "FineTunedClassifier"):
        load(path, estimator_class=FineTunedClassifier)


# ------------------------------------------------------------------ versions
def test_a_newer_format_version_is_refused(small, tmp_path):
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, manifest=lambda m: m.update(format_version=persistence.FORMAT_VERSION + 1,
                                               transferkit_version="9.0.0"))
    with pytest.raises(ModelFileError, match=r"format version 2.*'9\.0\.0'.*Upgrade"):
        load(path)


def test_another_transferkit_version_warns_naming_both(small, data, tmp_path):
    X, _ = data
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, manifest=lambda m: m.update(transferkit_version="0.0.1"))
    with pytest.warns(FileVersionWarning, match=rf"transferkit 0\.0\.1 .*transferkit "
                                                rf"{transferkit.__version__}") as record:
        restored = load(path)
    ours = [w for w in record if issubclass(w.category, FileVersionWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__  # points at the caller of load
    np.testing.assert_array_equal(restored.transform(X), small.transform(X))


# ------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("failure", ["writing", "replacing"])
def test_a_failed_save_leaves_the_previous_file_intact(small, classifier, tmp_path,
                                                       monkeypatch, failure):
    path = save(small, tmp_path / "model.tkz")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    if failure == "replacing":
        monkeypatch.setattr(os, "replace", crash)
    else:
        real = persistence._zip_info

        def crash_on_weights(name):  # the manifest is written, the weights are not
            return crash() if name == "weights.npz" else real(name)

        monkeypatch.setattr(persistence, "_zip_info", crash_on_weights)
    with pytest.raises(OSError, match="simulated crash"):
        save(classifier, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.tkz"]  # no temporary file left
    assert path.read_bytes() == before
    assert type(load(path)) is KerasFeatureExtractor


def test_a_saved_file_keeps_the_mode_of_the_file_it_replaces(small, tmp_path):
    path = tmp_path / "model.tkz"
    path.write_bytes(b"old")
    path.chmod(0o640)
    save(small, path)
    assert path.stat().st_mode & 0o777 == 0o640
    assert save(small, tmp_path / "new.tkz").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ no code on load
class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: the proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_smuggled_into_the_parameters_is_never_unpickled(small, tmp_path):
    import base64

    marker = tmp_path / "code-ran"
    payload = base64.b64encode(pickle.dumps(_TouchOnUnpickle(marker))).decode()
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, manifest=lambda m: m["params"].update(
        random_state={"__type__": "pickle", "data": payload}))
    with pytest.raises(ModelFileError, match="unknown type tag 'pickle'"):
        load(path)
    assert not marker.exists()


def test_a_pickled_object_array_in_the_weights_is_never_unpickled(small, tmp_path):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    np.savez(buffer, w00000=np.array([_TouchOnUnpickle(marker)], dtype=object))
    weights = buffer.getvalue()
    path = save(small, tmp_path / "small.tkz")

    def smuggle(manifest):
        manifest["weights"] = [{"shape": [1], "dtype": "|O"}]
        _set_digest(manifest, "weights.npz", weights)

    _rewrite(path, manifest=smuggle, members={"weights.npz": weights})
    with pytest.raises(ModelFileError, match="cannot be read as plain arrays"):
        load(path)
    assert not marker.exists()
    # The payload is live: NumPy with pickles allowed runs it.
    np.load(io.BytesIO(weights), allow_pickle=True)["w00000"]
    assert marker.exists()


def test_estimator_save_method_and_top_level_load(small, tmp_path):
    path = small.save(tmp_path / "small.tkz")
    assert type(transferkit.load(path)) is KerasFeatureExtractor
