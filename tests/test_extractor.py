"""KerasFeatureExtractor: features as careful hand-written Keras code gives them, the
scikit-learn way."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from transferkit import KerasFeatureExtractor

# VGG16 at 32 px builds in under a second and, unlike the BatchNorm families, keeps random
# features at a sane scale (a random MobileNet's are ~1e-18), so comparisons mean something.
SMALL = {"backbone": "VGG16", "input_size": 32}


def assert_same_features(actual, expected, rtol=1e-5):
    """Equal up to float32 reordering noise, relative to the features' own scale."""
    scale = float(np.abs(expected).max())
    assert scale > 0, "all-zero features make this comparison meaningless"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def small_extractor(**params) -> KerasFeatureExtractor:
    # No feature cache: these tests are about what the network computes (see test_cache.py).
    return KerasFeatureExtractor(
        **{**SMALL, "weights": None, "random_state": 0, "cache": None, **params}
    )


def test_features_are_float32_with_one_row_per_image(rng_images):
    features = small_extractor().fit_transform(rng_images)
    assert features.shape == (8, 512)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()


@pytest.mark.parametrize(("pooling", "width"), [("avg", 512), ("max", 512), (None, 512)])
def test_pooling_sets_the_feature_width(rng_images, pooling, width):
    # At 32 px VGG16's last feature map is 1x1, so flattening keeps 512 values too.
    extractor = small_extractor(pooling=pooling).fit()
    assert extractor.transform(rng_images).shape == (8, width)
    assert extractor.n_features_out_ == width


def test_flatten_keeps_every_spatial_position(rng_images):
    extractor = small_extractor(pooling=None, input_size=64).fit()
    assert extractor.transform(rng_images[:2]).shape == (2, 2 * 2 * 512)


def test_max_and_avg_pooling_differ(rng_images):
    avg = small_extractor(pooling="avg", input_size=64).fit_transform(rng_images)
    top = small_extractor(pooling="max", input_size=64).fit_transform(rng_images)
    assert np.all(top >= avg - 1e-5)
    assert not np.allclose(top, avg, rtol=1e-3, atol=0)


def test_cut_by_block_name_changes_the_width():
    extractor = small_extractor(cut="block3").fit()
    assert extractor.cut_layer_ == "block3_pool"
    assert extractor.n_features_out_ == 256


def test_same_random_state_gives_identical_features(rng_images):
    first = small_extractor(random_state=3).fit_transform(rng_images)
    second = small_extractor(random_state=3).fit_transform(rng_images)
    other = small_extractor(random_state=4).fit_transform(rng_images)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other, rtol=1e-3, atol=0)


def test_many_extractors_in_one_process_do_not_log_retracing_warnings(rng_images,
                                                                       tensorflow_log):
    # A grid search builds an extractor per candidate: each traces its own forward pass,
    # which TensorFlow must not count as one function retracing again and again.
    for cut in ("block1_pool", "block2_pool", "block3_pool") * 3:
        small_extractor(cut=cut).fit_transform(rng_images)
    assert not [m for m in tensorflow_log if "retracing" in m]


def test_fit_transform_equals_fit_then_transform(rng_images):
    extractor = small_extractor()
    np.testing.assert_array_equal(
        extractor.fit_transform(rng_images), clone(extractor).fit(rng_images).transform(rng_images)
    )


def test_transform_without_fit_builds_the_model_lazily(rng_images):
    extractor = small_extractor()
    features = extractor.transform(rng_images)
    assert hasattr(extractor, "model_")
    np.testing.assert_array_equal(features, small_extractor().fit().transform(rng_images))


def test_subset_and_reordered_inputs_give_matching_rows(rng_images):
    extractor = small_extractor(batch_size=3).fit()
    full = extractor.transform(rng_images)
    order = [6, 1, 4]
    assert_same_features(extractor.transform(rng_images[order]), full[order])


def test_batch_size_does_not_change_features(rng_images):
    one = small_extractor(batch_size=1).fit_transform(rng_images)
    many = small_extractor(batch_size=8).fit_transform(rng_images)
    assert_same_features(one, many)


def test_batch_size_none_runs_small_batches_on_a_cpu(rng_images, monkeypatch):
    from transferkit.keras_setup import default_batch_size

    assert default_batch_size() == 8  # no GPU on the test machines
    seen = []
    auto = small_extractor().fit()
    assert auto.batch_size is None
    import transferkit.extractor

    run_batches = transferkit.extractor.run_batches

    def spy(passes, *args, **kwargs):
        counted = [lambda batch, f=f: seen.append(len(batch)) or f(batch) for f in passes]
        return run_batches(counted, *args, **kwargs)

    monkeypatch.setattr(transferkit.extractor, "run_batches", spy)
    features = auto.transform(np.concatenate([rng_images] * 2))
    assert max(seen) == 8 and sum(seen) == 2 * len(rng_images)
    assert_same_features(features[: len(rng_images)],
                         small_extractor(batch_size=32).fit_transform(rng_images))


def test_features_come_from_a_batchnorm_folded_copy_equal_to_the_model(rng_images):
    # Real ImageNet statistics are checked against hand-written Keras in test_pretrained.py.
    extractor = KerasFeatureExtractor("ResNet50", weights=None, random_state=0,
                                      input_size=rng_images.shape[1:3], cache=None).fit()
    pixels = rng_images.astype(np.float32)
    assert_same_features(extractor.transform(pixels),
                         extractor.model_.predict(pixels, verbose=0))


def test_crop_fraction_features_are_those_of_the_central_crop(rng_images):
    # 40 px images at crop_fraction=0.8 are already at the source size (32 / 0.8): the
    # network must see exactly their central 32 x 32 pixels.
    images = np.random.default_rng(1).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    cropped = small_extractor(crop_fraction=0.8).fit()
    assert cropped.input_size_ == (32, 32) and cropped.source_size_ == (40, 40)
    assert cropped.model_.input_shape == (None, 40, 40, 3)
    assert_same_features(cropped.transform(images),
                         small_extractor().fit_transform(images[:, 4:36, 4:36]))


def test_crop_fraction_resizes_other_sizes_to_the_source_size_first(rng_images):
    from transferkit.image_input import as_image_collection

    cropped = small_extractor(crop_fraction=0.875).fit()
    assert cropped.source_size_ == (37, 37)
    (_, resized), = as_image_collection(rng_images).batches((37, 37), len(rng_images))
    # 37 - 32 = 5 pixels to drop: 2 above and left, 3 below and right, as CenterCrop does.
    assert_same_features(cropped.transform(rng_images),
                         small_extractor().fit_transform(resized[:, 2:34, 2:34]))


def test_crop_fraction_one_keeps_the_whole_image(rng_images):
    whole = small_extractor(crop_fraction=1.0).fit()
    assert whole.source_size_ == whole.input_size_
    assert "central_crop" not in [layer.name for layer in whole.model_.layers]


def test_calling_the_model_directly_runs_in_inference_mode(rng_images):
    # A crop layer declaring training=True would switch every BatchNormalization after it
    # to batch statistics, and overwrite their moving averages, in a call without training.
    extractor = KerasFeatureExtractor("MobileNetV2", weights=None, random_state=0,
                                      input_size=32, crop_fraction=0.8, cache=None).fit()
    pixels = np.random.default_rng(2).integers(0, 256, (4, 40, 40, 3)).astype(np.float32)
    weights = [w.copy() for w in extractor.model_.get_weights()]
    direct = np.asarray(extractor.model_(pixels))
    for before, after in zip(weights, extractor.model_.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert_same_features(direct, extractor.transform(pixels), rtol=1e-4)


def test_pickled_extractor_from_before_crop_fraction_still_loads(rng_images):
    import pickle

    extractor = small_extractor().fit()
    state = extractor.__getstate__()
    for name in ("crop_fraction", "source_size_"):
        del state[name]
    old = KerasFeatureExtractor.__new__(KerasFeatureExtractor)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.crop_fraction == 1.0 and old.source_size_ == old.input_size_
    assert_same_features(old.transform(rng_images), extractor.transform(rng_images))


def test_input_array_is_not_modified(rng_images):
    floats = rng_images.astype(np.float32)
    before = floats.copy()
    small_extractor().fit_transform(floats)
    np.testing.assert_array_equal(floats, before)


def test_paths_pil_images_and_arrays_give_the_same_features(tmp_path, rng_images):
    paths = []
    for i, img in enumerate(rng_images):
        paths.append(str(tmp_path / f"img {i}.png"))
        Image.fromarray(img).save(paths[-1])
    extractor = small_extractor().fit()
    from_array = extractor.transform(rng_images)
    assert_same_features(extractor.transform(paths), from_array)
    assert_same_features(extractor.transform([Image.open(p) for p in paths]), from_array)


def test_grayscale_images_are_seen_as_gray_rgb(rng_images):
    extractor = small_extractor().fit()
    gray = rng_images[..., 0]
    assert_same_features(
        extractor.transform(gray), extractor.transform(np.repeat(gray[..., None], 3, -1))
    )


# Each family's preprocess_input, as the Keras documentation tells a user to call it.
@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("ResNet50", "resnet"),  # caffe: BGR, mean subtraction
        ("MobileNetV2", "mobilenet_v2"),  # tf: [-1, 1]
        ("DenseNet121", "densenet"),  # torch: [0, 1], ImageNet mean/std
        ("EfficientNetB0", "efficientnet"),  # preprocessing inside the model
    ],
)
def test_features_match_hand_written_keras(name, module, rng_images):
    import importlib

    import keras

    extractor = KerasFeatureExtractor(name, weights=None, input_size=64, random_state=0).fit()
    hand = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg"
    )
    hand.set_weights(extractor.model_.get_weights())
    preprocess = importlib.import_module(f"keras.applications.{module}").preprocess_input
    images = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3)).astype(np.float32)
    expected = hand.predict(preprocess(images.copy()), verbose=0)
    assert_same_features(extractor.transform(images), expected, rtol=1e-4)


def test_user_keras_model_is_accepted_and_cut_by_layer_name(rng_images):
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, name="first")(x)
    x = keras.layers.Conv2D(6, 3, name="second")(x)
    model = keras.Model(inputs, x, name="tiny")
    extractor = KerasFeatureExtractor(model, cut="first", input_size=16).fit()
    assert extractor.backbone_name_ == "tiny"
    assert extractor.transform(rng_images).shape == (8, 4)
    assert KerasFeatureExtractor(model, input_size=16).fit().n_features_out_ == 6


def test_feature_names_and_pandas_output(rng_images):
    pd = pytest.importorskip("pandas")
    extractor = small_extractor().set_output(transform="pandas")
    frame = extractor.fit_transform(rng_images)
    assert isinstance(frame, pd.DataFrame)
    assert frame.shape == (8, 512)
    assert frame.columns[0] == "vgg16_block5_pool_0"
    assert list(frame.columns) == list(extractor.get_feature_names_out())


def test_pandas_output_keeps_the_index_of_a_series_of_paths(tmp_path, rng_images):
    pd = pytest.importorskip("pandas")
    paths = []
    for i, img in enumerate(rng_images[:3]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    series = pd.Series(paths, index=["a", "b", "c"], name="path")
    frame = small_extractor().set_output(transform="pandas").fit_transform(series)
    assert list(frame.index) == ["a", "b", "c"]


def test_get_params_set_params_and_clone():
    extractor = small_extractor(cut="block2", backbone_kwargs={})
    params = extractor.get_params()
    assert params["cut"] == "block2" and params["backbone_kwargs"] == {}
    copy = clone(extractor.set_params(pooling="max"))
    assert copy.get_params() == extractor.get_params()
    assert not hasattr(copy, "model_")


def test_init_only_stores_parameters():
    extractor = KerasFeatureExtractor("no-such-backbone", pooling="median", batch_size=-1)
    assert extractor.backbone == "no-such-backbone"
    assert set(vars(extractor)) == set(extractor.get_params())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"pooling": "median"}, "pooling='median'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"backbone": "vgg61"}, "VGG16"),
        ({"cut": "no_such_layer"}, "no_such_layer"),
        ({"backbone_kwargs": [("alpha", 1)]}, "backbone_kwargs"),
        ({"crop_fraction": 0}, "crop_fraction=0"),
        ({"crop_fraction": 1.2}, "crop_fraction=1.2"),
        ({"crop_fraction": True}, "crop_fraction=True"),
        ({"crop_fraction": "0.875"}, "crop_fraction='0.875'"),
    ],
)
def test_invalid_parameters_raise_at_fit(params, message):
    with pytest.raises(ValueError, match=message):
        small_extractor(**params).fit()


def test_verbose_reports_progress_as_a_plain_line_when_not_on_a_terminal(rng_images, capsys):
    small_extractor(verbose=1, batch_size=4).fit_transform(rng_images)
    assert capsys.readouterr().out.startswith("8 images in ")


def test_pipeline_with_logistic_regression_learns_a_visible_signal():
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (20, 32, 32, 3))
    bright = rng.integers(190, 256, (20, 32, 32, 3))
    X = np.concatenate([dark, bright]).astype(np.uint8)
    y = np.array(["dark"] * 20 + ["bright"] * 20)
    pipe = Pipeline([("features", small_extractor()), ("clf", LogisticRegression())])
    assert pipe.fit(X, y).score(X, y) == 1.0


# ---------------------------------------------------------------- several cuts in one pass
SEVERAL = ["block2", "block4"]


@pytest.fixture(scope="module")
def two_cuts():
    """VGG16 (32 px) cut after blocks 2 and 4, fitted once for the tests that only read it."""
    return small_extractor(cut=SEVERAL).fit()


def test_several_cuts_give_each_cuts_features_side_by_side(two_cuts, rng_images):
    each = [small_extractor(cut=cut).fit_transform(rng_images) for cut in SEVERAL]
    assert np.array_equal(two_cuts.transform(rng_images), np.hstack(each))


def test_several_cuts_run_one_network_truncated_at_the_deepest(two_cuts):
    from transferkit.network import trunk_of

    layers = [layer.name for layer in trunk_of(two_cuts.model_).layers]
    assert layers[-1] == "block4_pool" and "block5_conv1" not in layers
    assert two_cuts.cut_layer_ == "block4_pool"
    assert two_cuts.cut_layers_ == ["block2_pool", "block4_pool"]


def test_several_cuts_name_each_column_by_its_cut_and_pooling(two_cuts):
    names = two_cuts.get_feature_names_out()
    assert two_cuts.n_features_out_ == len(names) == 128 + 512
    assert (names[0], names[127], names[128], names[-1]) == (
        "block2_avg_0", "block2_avg_127", "block4_avg_0", "block4_avg_511")


def test_an_index_among_several_cuts_is_named_by_its_layer(rng_images):
    extractor = small_extractor(cut=[6, "block4"], pooling="max").fit()
    assert extractor.get_feature_names_out()[0] == "block2_pool_max_0"


def test_cut_blocks_is_every_block_boundary_of_the_backbone(rng_images):
    from transferkit import list_cut_points

    blocks = small_extractor(cut="blocks", pooling="max")
    listed = small_extractor(cut=list_cut_points("VGG16"), pooling="max")
    assert np.array_equal(blocks.fit_transform(rng_images), listed.fit_transform(rng_images))
    assert blocks.cut_layers_ == [f"block{i}_pool" for i in range(1, 6)]


def test_several_cuts_without_pooling_say_which_pooling_to_use():
    extractor = small_extractor(cut=SEVERAL, pooling=None)
    with pytest.raises(ValueError, match=r"cut=\['block2', 'block4'\].*pooling='avg' or "
                                         r"pooling='max'"):
        extractor.fit()


def test_two_cuts_at_the_same_layer_are_refused():
    with pytest.raises(ValueError, match="'block2_pool' twice"):
        small_extractor(cut=["block2", "block2_pool"]).fit()


@pytest.mark.parametrize("cut", [[], ["block2", None], ["block2", 1.5], {"block2"}])
def test_a_list_of_cuts_holds_names_and_indices_only(cut):
    with pytest.raises(ValueError, match="list of names and indices"):
        small_extractor(cut=cut).fit()


def test_several_cuts_survive_clone_pickle_and_pandas_output(two_cuts, rng_images):
    import pickle

    pd = pytest.importorskip("pandas")
    assert clone(two_cuts).get_params()["cut"] == SEVERAL
    copy = pickle.loads(pickle.dumps(two_cuts))
    assert np.array_equal(copy.transform(rng_images), two_cuts.transform(rng_images))
    frame = clone(two_cuts).set_output(transform="pandas").fit_transform(rng_images)
    assert isinstance(frame, pd.DataFrame) and frame.columns[128] == "block4_avg_0"
