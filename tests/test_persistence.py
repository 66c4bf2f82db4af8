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
import time
import warnings
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

import transferkit
from transferkit import (
    FineTunedClassifier,
    KerasFeatureExtractor,
    model_file,
    persistence,
    plain_data,
)
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
# MobileNet (alpha 0.25) cut after its first block: an 8 kB file whose network rebuilds in a
# fraction of a second, for the tests that load many damaged copies of one file.
TINY = {"backbone": "MobileNet", "weights": None, "random_state": 0, "input_size": 32,
        "backbone_kwargs": {"alpha": 0.25}, "cut": "conv_pw_1", "cache": None}
FIXTURES = Path(__file__).parent / "fixtures"


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
def tiny():
    return KerasFeatureExtractor(**TINY).fit()


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


def _rewrite(path: Path, *, manifest=None, members=None, seal=True) -> None:
    """Rewrite a saved file as a tamperer would: a valid zip with edited content.

    ``manifest`` edits the parsed manifest in place; ``members`` maps member names to new
    content (None removes one). ``seal=True`` recomputes manifest.sha256, as a crafted file
    does, so that the checks behind the digest are what the test reaches; ``seal=False``
    keeps the saved one, as a zip tool editing manifest.json does.
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
    if seal and "manifest.sha256" in contents:
        contents["manifest.sha256"] = model_file.digest_line(contents["manifest.json"])
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
    assert sorted(_members(path)) == ["manifest.json", "manifest.sha256", "weights.npz"]
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
                          pooling=None, cache=None),
    FineTunedClassifier("VGG16", augment=("flip", "zoom"), class_weight={0: 1.0, 1: 2.5},
                        learning_rate=np.float64(3e-4), random_state=np.int64(7)),
], ids=["extractor", "classifier"])
def test_unfitted_estimators_are_saved_as_parameters_only(estimator, tmp_path, no_unpickling):
    path = save(estimator, tmp_path / "unfitted.tkz")
    assert sorted(_members(path)) == ["manifest.json", "manifest.sha256"]
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
    encoded = json.loads(json.dumps(plain_data.encode(value, "v"), allow_nan=False))
    decoded = plain_data.decode(encoded, "v")
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


def test_an_extractor_with_several_cuts_is_saved_and_loaded(data, tmp_path):
    X, _ = data
    extractor = KerasFeatureExtractor(**{**EXTRACTOR, "cut": ["block1", "block2"]}).fit()
    save(extractor, tmp_path / "cuts.tkz")
    loaded = load(tmp_path / "cuts.tkz")
    assert loaded.cut == ["block1", "block2"]
    assert np.array_equal(loaded.transform(X), extractor.transform(X))
    assert list(loaded.get_feature_names_out()) == list(extractor.get_feature_names_out())


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
    held = len(classifier.model_.get_weights())
    with pytest.raises(ModelFileError, match=f"holds {held} weight arrays, but the Keras"
                                             "FeatureExtractor its parameters describe has 8"):
        load(path)


def test_a_manifest_edited_with_a_zip_tool_is_refused(small, tmp_path):
    # pooling "avg" -> "max": a valid manifest giving other features. A zip tool rewrites
    # the member and its CRC, and leaves manifest.sha256 as it was.
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, manifest=lambda m: m["params"].update(pooling="max"), seal=False)
    with pytest.raises(ModelFileError, match="manifest.json does not match the SHA-256 "
                                             "digest in manifest.sha256"):
        load(path)


def test_a_file_of_the_current_format_without_the_manifest_digest_is_refused(small, tmp_path):
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, members={"manifest.sha256": None})
    with pytest.raises(ModelFileError, match="has no manifest.sha256, which every file of "
                                             f"format version {persistence.FORMAT_VERSION} "
                                             "holds"):
        load(path)


def _npz(arrays: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    """An .npz of raw .npy members, written member by member, headers as given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in arrays.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def _npy(shape: tuple, data: bytes, dtype: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def _npy_members(path: Path) -> dict[str, bytes]:
    """The .npy members of a saved file's weights.npz, by array name."""
    with zipfile.ZipFile(io.BytesIO(_members(path)["weights.npz"])) as archive:
        return {name[:-4]: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("declared_by", ["npy-header", "npy-header-and-manifest"])
def test_a_weight_declaring_2_40_values_is_refused_before_anything_is_allocated(
        small, tmp_path, declared_by):
    # 2**40 float32 values are 4 TiB: loading must refuse the header, not try to allocate.
    path = save(small, tmp_path / "small.tkz")
    arrays = _npy_members(path)
    arrays["w00000"] = _npy((2**40,), b"\0" * 64)
    weights = _npz(arrays)

    def craft(manifest):
        _set_digest(manifest, "weights.npz", weights)
        if declared_by == "npy-header-and-manifest":
            manifest["weights"][0]["shape"] = [2**40]

    _rewrite(path, manifest=craft, members={"weights.npz": weights})
    with pytest.raises(ModelFileError, match=r"1099511627776.*needs shape \(3, 3, 3, 64\)"):
        load(path)


@pytest.mark.parametrize("where", ["weights.npz in the file", "an array in weights.npz"])
def test_a_compressed_member_is_refused_without_being_decompressed(small, tmp_path,
                                                                  monkeypatch, where):
    # A deflated member can expand to gigabytes (a zip bomb): its size is refused before
    # any of it is decompressed.
    path = save(small, tmp_path / "small.tkz")
    if where == "an array in weights.npz":
        arrays = _npy_members(path)
        arrays["w00000"] = _npy((3, 3, 3, 64), b"\0" * (2**26))  # 64 MiB, deflated to 64 kB
        weights = _npz(arrays, zipfile.ZIP_DEFLATED)
        _rewrite(path, manifest=lambda m: _set_digest(m, "weights.npz", weights),
                 members={"weights.npz": weights})
    else:
        contents = _members(path)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in contents.items():
                archive.writestr(name, data)

    def no_decompression(*args, **kwargs):
        raise AssertionError("load decompressed a member")

    monkeypatch.setattr(zipfile, "_get_decompressor", no_decompression)
    with pytest.raises(ModelFileError, match="compressed"):
        load(path)


def test_every_single_byte_flip_raises_model_file_error_or_changes_nothing(tiny, tmp_path):
    # Whatever byte is damaged, the only outcomes are a ModelFileError or, for a byte that
    # no reader looks at (a creation system, a file attribute), the same features.
    X = noise_images(1)[0]
    original = save(tiny, tmp_path / "tiny.tkz").read_bytes()
    expected = tiny.transform(X)
    damaged = tmp_path / "damaged.tkz"
    for offset in range(len(original)):
        data = bytearray(original)
        data[offset] ^= 0xFF
        damaged.write_bytes(bytes(data))
        try:
            restored = load(damaged)
        except ModelFileError:
            continue
        np.testing.assert_array_equal(restored.transform(X), expected,
                                      err_msg=f"byte {offset} flipped")


def test_attributes_that_do_not_fit_the_parameters_are_refused_at_load(tmp_path):
    # A 96 px network under parameters saying 64 px: refused at load, naming what differs,
    # rather than failing inside TensorFlow at the first transform.
    wide = KerasFeatureExtractor(**{**TINY, "input_size": 96}).fit()
    path = save(wide, tmp_path / "wide.tkz")
    _rewrite(path, manifest=lambda m: m["params"].update(input_size=64))
    with pytest.raises(ModelFileError, match=r"says input_size_ = \(96, 96\), but the "
                                             r"KerasFeatureExtractor its parameters describe "
                                             r"has input_size_ = \(64, 64\)"):
        load(path)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.update(estimator="FineTunedClassifier"), "does not take"),
    (lambda m: m.update(estimator="sklearn.linear_model.LogisticRegression"),
     "does not load"),
    (lambda m: m.update(estimator="os.system"), "does not load"),
    (lambda m: m.update(format="something.else"), "format"),
    (lambda m: m.update(fitted=False), "exactly"),
    (lambda m: m["params"].update(batch_size={"__type__": "set", "items": [1]}),
     "unknown type tag 'set'"),
    (lambda m: m["params"].update(unknown_parameter=1), "unknown_parameter, which"),
    (lambda m: m["attributes"].pop("_fingerprint_"), "lacks _fingerprint_"),
    (lambda m: m["weights"][0].update(shape=[1]),
     r"weight 0 \(block1_conv1/kernel\) has shape \(1,\)"),
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
    newer = persistence.FORMAT_VERSION + 1
    with pytest.raises(ModelFileError, match=rf"format version {newer}.*'9\.0\.0'.*Upgrade"):
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


# ------------------------------------------------------------------ files of earlier versions
# Saved by the code of an earlier commit with tests/fixtures/make_fixtures.py (see the README
# there): 9769c3a, before the feature cache (pickles only: save() came later); 64e4ccd, the
# last commit before the central crop; format2, the last before crop_fraction="auto";
# format3, the last before label_smoothing and layer_decay; format4, the last before
# head_blocks; format5, the last before validation_folds and temperature_; format6, the
# last before batchnorm_statistics; format7, the current format.
OLD_FILES = [("64e4ccd", "extractor.tkz"), ("64e4ccd", "classifier.tkz")]
FORMAT_2_FILES = [("format2", "extractor.tkz"), ("format2", "classifier.tkz")]
FORMAT_3_FILES = [("format3", "extractor.tkz"), ("format3", "classifier.tkz")]
FORMAT_4_FILES = [("format4", "extractor.tkz"), ("format4", "classifier.tkz")]
FORMAT_5_FILES = [("format5", "extractor.tkz"), ("format5", "classifier.tkz")]
FORMAT_6_FILES = [("format6", "extractor.tkz"), ("format6", "classifier.tkz")]
OLD_PICKLES = [("9769c3a", "extractor.joblib"), ("9769c3a", "classifier.joblib"),
               ("64e4ccd", "extractor.joblib"), ("64e4ccd", "classifier.joblib"),
               ("format2", "extractor.joblib"), ("format2", "classifier.joblib"),
               ("format3", "extractor.joblib"), ("format3", "classifier.joblib"),
               ("format4", "extractor.joblib"), ("format4", "classifier.joblib"),
               ("format5", "extractor.joblib"), ("format5", "classifier.joblib"),
               ("format6", "extractor.joblib"), ("format6", "classifier.joblib")]
CURRENT = [("format7", name) for name in ("extractor.tkz", "classifier.tkz",
                                         "extractor.joblib", "classifier.joblib")]


def _fixture_id(value) -> str:
    return "/".join(value) if isinstance(value, tuple) else str(value)


def _saved_outputs(folder: str, name: str, model) -> tuple[np.ndarray, np.ndarray]:
    inputs = np.load(FIXTURES / folder / "inputs.npy")
    if name.startswith("extractor"):
        return model.transform(inputs), np.load(FIXTURES / folder / "features.npy")
    return model.predict_proba(inputs), np.load(FIXTURES / folder / "proba.npy")


@pytest.mark.parametrize(("folder", "name"), OLD_FILES, ids=_fixture_id)
def test_files_of_format_1_give_the_outputs_they_gave_when_saved(folder, name):
    with pytest.warns(FileVersionWarning, match="format version 1"):
        model = load(FIXTURES / folder / name)
    np.testing.assert_allclose(*_saved_outputs(folder, name, model), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("folder", "name"), FORMAT_2_FILES, ids=_fixture_id)
def test_files_of_format_2_give_the_outputs_they_gave_when_saved(folder, name):
    with pytest.warns(FileVersionWarning, match="format version 2") as record:
        model = load(FIXTURES / folder / name)
    np.testing.assert_allclose(*_saved_outputs(folder, name, model), rtol=0, atol=1e-6)
    assert "no digest" not in str(record[0].message)  # format 2 files have one


# What a classifier of each older format gets for the parameters and attributes added after
# it (pickling.VALUES_BEFORE_THEY_EXISTED).
BEFORE_THEY_EXISTED = {
    3: lambda model: (model.label_smoothing, model.layer_decay) == (0.0, 1.0),
    4: lambda model: model.head_blocks == 1 and model.head_layers_ == [model.cut_layer_],
    5: lambda model: (model.validation_folds, model.temperature_) == (None, 1.0),
    6: lambda model: model.batchnorm_statistics == model.batchnorm_statistics_ == "pretrained",
}


@pytest.mark.parametrize(("folder", "name"),
                         FORMAT_3_FILES + FORMAT_4_FILES + FORMAT_5_FILES + FORMAT_6_FILES,
                         ids=_fixture_id)
def test_files_of_formats_3_to_6_give_the_outputs_they_gave_when_saved(folder, name):
    version = int(folder.removeprefix("format"))
    with pytest.warns(FileVersionWarning, match=f"format version {version}"):
        model = load(FIXTURES / folder / name)
    np.testing.assert_allclose(*_saved_outputs(folder, name, model), rtol=0, atol=1e-6)
    if name.startswith("classifier"):
        assert BEFORE_THEY_EXISTED[version](model)


def test_a_classifier_from_before_auto_framing_sees_the_crop_fraction_it_was_given():
    with pytest.warns(FileVersionWarning):
        classifier = load(FIXTURES / "format2" / "classifier.tkz")
    pickled = joblib.load(FIXTURES / "format2" / "classifier.joblib")
    for model in (classifier, pickled):
        assert model.crop_fraction_ == model.crop_fraction == 0.875


def test_a_file_of_format_1_warns_that_edits_to_it_go_unnoticed():
    with pytest.warns(FileVersionWarning, match="its manifest has no digest, so an edit to it "
                                                "would go unnoticed. Save it again"):
        load(FIXTURES / "64e4ccd" / "extractor.tkz")


@pytest.mark.parametrize(("folder", "name"), OLD_PICKLES, ids=_fixture_id)
def test_pickles_of_earlier_versions_give_the_outputs_they_gave(folder, name):
    model = joblib.load(FIXTURES / folder / name)
    np.testing.assert_allclose(*_saved_outputs(folder, name, model), rtol=0, atol=1e-6)


def test_parameters_absent_from_old_files_get_the_values_of_before_they_existed():
    with pytest.warns(FileVersionWarning):
        classifier = load(FIXTURES / "64e4ccd" / "classifier.tkz")
    pickled = joblib.load(FIXTURES / "9769c3a" / "extractor.joblib")
    assert (classifier.crop_fraction, classifier.head_views) == (1.0, 0)
    assert classifier.source_size_ == classifier.input_size_ == (32, 32)
    # The extractor came before the feature cache: nothing of it is cached.
    assert (pickled.crop_fraction, pickled.cache, pickled._fingerprint_) == (1.0, None, None)


@pytest.mark.parametrize(("folder", "name"), CURRENT, ids=_fixture_id)
def test_files_and_pickles_of_the_current_format_give_their_saved_outputs(folder, name,
                                                                         recwarn):
    model = (load if name.endswith(".tkz") else joblib.load)(FIXTURES / folder / name)
    np.testing.assert_allclose(*_saved_outputs(folder, name, model), rtol=0, atol=1e-6)
    assert not [w for w in recwarn if issubclass(w.category, FileVersionWarning)]


@pytest.mark.parametrize("name", ["extractor.tkz", "classifier.tkz"])
def test_what_save_writes_is_what_the_current_format_fixtures_hold(name, tmp_path):
    # Fails when a change to what save writes (a member, a field, a parameter or attribute)
    # was made without a new FORMAT_VERSION: bump it, give a new parameter its entry in
    # VALUES_BEFORE_THEY_EXISTED, and make fixtures of the new format (tests/fixtures).
    folder = FIXTURES / f"format{persistence.FORMAT_VERSION}"
    assert folder.is_dir(), f"no fixtures of format {persistence.FORMAT_VERSION} in {FIXTURES}"
    fixture = _members(folder / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FileVersionWarning)
        model = load(folder / name)
    current = _members(save(model, tmp_path / name))

    def layout(contents):
        manifest = json.loads(contents["manifest.json"])
        return (sorted(contents), sorted(manifest), sorted(manifest["params"]),
                sorted(manifest["attributes"]), manifest["format_version"])

    assert layout(current) == layout(fixture)


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
        real = model_file._zip_info

        def crash_on_weights(name):  # the manifest is written, the weights are not
            return crash() if name == "weights.npz" else real(name)

        monkeypatch.setattr(model_file, "_zip_info", crash_on_weights)
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


def test_a_save_removes_stale_temporaries_of_the_same_file_only(tmp_path):
    # What a process killed while saving leaves behind, an hour old or more.
    stale = tmp_path / ".model.tkz.k3x9_a2b.tmp"
    young = tmp_path / ".model.tkz.q8w7e6r5.tmp"  # a save running in another process
    other = tmp_path / ".other.tkz.k3x9_a2b.tmp"  # a temporary of another file
    for temporary in (stale, young, other):
        temporary.write_bytes(b"partial")
    old = time.time() - 2 * model_file.STALE_TEMPORARY_SECONDS
    for temporary in (stale, other):
        os.utime(temporary, (old, old))
    save(KerasFeatureExtractor(**SMALL), tmp_path / "model.tkz")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [young.name, other.name, "model.tkz"])


# ------------------------------------------------------------------ where a loaded model writes
def test_a_file_does_not_choose_the_cache_directory(small, data, tmp_path):
    X, _ = data
    directory = tmp_path / "chosen-by-the-file"
    path = save(KerasFeatureExtractor(**{**SMALL, "cache": str(directory)}).fit(),
                tmp_path / "small.tkz")
    with pytest.warns(UserWarning, match=rf"cache directory '{directory}'.*loaded with "
                                         rf"cache='memory'.*transferkit.load\(path, "
                                         rf"cache='{directory}'\)"):
        restored = load(path)
    assert restored.cache == "memory"
    restored.transform(X)
    assert not directory.exists()


def test_the_caller_of_load_chooses_the_cache(small, data, tmp_path, recwarn):
    X, _ = data
    path = save(KerasFeatureExtractor(**{**SMALL, "cache": str(tmp_path / "saved")}).fit(),
                tmp_path / "small.tkz")
    restored = load(path, cache=str(tmp_path / "mine"))
    restored.transform(X)
    assert restored.cache == str(tmp_path / "mine") and (tmp_path / "mine").is_dir()
    assert not (tmp_path / "saved").exists()
    assert not [w for w in recwarn if "cache directory" in str(w.message)]


def test_a_cache_for_a_classifier_file_is_refused(tmp_path):
    path = save(FineTunedClassifier(**CLASSIFIER), tmp_path / "classifier.tkz")
    with pytest.raises(ValueError, match="holds a FineTunedClassifier, whose cache parameter "
                                         "is not a place on disk"):
        load(path, cache="/tmp/somewhere")


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
    # The first array replaced by a pickle; the manifest still declares the network's.
    arrays = {f"w{i:05d}": w for i, w in enumerate(small.model_.get_weights())}
    np.savez(buffer, **{**arrays, "w00000": np.array([_TouchOnUnpickle(marker)], dtype=object)})
    weights = buffer.getvalue()
    path = save(small, tmp_path / "small.tkz")
    _rewrite(path, manifest=lambda m: _set_digest(m, "weights.npz", weights),
             members={"weights.npz": weights})
    with pytest.raises(ModelFileError, match=r"array 'w00000' is declared as shape \(1,\), "
                                             r"dtype \|O"):
        load(path)
    assert not marker.exists()
    # The payload is live: NumPy with pickles allowed runs it.
    np.load(io.BytesIO(weights), allow_pickle=True)["w00000"]
    assert marker.exists()


def test_estimator_save_method_and_top_level_load(small, tmp_path):
    path = small.save(tmp_path / "small.tkz")
    assert type(transferkit.load(path)) is KerasFeatureExtractor
