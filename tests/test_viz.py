"""transferkit.viz: activation maps, Grad-CAM and training curves as PIL images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from .conftest import HYMENOPTERA, image_paths, needs_hymenoptera, needs_shared_weights


@pytest.fixture(scope="module")
def vgg_extractor():
    from transferkit import KerasFeatureExtractor

    # VGG16 has no BatchNormalization: random weights still give activations of a useful scale.
    return KerasFeatureExtractor("VGG16", weights=None, input_size=32, random_state=0).fit()


@pytest.fixture(scope="module")
def vgg_classifier(rng_images):
    from transferkit import FineTunedClassifier

    # At 64 px VGG16's last block gives a 2x2 map, enough for Grad-CAM to have a "where".
    labels = np.array(["a", "b"] * 4)
    return FineTunedClassifier(
        "VGG16", weights=None, input_size=64, epochs=1, head_epochs=2, early_stopping=False,
        random_state=0,
    ).fit(rng_images, labels)


def test_activation_grid_has_the_documented_size(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    picture = plot_activation_maps(vgg_extractor, rng_images[0], layer="block3", n_channels=6,
                                   tile_size=20, padding=2)
    # 6 tiles -> a 3 x 2 grid; 20 px tiles with 2 px between and around them.
    assert isinstance(picture, Image.Image)
    assert picture.mode == "RGB"
    assert picture.size == (3 * 20 + 4 * 2, 2 * 20 + 3 * 2)


def test_default_layer_is_the_one_pooled_into_the_features(vgg_extractor, rng_images):
    from transferkit.viz import activation_maps

    maps = activation_maps(vgg_extractor, rng_images[0])
    features = vgg_extractor.transform(rng_images[:1])[0]
    np.testing.assert_allclose(maps.mean(axis=(0, 1)), features, rtol=1e-4, atol=1e-6)


def test_activation_maps_see_the_central_crop_transform_sees(rng_images):
    from transferkit import KerasFeatureExtractor
    from transferkit.viz import activation_maps

    cropped = KerasFeatureExtractor("VGG16", weights=None, input_size=32, crop_fraction=0.8,
                                    random_state=0, cache=None).fit()
    image = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    maps = activation_maps(cropped, image)
    assert maps.shape == (1, 1, 512)
    np.testing.assert_allclose(maps.mean(axis=(0, 1)), cropped.transform(image[None])[0],
                               rtol=1e-4, atol=1e-6)


def test_activation_maps_differ_between_layers(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    settings = {"n_channels": 4, "tile_size": 16}
    block2 = plot_activation_maps(vgg_extractor, rng_images[0], layer="block2", **settings)
    block3 = plot_activation_maps(vgg_extractor, rng_images[0], layer="block3", **settings)
    assert block2.size == block3.size
    assert np.abs(np.asarray(block2, float) - np.asarray(block3, float)).mean() > 5


def test_activation_maps_differ_between_images(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    first = plot_activation_maps(vgg_extractor, rng_images[0], layer="block2", n_channels=4)
    second = plot_activation_maps(vgg_extractor, rng_images[1], layer="block2", n_channels=4)
    assert np.abs(np.asarray(first, float) - np.asarray(second, float)).mean() > 5


def test_most_active_channel_fills_the_first_tile(vgg_extractor, rng_images):
    from transferkit.viz import activation_maps, plot_activation_maps

    maps = activation_maps(vgg_extractor, rng_images[2], layer="block2")
    strongest = maps[..., int(np.argmax(maps.mean(axis=(0, 1))))]
    picture = plot_activation_maps(vgg_extractor, rng_images[2], layer="block2", n_channels=1,
                                   tile_size=maps.shape[0], padding=0, colormap="gray")
    # With a gray colormap and one pixel per activation the tile is the channel, rescaled.
    expected = (strongest - strongest.min()) / (strongest.max() - strongest.min()) * 255
    np.testing.assert_allclose(np.asarray(picture)[..., 0], expected, atol=1)


def test_layer_beyond_the_cut_is_rejected_by_name(rng_images):
    from transferkit import KerasFeatureExtractor
    from transferkit.viz import activation_maps

    extractor = KerasFeatureExtractor("VGG16", weights=None, input_size=32, cut="block2")
    with pytest.raises(ValueError, match=r"layer='block4_conv1'.*'block2_pool'"):
        activation_maps(extractor, rng_images[0], layer="block4_conv1")


def test_unknown_colormap_lists_the_built_in_ones(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    with pytest.raises(ValueError, match="no-such-map.*viridis"):
        plot_activation_maps(vgg_extractor, rng_images[0], colormap="no-such-map")


def test_grad_cam_heat_map_has_the_image_size_and_unit_range(vgg_classifier, rng_images):
    from transferkit.viz import grad_cam

    heat = grad_cam(vgg_classifier, rng_images[0])
    assert heat.shape == rng_images[0].shape[:2]
    assert heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1


def test_grad_cam_overlay_keeps_the_size_of_a_file_image(vgg_classifier, tmp_path):
    from transferkit.viz import plot_grad_cam

    path = tmp_path / "wide.png"
    pixels = np.random.default_rng(1).integers(0, 256, (30, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    overlay = plot_grad_cam(vgg_classifier, str(path), target="b")
    assert overlay.size == (70, 30)
    assert overlay.mode == "RGB"


def test_grad_cam_rejects_a_class_the_classifier_does_not_have(vgg_classifier, rng_images):
    from transferkit.viz import grad_cam

    with pytest.raises(ValueError, match=r"target='wasp'.*\['a', 'b'\]"):
        grad_cam(vgg_classifier, rng_images[0], target="wasp")


def test_grad_cam_needs_a_fitted_classifier(rng_images):
    from transferkit import FineTunedClassifier
    from transferkit.viz import grad_cam

    with pytest.raises(ValueError, match="not fitted"):
        grad_cam(FineTunedClassifier("VGG16", weights=None), rng_images[0])


def test_history_plot_has_the_requested_size_and_both_curves(vgg_classifier):
    from transferkit.viz import plot_history

    picture = plot_history(vgg_classifier, size=(500, 240))
    assert picture.size == (500, 240)
    colours = {tuple(c) for c in np.asarray(picture).reshape(-1, 3)}
    assert (31, 119, 180) in colours  # training curve


def test_history_plot_draws_validation_curves_when_present():
    from transferkit.viz import plot_history

    phase = {"loss": [1.0, 0.5, 0.4], "accuracy": [0.5, 0.7, 0.8],
             "val_loss": [1.1, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.6], "best_epoch": 1}
    with_val = np.asarray(plot_history({"head": phase}))
    without = np.asarray(plot_history({"head": {"loss": phase["loss"]}}))
    orange = np.all(with_val == (255, 127, 14), axis=-1).sum()
    # The legend is drawn in both; only the one with validation values has orange curves.
    assert orange > np.all(without == (255, 127, 14), axis=-1).sum() + 50


def test_history_plot_of_an_unfitted_classifier_says_fit_first():
    from transferkit import FineTunedClassifier
    from transferkit.viz import plot_history

    with pytest.raises(TypeError, match="Fit the classifier first"):
        plot_history(FineTunedClassifier())


@needs_shared_weights
@needs_hymenoptera
def test_grad_cam_highlights_the_bee_more_than_the_background():
    from transferkit import FineTunedClassifier
    from transferkit.viz import grad_cam

    paths, labels = image_paths("train")
    paths, labels = np.array(paths), np.array(labels)
    rng = np.random.default_rng(0)
    subset = np.concatenate([rng.choice(np.flatnonzero(labels == c), 30, replace=False)
                             for c in ("ants", "bees")])
    clf = FineTunedClassifier("MobileNet", backbone_kwargs={"alpha": 0.25}, epochs=2,
                              head_epochs=60, random_state=0)
    clf.fit(list(paths[subset]), labels[subset])

    # Boxes drawn by hand around the bee, as fractions (left, top, right, bottom).
    boxes = {
        "10870992_eebeeb3a12.jpg": (0.32, 0.18, 0.54, 0.56),
        "1297972485_33266a18d9.jpg": (0.33, 0.12, 0.66, 0.52),
        "144098310_a4176fd54d.jpg": (0.30, 0.18, 0.56, 0.52),
    }
    ratios = {}
    for name, (left, top, right, bottom) in boxes.items():
        heat = grad_cam(clf, HYMENOPTERA / "val" / "bees" / name, target="bees")
        height, width = heat.shape
        inside = np.zeros_like(heat, dtype=bool)
        inside[int(top * height):int(bottom * height), int(left * width):int(right * width)] = 1
        ratios[name] = heat[inside].mean() / max(heat[~inside].mean(), 1e-6)
    assert max(ratios.values()) > 1.5, ratios
