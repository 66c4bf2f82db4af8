"""Tests for transferkit.backbones: the registry and building backbones."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

from transferkit.backbones import (
    BackboneSpec,
    build_backbone,
    get_backbone_spec,
    list_backbones,
    resolve_input_size,
)
from transferkit.cut_points import list_cut_points, resolve_cut

# Smallest input side each keras.applications module accepts; the rest take 32.
SMALL_SIZE = {"xception": 71, "inception_v3": 75, "inception_resnet_v2": 75}

# Backbones taking roughly 4 s or more to build on CPU even at 32 px (measured on
# 2 cores: NASNetLarge ~9 s, EfficientNetV2L ~9 s, EfficientNetB7 ~7 s, ConvNeXtXLarge
# ~6 s, ...). Every family keeps at least one member outside this set.
HEAVY = {
    "ConvNeXtBase",
    "ConvNeXtLarge",
    "ConvNeXtSmall",
    "ConvNeXtXLarge",
    "DenseNet169",
    "DenseNet201",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "EfficientNetV2L",
    "EfficientNetV2M",
    "EfficientNetV2S",
    "NASNetLarge",
    "ResNet101",
    "ResNet101V2",
    "ResNet152",
    "ResNet152V2",
}


def _installed_constructor_names() -> set[str]:
    """Every public capitalised callable of keras.applications and its submodules."""
    import keras

    owners = [keras.applications] + [
        value
        for attr, value in vars(keras.applications).items()
        if not attr.startswith("_") and inspect.ismodule(value)
    ]
    return {
        attr
        for owner in owners
        for attr, value in vars(owner).items()
        if attr[:1].isupper() and callable(value) and not inspect.isclass(value)
    }


def _all_names() -> list[str]:
    return [entry["name"] for entry in list_backbones()]


def _small_size(name: str) -> int:
    return SMALL_SIZE.get(get_backbone_spec(name).module, 32)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    import keras

    keras.backend.clear_session()


def _same_weights(expected, actual) -> bool:
    a, b = expected.get_weights(), actual.get_weights()
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- registry


def test_registry_covers_every_installed_constructor():
    assert set(_all_names()) == _installed_constructor_names()


def test_registry_has_no_duplicates_from_alias_modules():
    names = _all_names()
    assert len(names) == len(set(names))
    assert get_backbone_spec("ResNet50").module == "resnet"


def test_list_backbones_is_sorted_by_name_with_documented_keys():
    entries = list_backbones()
    assert [e["name"] for e in entries] == sorted(e["name"] for e in entries)
    for entry in entries:
        assert set(entry) == {"name", "module", "default_size", "feature_width", "preprocessing"}


@pytest.mark.parametrize("name", _all_names())
def test_every_backbone_has_callable_preprocess_input_and_positive_sizes(name):
    spec = get_backbone_spec(name)
    assert callable(spec.preprocess_input)
    assert callable(spec.constructor)
    assert spec.default_size > 0
    assert spec.feature_width > 0
    assert spec.preprocessing in {"caffe", "tf", "torch", "in_model"}


def test_constructor_is_the_keras_applications_function():
    import keras

    assert get_backbone_spec("MobileNetV3Small").constructor is keras.applications.MobileNetV3Small
    assert get_backbone_spec("ResNet50").preprocess_input is (
        keras.applications.resnet.preprocess_input
    )


@pytest.mark.parametrize(
    ("name", "default_size", "feature_width", "preprocessing"),
    [
        ("VGG16", 224, 512, "caffe"),
        ("ResNet50", 224, 2048, "caffe"),
        ("ResNet50V2", 224, 2048, "tf"),
        ("Xception", 299, 2048, "tf"),
        ("InceptionV3", 299, 2048, "tf"),
        ("InceptionResNetV2", 299, 1536, "tf"),
        ("NASNetLarge", 331, 4032, "tf"),
        ("DenseNet121", 224, 1024, "torch"),
        ("EfficientNetB7", 600, 2560, "in_model"),
        ("EfficientNetV2S", 384, 1280, "in_model"),
        ("ConvNeXtTiny", 224, 768, "in_model"),
        ("MobileNetV3Large", 224, 960, "in_model"),
    ],
)
def test_spec_values_match_keras(name, default_size, feature_width, preprocessing):
    spec = get_backbone_spec(name)
    assert (spec.default_size, spec.feature_width, spec.preprocessing) == (
        default_size,
        feature_width,
        preprocessing,
    )


@pytest.mark.parametrize("spelling", ["resnet50", "ResNet50", "RESNET50", " ResNet50 "])
def test_backbone_names_resolve_case_insensitively(spelling):
    assert get_backbone_spec(spelling).name == "ResNet50"


def test_unknown_backbone_error_suggests_close_match():
    with pytest.raises(ValueError, match="list_backbones") as excinfo:
        get_backbone_spec("resnet5")
    assert "'resnet5'" in str(excinfo.value)
    assert "ResNet50" in str(excinfo.value)


def test_non_string_backbone_name_raises_type_error():
    with pytest.raises(TypeError, match="ResNet50"):
        get_backbone_spec(50)


def test_spec_is_frozen():
    spec = get_backbone_spec("VGG16")
    assert isinstance(spec, BackboneSpec)
    with pytest.raises(AttributeError):
        spec.default_size = 32


def test_importing_transferkit_does_not_import_keras():
    code = (
        "import sys, transferkit, transferkit.backbones, transferkit.cut_points; "
        "sys.exit(int('keras' in sys.modules or 'tensorflow' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------------- input size


@pytest.mark.parametrize(
    ("input_size", "expected"),
    [(None, (224, 224)), (96, (96, 96)), ((64, 80), (64, 80)), ([64, 80], (64, 80))],
)
def test_resolve_input_size_normalises_to_height_width(input_size, expected):
    assert resolve_input_size(input_size, 224) == expected


@pytest.mark.parametrize(
    "input_size", [0, -3, (64,), (64, 64, 3), (64, 0), (64.0, 64), "224", 2.5, True]
)
def test_resolve_input_size_rejects_invalid_values(input_size):
    with pytest.raises(ValueError, match="input_size"):
        resolve_input_size(input_size, 224)


def test_too_small_input_size_names_backbone_and_minimum():
    with pytest.raises(ValueError, match=r"InceptionV3.*75x75") as excinfo:
        build_backbone("InceptionV3", weights=None, input_size=(50, 50))
    assert "(50, 50)" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, ValueError)


# ----------------------------------------------------------------- every backbone builds


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in _all_names()],
)
def test_every_backbone_builds_at_table_width_with_resolvable_cut_points(name):
    spec = get_backbone_spec(name)
    side = _small_size(name)
    model = build_backbone(name, weights=None, input_size=(side, side))

    assert tuple(model.input.shape) == (None, side, side, 3)
    assert model.output.shape[-1] == spec.feature_width
    cut_points = list_cut_points(name)
    assert len(cut_points) >= 2
    for cut in cut_points:
        layer = resolve_cut(model, cut, spec.module)
        assert layer.output.shape[-1] > 0
    # The deepest block is the backbone's output.
    assert resolve_cut(model, cut_points[-1], spec.module) is model.layers[-1]


# --------------------------------------------------------------------- backbone_kwargs


def test_backbone_kwargs_reach_the_constructor():
    default = build_backbone("MobileNet", weights=None, input_size=64)
    slim = build_backbone(
        "MobileNet", weights=None, input_size=64, backbone_kwargs={"alpha": 0.25}
    )
    assert default.output.shape[-1] == 1024
    assert slim.output.shape[-1] == 256


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("include_top", "cut"),
        ("weights", "weights="),
        ("input_shape", "input_size"),
        ("input_tensor", "input_size"),
        ("pooling", "pool"),
        ("classes", "classes"),
    ],
)
def test_reserved_backbone_kwarg_raises_with_alternative(key, hint):
    with pytest.raises(ValueError, match=key) as excinfo:
        build_backbone("MobileNet", weights=None, input_size=64, backbone_kwargs={key: None})
    assert hint in str(excinfo.value)


def test_unknown_backbone_kwarg_raises_listing_accepted_ones():
    with pytest.raises(TypeError, match="alpha"):
        build_backbone("ResNet50", weights=None, input_size=32, backbone_kwargs={"alpha": 0.5})


# ---------------------------------------------------------------------- weights files


@pytest.fixture
def tiny_mobilenet():
    """MobileNet alpha=0.25 at 64 px with seeded random weights, and its build arguments."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(
        include_top=False, weights=None, input_shape=(64, 64, 3), alpha=0.25
    )
    return model, {"input_size": (64, 64), "backbone_kwargs": {"alpha": 0.25}}


def _save_legacy_h5_weights(model, path) -> None:
    """Write a weights-only legacy HDF5 file, the format of keras.applications' downloads."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


def _build_from(path, build_args):
    import keras

    # A fresh session gives the new model different auto-generated names than the
    # saved one had, as when the file was written by another process.
    keras.utils.set_random_seed(1)
    return build_backbone("MobileNet", weights=path, **build_args)


def test_weights_from_legacy_h5_file_are_loaded(tiny_mobilenet, tmp_path):
    source, build_args = tiny_mobilenet
    path = tmp_path / "mobilenet_no_top.h5"
    _save_legacy_h5_weights(source, path)
    assert _same_weights(source, _build_from(path, build_args))


def test_weights_from_legacy_hdf5_suffix_are_loaded(tiny_mobilenet, tmp_path):
    source, build_args = tiny_mobilenet
    path = tmp_path / "mobilenet_no_top.hdf5"
    _save_legacy_h5_weights(source, path)
    assert _same_weights(source, _build_from(path, build_args))


def test_weights_from_keras3_weights_h5_file_are_loaded(tiny_mobilenet, tmp_path):
    source, build_args = tiny_mobilenet
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    assert _same_weights(source, _build_from(path, build_args))


def test_weights_from_keras_model_file_are_loaded(tiny_mobilenet, tmp_path):
    source, build_args = tiny_mobilenet
    path = tmp_path / "mobilenet.keras"
    source.save(path)
    assert _same_weights(source, _build_from(path, build_args))


def test_random_weights_differ_from_a_loaded_file(tiny_mobilenet):
    # Guards the equality tests above against passing on identical random inits.
    source, build_args = tiny_mobilenet
    assert not _same_weights(source, _build_from(None, build_args))


@pytest.mark.parametrize("writer", ["legacy_weights", "legacy_full_model"])
def test_legacy_h5_saved_with_top_loads_into_model_without_top(tmp_path, writer):
    import keras

    keras.utils.set_random_seed(0)
    with_top = keras.applications.MobileNet(
        include_top=True, weights=None, input_shape=(64, 64, 3), alpha=0.25, classes=10
    )
    path = tmp_path / "mobilenet_with_top.h5"
    if writer == "legacy_weights":
        _save_legacy_h5_weights(with_top, path)
    else:
        with_top.save(path)  # Keras 3 writes the legacy HDF5 model format for ".h5"

    model = _build_from(path, {"input_size": 64, "backbone_kwargs": {"alpha": 0.25}})
    weighted = [layer for layer in model.layers if layer.weights]
    assert len(weighted) < len([layer for layer in with_top.layers if layer.weights])
    for layer in weighted:
        assert _same_weights(with_top.get_layer(layer.name), layer), layer.name


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5", ".keras"])
def test_weights_file_missing_layers_raises_naming_them(tiny_mobilenet, tmp_path, suffix):
    import keras

    source, build_args = tiny_mobilenet
    partial = keras.Model(source.inputs, source.get_layer("conv_pw_5_relu").output)
    path = tmp_path / f"partial{suffix}"
    if suffix == ".h5":
        _save_legacy_h5_weights(partial, path)
    elif suffix == ".weights.h5":
        partial.save_weights(path)
    else:
        partial.save(path)
    with pytest.raises(ValueError, match="conv_dw_6") as excinfo:
        _build_from(path, build_args)
    assert str(path) in str(excinfo.value)


def test_missing_weights_path_raises_file_not_found(tmp_path):
    missing = tmp_path / "nowhere" / "weights.h5"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_backbone("MobileNet", weights=missing, input_size=64)


def test_missing_weights_path_given_as_string_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.weights.h5"):
        build_backbone("MobileNet", weights=str(tmp_path / "absent.weights.h5"), input_size=64)


@pytest.mark.parametrize("weights", ["imagenet21k", "random", "ImageNet"])
def test_unknown_weights_string_raises_saying_what_is_accepted(weights):
    with pytest.raises(ValueError, match="'imagenet'.*None") as excinfo:
        build_backbone("MobileNet", weights=weights, input_size=64)
    assert repr(weights) in str(excinfo.value)


def test_weights_file_of_unsupported_format_raises(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"not weights")
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        build_backbone("MobileNet", weights=path, input_size=64)


def test_legacy_h5_with_top_and_other_auto_generated_names_loads_by_position(tmp_path):
    import keras

    # InceptionV3 names most layers automatically ("conv2d_7"): building the
    # no-top model in the same session gives them different numbers than in the
    # file, so only the file's layer order (top last) can match them.
    keras.utils.set_random_seed(0)
    with_top = keras.applications.InceptionV3(
        include_top=True, weights=None, input_shape=(75, 75, 3), classes=10
    )
    path = tmp_path / "inception_v3_with_top.h5"
    _save_legacy_h5_weights(with_top, path)

    model = build_backbone("InceptionV3", weights=path, input_size=75)
    source_layers = [layer for layer in with_top.layers if layer.weights]
    weighted = [layer for layer in model.layers if layer.weights]
    assert weighted[0].name != source_layers[0].name
    for source, layer in zip(source_layers, weighted, strict=False):
        assert _same_weights(source, layer), layer.name


def test_a_constructor_unknown_to_the_table_still_registers(monkeypatch):
    import keras

    from transferkit import backbones

    def TinyNet(include_top=True, weights=None, input_shape=None, pooling=None, **kwargs):  # noqa: N802
        inputs = keras.Input(input_shape)
        outputs = keras.layers.Conv2D(7, 3, name="tiny_conv")(inputs)
        return keras.Model(inputs, outputs, name="tinynet")

    TinyNet.__module__ = "keras.src.applications.tinynet"
    monkeypatch.setattr(keras.applications, "TinyNet", TinyNet, raising=False)
    # A Keras with a constructor more is a Keras release transferkit.backbone_table does not
    # describe: the registry walks keras.applications.
    monkeypatch.setattr(backbones, "describes_installed_keras", lambda: False)
    backbones._registry.cache_clear()
    backbones._spec_for.cache_clear()
    try:
        spec = get_backbone_spec("tinynet")
        assert (spec.name, spec.default_size, spec.preprocessing) == ("TinyNet", 224, "unknown")
        assert spec.feature_width == 7  # measured by building it
        assert "TinyNet" in _all_names()
    finally:
        monkeypatch.undo()
        backbones._registry.cache_clear()
        backbones._spec_for.cache_clear()


def test_failed_imagenet_download_raises_weights_unavailable(tmp_path):
    # An empty Keras cache and an unreachable proxy: exactly an offline user's machine.
    script = (
        "from transferkit.backbones import build_backbone, WeightsUnavailableError\n"
        "try:\n"
        "    build_backbone('MobileNet', weights='imagenet', input_size=224,\n"
        "                   backbone_kwargs={'alpha': 0.5})\n"
        "except WeightsUnavailableError as exc:\n"
        "    print('UNAVAILABLE', exc)\n"
    )
    env = {**os.environ, "KERAS_HOME": str(tmp_path),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert "UNAVAILABLE" in result.stdout, result.stderr[-2000:]
    assert str(tmp_path / "models") in result.stdout
    assert "weights=None" in result.stdout
