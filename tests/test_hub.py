"""keras-hub presets as backbones: a preset directory loaded by path gives the features
keras-hub's own pipeline gives (its image converter, its backbone, the same pooling), through
the extractor, the cache, a cut, save/load in a fresh process, and fine-tuning.

No network here: tiny random configurations are built with keras-hub and saved with
``save_to_preset``, once per session, as an offline user would bring a downloaded preset
(``tests/hub_presets.py``, the ``hub_presets`` fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
import keras  # noqa: E402

from transferkit import FineTunedClassifier, KerasFeatureExtractor, list_cut_points  # noqa: E402
from transferkit.cache import MemoryFeatureCache  # noqa: E402
from transferkit.hub_backbones import PresetUnavailableError  # noqa: E402
from transferkit.persistence import save  # noqa: E402

from .conftest import REPO  # noqa: E402
from .hub_presets import MEAN, PREFIX_TOKENS, SIZE, STD, resnet  # noqa: E402


@pytest.fixture(scope="session")
def images():
    return np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3)).astype("uint8")


def keras_hub_features(hub_presets, name, images, pooling, stage=None):
    """What keras-hub itself computes: converter, backbone (or its block ``stage``), pooling."""
    _, backbone, converter = hub_presets[name]
    tower = getattr(backbone, "vision_encoder", backbone)
    pixels = converter(images.astype("float32"))
    if stage is None:
        inputs = tower.input
        out = tower({next(iter(inputs)): pixels} if isinstance(inputs, dict) else pixels)
    elif name == "vit":
        # ViT's blocks run inside its encoder layer, whose graph has no output per block:
        # keras-hub's own layers, called up to that block.
        encoder = tower.get_layer("vit_encoder")
        out = encoder.dropout(tower.get_layer("vit_patching_and_embedding")(pixels))
        for block in encoder.encoder_layers:
            out = block(out)
            if block.name == stage:
                break
    elif hasattr(tower, "pyramid_outputs"):
        out = keras.Model(tower.inputs, tower.pyramid_outputs[stage])(pixels)
    else:
        out = keras.Model(tower.inputs, tower.get_layer(stage).output)(pixels)
    out = keras.ops.convert_to_numpy(out)
    if out.ndim == 4:
        return out.mean(axis=(1, 2))
    if out.ndim == 2:
        return out
    average = out[:, PREFIX_TOKENS[name]:].mean(axis=1)
    return {"avg": average, "cls": out[:, 0],
            "cls+avg": np.concatenate([out[:, 0], average], axis=1)}[pooling]


@pytest.mark.parametrize(("name", "pooling"), [
    ("dinov2", "cls+avg"), ("dinov2", "cls"), ("dinov2", "avg"), ("siglip", "avg"),
    ("resnet", "avg"), ("clip", "cls+avg"), ("vit", "cls+avg"), ("dinov3", "cls+avg"),
])
def test_features_of_a_preset_directory_equal_keras_hubs_own(hub_presets, images, name, pooling):
    directory = hub_presets[name][0]
    features = KerasFeatureExtractor(directory, pooling=pooling).fit_transform(images)
    expected = keras_hub_features(hub_presets, name, images, pooling)
    assert features.shape == expected.shape
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-5)


def test_a_preset_directory_is_taken_as_a_string_a_path_or_with_the_hub_prefix(hub_presets,
                                                                              images):
    from pathlib import Path

    directory = hub_presets["dinov2"][0]
    as_string = KerasFeatureExtractor(directory).fit_transform(images)
    as_path = KerasFeatureExtractor(Path(directory)).fit_transform(images)
    with_prefix = KerasFeatureExtractor(f"hub:{directory}").fit_transform(images)
    np.testing.assert_array_equal(as_path, as_string)
    np.testing.assert_array_equal(with_prefix, as_string)


@pytest.mark.parametrize("name", ["dinov2", "siglip", "clip", "vit", "dinov3"])
def test_transformer_cut_points_are_its_blocks(hub_presets, name):
    # ViT's and DINOv3's blocks too, though they run inside one encoder layer.
    assert list_cut_points(hub_presets[name][0]) == ["block1", "block2"]


def test_convnet_cut_points_are_its_feature_pyramids_levels(hub_presets):
    assert list_cut_points(hub_presets["resnet"][0]) == ["P2", "P3"]


@pytest.mark.parametrize(("name", "cut", "stage", "pooling"), [
    ("dinov2", "block1", "stage1", "avg"), ("siglip", "block1", "encoder_block_0", "avg"),
    ("resnet", "P2", "P2", "avg"),
    # The last block, before the normalisation ViT's encoder layer ends in.
    ("vit", "block2", "transformer_block_2", "cls+avg"),
    ("vit", "block1", "transformer_block_1", "avg"),
    ("dinov3", "block1", "stage1", "cls+avg"), ("dinov3", "block2", "stage2", "cls"),
])
def test_a_cut_at_block_k_is_the_output_of_block_k(hub_presets, images, name, cut, stage,
                                                   pooling):
    features = KerasFeatureExtractor(hub_presets[name][0], cut=cut,
                                     pooling=pooling).fit_transform(images)
    expected = keras_hub_features(hub_presets, name, images, pooling, stage=stage)
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-5)


def test_a_class_token_pooling_of_a_model_without_one_says_what_to_use(hub_presets, images):
    extractor = KerasFeatureExtractor(hub_presets["siglip"][0], cut="block2", pooling="cls")
    with pytest.raises(ValueError, match="has none.*pooling='avg'"):
        extractor.fit(images)


def test_another_input_size_rebuilds_a_vision_transformer_for_it(hub_presets):
    larger = np.random.default_rng(1).integers(0, 256, (2, 48, 48, 3)).astype("uint8")
    extractor = KerasFeatureExtractor(hub_presets["dinov2"][0], input_size=48)
    features = extractor.fit_transform(larger)
    # keras-hub's own backbone at that size, after the converter's scale and offset.
    backbone = keras_hub.models.Backbone.from_preset(hub_presets["dinov2"][0],
                                                     image_shape=(48, 48, 3))
    pixels = (larger / 255 - MEAN) / STD
    tokens = keras.ops.convert_to_numpy(backbone({"images": pixels.astype("float32")}))
    assert extractor.input_size_ == (48, 48)
    np.testing.assert_allclose(features, tokens[:, 3:].mean(axis=1), rtol=0, atol=1e-5)


def test_an_input_size_a_preset_cannot_take_says_to_leave_it(hub_presets):
    larger = np.zeros((2, 48, 48, 3), dtype="uint8")
    extractor = KerasFeatureExtractor(hub_presets["siglip"][0], input_size=48)
    with pytest.raises(ValueError, match="takes 32x32 images only; leave input_size=None"):
        extractor.fit(larger)


def test_weights_none_is_the_same_architecture_randomly_initialised(hub_presets, images):
    directory = hub_presets["dinov2"][0]
    preset = KerasFeatureExtractor(directory).fit(images)
    random = KerasFeatureExtractor(directory, weights=None, random_state=1).fit(images)
    assert [w.shape for w in random.model_.weights] == [w.shape for w in preset.model_.weights]
    assert not np.allclose(random.transform(images), preset.transform(images))


def test_cached_features_of_a_preset_are_identical_to_computed_ones(hub_presets, images):
    cache = MemoryFeatureCache()
    first = KerasFeatureExtractor(hub_presets["siglip"][0], cache=cache).fit_transform(images)
    again = KerasFeatureExtractor(hub_presets["siglip"][0], cache=cache).fit_transform(images)
    assert cache.hits == len(images)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(first, keras_hub_features(hub_presets, "siglip", images, "avg"),
                               rtol=0, atol=1e-5)


def test_saved_estimators_load_in_a_fresh_process_without_their_preset(hub_presets, images,
                                                                       tmp_path):
    import shutil

    # A copy of the preset, deleted before loading: the file must carry all it needs.
    directory = shutil.copytree(hub_presets["dinov2"][0], tmp_path / "dinov2")
    expected = keras_hub_features(hub_presets, "dinov2", images, "cls+avg")
    extractor = KerasFeatureExtractor(str(directory), pooling="cls+avg").fit(images)
    classifier = FineTunedClassifier(str(directory), epochs=1, head_epochs=2, batch_size=4,
                                     random_state=0).fit(images, [0, 1, 0, 1])
    save(extractor, tmp_path / "extractor.tkz")
    save(classifier, tmp_path / "classifier.tkz")
    np.savez(tmp_path / "expected.npz", X=images, features=expected,
             proba=classifier.predict_proba(images))
    shutil.rmtree(directory)
    script = textwrap.dedent(f"""
        import numpy as np
        from transferkit.persistence import load

        expected = np.load({str(tmp_path / "expected.npz")!r})
        extractor = load({str(tmp_path / "extractor.tkz")!r})
        classifier = load({str(tmp_path / "classifier.tkz")!r})
        difference = np.abs(extractor.transform(expected["X"]) - expected["features"]).max()
        assert difference < 1e-5, difference
        assert np.array_equal(classifier.predict_proba(expected["X"]), expected["proba"])
        print("same features and probabilities")
    """)
    # No network: loading must not fetch anything.
    env = {**os.environ, "PYTHONPATH": str(REPO), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same features and probabilities" in result.stdout


@pytest.mark.parametrize(("name", "stage"), [("vit", "transformer_block_1"),
                                           ("dinov3", "stage1")])
def test_a_saved_extractor_cut_at_a_block_is_rebuilt_from_its_architecture(
        hub_presets, images, tmp_path, name, stage):
    import shutil

    from transferkit.persistence import load

    directory = shutil.copytree(hub_presets[name][0], tmp_path / name)
    extractor = KerasFeatureExtractor(str(directory), cut="block1", pooling="cls+avg")
    save(extractor.fit(images), tmp_path / "extractor.tkz")
    shutil.rmtree(directory)  # what rebuilds it is the file, not the preset
    loaded = load(tmp_path / "extractor.tkz")
    np.testing.assert_allclose(loaded.transform(images),
                               keras_hub_features(hub_presets, name, images, "cls+avg", stage),
                               rtol=0, atol=1e-5)


def test_a_preset_name_that_cannot_be_downloaded_says_how_to_bring_the_directory(
        images, monkeypatch, tmp_path):
    # No internet, even on a machine that has it: every request goes to a closed port, and
    # an empty download cache.
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    started = time.monotonic()
    with pytest.raises(PresetUnavailableError) as raised:
        KerasFeatureExtractor("hub:dinov2_small").fit(images)
    message = str(raised.value)
    assert "'dinov2_small'" in message
    assert "save_to_preset" in message and "copy" in message and "path" in message
    assert time.monotonic() - started < 30  # offline, keras-hub fails at once


def test_a_preset_directory_without_its_image_converter_says_how_to_save_it(hub_presets, images,
                                                                            tmp_path):
    hub_presets["resnet"][1].save_to_preset(str(tmp_path / "bare"))
    with pytest.raises(FileNotFoundError, match="image_converter.save_to_preset"):
        KerasFeatureExtractor(str(tmp_path / "bare")).fit(images)


def test_a_hub_directory_that_is_no_preset_says_what_to_pass(images, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json.*save_to_preset"):
        KerasFeatureExtractor(f"hub:{tmp_path}").fit(images)


def test_a_preset_directory_missing_here_says_to_share_it_or_fit_first(images, tmp_path):
    # What a worker that cannot read the client's disk meets.
    with pytest.raises(ValueError, match="no config.json here.*every worker.*fit the extractor"):
        KerasFeatureExtractor(str(tmp_path / "dinov2")).fit(images)


def test_a_weights_file_for_a_preset_is_refused_with_the_way_out(hub_presets, images, tmp_path):
    extractor = KerasFeatureExtractor(hub_presets["resnet"][0], weights=str(tmp_path / "w.h5"))
    with pytest.raises(ValueError, match="weights=None.*save them as a preset directory"):
        extractor.fit(images)


def test_a_preset_rewritten_in_place_is_not_served_from_the_cache(hub_presets, images, tmp_path):
    directory = str(tmp_path / "resnet")
    hub_presets["resnet"][1].save_to_preset(directory)
    hub_presets["resnet"][2].save_to_preset(directory)
    cache = MemoryFeatureCache()
    before = KerasFeatureExtractor(directory, cache=cache).fit_transform(images)
    keras.utils.set_random_seed(1)
    retrained, _ = resnet()
    retrained.save_to_preset(directory)
    after = KerasFeatureExtractor(directory, cache=cache).fit_transform(images)
    assert cache.hits == 0
    assert not np.allclose(after, before)


def test_the_finetuned_classifier_fits_and_predicts_with_a_preset(hub_presets, images):
    X = np.concatenate([images, images[:, ::-1]])
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    classifier = FineTunedClassifier(hub_presets["dinov2"][0], pooling="cls+avg", epochs=1,
                                     head_epochs=2, batch_size=4, random_state=0)
    classifier.fit(X, y)
    assert classifier.predict_proba(X).shape == (8, 2)
    assert set(classifier.predict(X)) <= {0, 1}


def test_the_command_line_extracts_features_of_a_preset_directory(hub_presets, images, tmp_path):
    from PIL import Image

    from transferkit.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"image_{k}.png")
    output = tmp_path / "features.npz"
    assert main(["extract", str(folder), "-o", str(output), "--quiet",
                 "--backbone", hub_presets["dinov2"][0], "--pooling", "cls+avg"]) == 0
    saved = np.load(output)
    np.testing.assert_allclose(saved["features"],
                               keras_hub_features(hub_presets, "dinov2", images, "cls+avg"),
                               rtol=0, atol=1e-5)


def test_the_command_line_lists_a_presets_cut_points(hub_presets, capsys):
    from transferkit.cli import main

    assert main(["cut-points", hub_presets["dinov2"][0]]) == 0
    assert capsys.readouterr().out.split() == ["block1", "block2"]


@pytest.mark.parametrize("name", ["dinov2", "vit", "dinov3", "siglip", "clip", "resnet"])
def test_openvino_runs_a_preset_as_tensorflow_does(hub_presets, images, name):
    pytest.importorskip("openvino")
    directory = hub_presets[name][0]
    compiled = KerasFeatureExtractor(directory, runtime="openvino").fit_transform(images)
    traced = KerasFeatureExtractor(directory).fit_transform(images)
    np.testing.assert_allclose(compiled, traced, rtol=0, atol=1e-5)


def test_a_network_openvino_cannot_convert_says_to_use_tensorflow(hub_presets, images,
                                                                  monkeypatch):
    openvino = pytest.importorskip("openvino")

    def unconvertible(*args, **kwargs):
        raise RuntimeError("Cannot create Einsum layer from unsupported opset")

    monkeypatch.setattr(openvino, "convert_model", unconvertible)
    extractor = KerasFeatureExtractor(hub_presets["siglip"][0], runtime="openvino")
    with pytest.raises(RuntimeError, match="cannot convert.*Einsum.*runtime='tensorflow'"):
        extractor.fit(images)


def test_activation_maps_of_a_preset_say_they_are_not_drawn_yet(hub_presets, images):
    from transferkit.viz import activation_maps

    extractor = KerasFeatureExtractor(hub_presets["resnet"][0]).fit(images)
    with pytest.raises(ValueError, match="keras-hub backbones.*not drawn yet"):
        activation_maps(extractor, images[0])


@pytest.mark.parametrize(("name", "first_block"), [
    ("siglip", "encoder_block_0"), ("vit", "transformer_block_1"), ("dinov3", "layers_0"),
])
def test_the_finetuned_classifier_freezes_a_transformer_by_block(hub_presets, images, name,
                                                                 first_block):
    X = np.concatenate([images, images[:, ::-1]])
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    # No check of the fine-tuning phase: what is frozen is the question here, not whether
    # training pays.
    settings = {"cut": "block2", "epochs": 1, "head_epochs": 2, "batch_size": 4,
                "random_state": 0, "early_stopping": False}
    frozen_one = FineTunedClassifier(hub_presets[name][0], freeze_until="block1", **settings)
    trains_all = FineTunedClassifier(hub_presets[name][0], freeze_until=None, **settings)
    frozen_one.fit(X, y)
    trains_all.fit(X, y)
    # The first block (SigLIP's name prefixed by the tower's), and fewer trainable scalars
    # than with nothing frozen.
    assert frozen_one.freeze_layer_.endswith(first_block)
    assert frozen_one.n_trainable_weights_ < trains_all.n_trainable_weights_


def test_layer_decay_counts_a_transformers_blocks_down_from_the_cut(hub_presets, images):
    # The layer-wise decay of ViT fine-tuning recipes: with a vanishing decay the lower of
    # two trained blocks stays where it started, as if it were frozen.
    X = np.concatenate([images, images[:, ::-1]])
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    settings = {"cut": "block2", "epochs": 1, "head_epochs": 2, "batch_size": 4,
                "random_state": 0, "early_stopping": False}  # fine-tuning always kept
    still = FineTunedClassifier(hub_presets["siglip"][0], freeze_until=None, layer_decay=1e-12,
                                **settings).fit(X, y)
    frozen = FineTunedClassifier(hub_presets["siglip"][0], freeze_until="block1",
                                 **settings).fit(X, y)
    moved = FineTunedClassifier(hub_presets["siglip"][0], freeze_until=None, **settings).fit(X, y)

    def first_block(clf):
        return [w.numpy() for w in clf.model_.weights if "encoder_block_0" in w.path]

    assert first_block(still) and len(first_block(still)) == len(first_block(frozen))
    for a, b in zip(first_block(still), first_block(frozen), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(first_block(moved), first_block(frozen),
                                                     strict=True))


def test_flattened_tokens_of_a_siglip_block_equal_keras_hubs(hub_presets, images):
    extractor = KerasFeatureExtractor(hub_presets["siglip"][0], cut="block1", pooling=None)
    features = extractor.fit_transform(images)
    tower = hub_presets["siglip"][1].vision_encoder
    pixels = hub_presets["siglip"][2](images.astype("float32"))
    tokens = keras.Model(tower.inputs, tower.get_layer("encoder_block_0").output)(pixels)
    expected = keras.ops.convert_to_numpy(tokens).reshape(len(images), -1)
    assert extractor.n_features_out_ == expected.shape[1] == 16 * 16
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-5)


def test_bfloat16_precision_reaches_the_image_tower_of_an_image_text_preset(hub_presets, images):
    from transferkit.network import trunk_of

    extractor = KerasFeatureExtractor(hub_presets["siglip"][0], precision="bfloat16").fit(images)
    policies = {layer.dtype_policy.name for layer in trunk_of(extractor.model_).layers}
    assert policies == {"mixed_bfloat16"}


def test_a_saved_architecture_naming_no_keras_hub_backbone_is_refused(hub_presets, images):
    import copy

    extractor = KerasFeatureExtractor(hub_presets["resnet"][0]).fit(images)
    # What unpickling or transferkit.load would receive from an edited file.
    state = copy.deepcopy(extractor.__getstate__())
    state["hub_preset_"]["backbone"]["class_name"] = "Popen"
    with pytest.raises(ValueError, match="names 'Popen', which is no keras_hub Backbone"):
        KerasFeatureExtractor.__new__(KerasFeatureExtractor).__setstate__(state)
