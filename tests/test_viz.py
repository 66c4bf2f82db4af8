"""transferkit.viz: activation maps, Grad-CAM and training curves as matplotlib Displays."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from .conftest import HYMENOPTERA, image_paths, needs_hymenoptera, needs_shared_weights

pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


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


def _maps_display(maps, *, ranges=None, name="bee.jpg"):
    """An ActivationMapsDisplay of given maps for one layer, drawn without a network."""
    from transferkit.viz import ActivationMapsDisplay

    maps = np.asarray(maps, dtype=np.float32)
    if ranges is None:
        ranges = np.array([[m.min(), m.max()] for m in maps])
    display = ActivationMapsDisplay(
        np.zeros(maps.shape[1:] + (3,), np.uint8), ["block1_conv2"],
        [np.arange(len(maps))], [maps], [ranges], [maps.shape[1:] + (len(maps),)],
        "most active", name)
    return display.plot()


def _cam_display(probabilities=(0.2, 0.8), target=1, crop_box=(0, 0, 8, 8)):
    from transferkit.viz import GradCAMDisplay

    heat = np.zeros((8, 8), np.float32)
    heat[2:5, 3:6] = 1.0
    display = GradCAMDisplay(np.full((8, 8, 3), 200, np.uint8), heat, crop_box,
                             ["ants", "bees"], np.array(probabilities), target, "bee.jpg")
    return display.plot(alpha=0.6)


def _texts(figure):
    return [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]


def test_importing_viz_imports_neither_matplotlib_nor_keras():
    import subprocess
    import sys

    script = ("import sys, transferkit.viz\n"
              "print([m for m in ('matplotlib', 'keras') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr[-2000:]


# ---------------------------------------------------------------------------- activation maps
def test_activation_picture_has_a_row_per_layer_and_a_panel_per_channel(vgg_extractor,
                                                                         rng_images):
    from transferkit.viz import ActivationMapsDisplay, plot_activation_maps

    display = plot_activation_maps(vgg_extractor, rng_images[0], layers=["block2", "block3"],
                                   n_channels=3)
    assert isinstance(display, ActivationMapsDisplay)
    assert display.axes_.shape == (2, 3)
    assert display.layers == ["block2_pool", "block3_pool"]


def test_the_input_image_is_shown_as_the_network_sees_it(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    display = plot_activation_maps(vgg_extractor, rng_images[0], layers="block2", n_channels=1)
    assert display.image.shape == (32, 32, 3)
    shown = display.image_ax_.images[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown), display.image)


def test_default_layers_run_from_an_early_stage_to_the_cut(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    display = plot_activation_maps(vgg_extractor, rng_images[0], n_channels=1)
    sides = [shape[0] for shape in display.shapes]
    assert len(display.layers) == 3
    assert display.layers[-1] == vgg_extractor.cut_layer_
    assert sides == sorted(sides, reverse=True) and len(set(sides)) == 3


def test_maps_are_upsampled_to_the_image_size_within_their_activation_range(vgg_extractor,
                                                                           rng_images):
    from transferkit.viz import plot_activation_maps

    display = plot_activation_maps(vgg_extractor, rng_images[0], layers="block3", n_channels=4)
    maps, ranges = display.maps[0], display.ranges[0]
    assert maps.shape == (4, 32, 32)
    assert np.all(maps.min(axis=(1, 2)) >= ranges[:, 0] - 1e-5)
    assert np.all(maps.max(axis=(1, 2)) <= ranges[:, 1] + 1e-5)


def test_default_rule_shows_the_most_active_channels_first(vgg_extractor, rng_images):
    from transferkit.viz import activation_maps, plot_activation_maps

    raw = activation_maps(vgg_extractor, rng_images[2], layer="block2")
    display = plot_activation_maps(vgg_extractor, rng_images[2], layers="block2", n_channels=3)
    expected = np.argsort(-raw.mean(axis=(0, 1)), kind="stable")[:3]
    np.testing.assert_array_equal(display.channels[0], expected)


def test_most_varied_rule_ranks_channels_by_their_spread(vgg_extractor, rng_images):
    from transferkit.viz import activation_maps, plot_activation_maps

    raw = activation_maps(vgg_extractor, rng_images[2], layer="block2")
    display = plot_activation_maps(vgg_extractor, rng_images[2], layers="block2", n_channels=2,
                                   channels="most_varied")
    assert display.channels[0][0] == int(np.argmax(raw.std(axis=(0, 1))))
    assert "most varied" in display.figure_.get_suptitle()


def test_channels_can_be_chosen_by_index(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    display = plot_activation_maps(vgg_extractor, rng_images[0], layers="block2",
                                   channels=[5, 0])
    np.testing.assert_array_equal(display.channels[0], [5, 0])


def test_a_channel_the_layer_lacks_is_named_with_the_layer_s_range(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    with pytest.raises(ValueError, match=r"'block1_pool' has channels 0 to 63.*\[64\]"):
        plot_activation_maps(vgg_extractor, rng_images[0], layers="block1", channels=[1, 64])


def test_each_panel_is_labelled_with_its_layer_channel_and_activation_range():
    maps = np.stack([np.linspace(0, 2, 16).reshape(4, 4), np.linspace(1, 3, 16).reshape(4, 4)])
    display = _maps_display(maps)
    first, second = display.axes_[0]
    assert "block1_conv2" in first.get_ylabel() and "4x4x2" in first.get_ylabel()
    assert (first.get_title(), second.get_title()) == ("channel 0", "channel 1")
    assert (first.get_xlabel(), second.get_xlabel()) == ("0 to 2", "1 to 3")


def test_the_title_names_the_image_and_the_channel_rule():
    display = _maps_display(np.ones((1, 4, 4)))
    title = display.figure_.get_suptitle()
    assert "bee.jpg" in title and "most active" in title


def test_a_few_extreme_values_do_not_set_the_colour_scale():
    values = np.tile(np.linspace(0, 1, 20), (20, 1))
    values[0, 0] = 100.0  # one hot pixel
    display = _maps_display(values[None])
    norm = display.axes_[0, 0].images[0].norm
    assert norm.vmax < 1.5
    assert display.axes_[0, 0].get_xlabel() == "0 to 100"


def test_activation_maps_draw_into_the_area_of_a_given_axes(vgg_extractor, rng_images):
    import matplotlib.pyplot as plt

    from transferkit.viz import plot_activation_maps

    figure, (left, right) = plt.subplots(1, 2)
    display = plot_activation_maps(vgg_extractor, rng_images[0], layers="block2",
                                   n_channels=2, ax=right)
    assert display.figure_ is figure
    assert left in figure.axes and right not in figure.axes
    assert len(figure.axes) == 1 + 1 + 2  # left, the image, two maps


def test_layer_keyword_of_earlier_versions_still_selects_one_layer(vgg_extractor, rng_images):
    from transferkit.viz import plot_activation_maps

    display = plot_activation_maps(vgg_extractor, rng_images[0], layer="block2", n_channels=1)
    assert display.layers == ["block2_pool"]
    with pytest.raises(ValueError, match="pass layers alone"):
        plot_activation_maps(vgg_extractor, rng_images[0], layer="block2", layers="block3")


def test_display_saves_a_png(vgg_extractor, rng_images, tmp_path):
    from transferkit.viz import plot_activation_maps

    plot_activation_maps(vgg_extractor, rng_images[0], layers="block2",
                         n_channels=2).save(tmp_path / "maps.png")
    with Image.open(tmp_path / "maps.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 300


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


def test_layer_beyond_the_cut_is_rejected_by_name(rng_images):
    from transferkit import KerasFeatureExtractor
    from transferkit.viz import activation_maps

    extractor = KerasFeatureExtractor("VGG16", weights=None, input_size=32, cut="block2")
    with pytest.raises(ValueError, match=r"layer='block4_conv1'.*'block2_pool'"):
        activation_maps(extractor, rng_images[0], layer="block4_conv1")


def test_unknown_colormap_is_named_with_examples_of_real_ones():
    with pytest.raises(ValueError, match="no-such-map.*viridis"):
        _maps_display(np.ones((1, 4, 4))).plot(colormap="no-such-map")


# ---------------------------------------------------------------------------- Grad-CAM
def test_crop_box_is_the_central_crop_fraction_of_each_side():
    from transferkit.viz import crop_box

    classifier = SimpleNamespace(crop_fraction_=0.875, input_size_=(224, 224),
                                 source_size_=(256, 256))
    assert crop_box(classifier, (100, 200)) == (6, 12, 88, 175)


def test_crop_box_of_the_whole_image_framing_is_the_whole_image():
    from transferkit.viz import crop_box

    classifier = SimpleNamespace(crop_fraction_=1.0, input_size_=(224, 224),
                                 source_size_=(256, 256))
    assert crop_box(classifier, (100, 200)) == (0, 0, 100, 200)


def test_crop_box_of_a_classifier_without_crop_fraction_uses_its_sizes():
    from transferkit.viz import crop_box

    older = SimpleNamespace(input_size_=(224, 224), source_size_=(256, 256))
    assert crop_box(older, (256, 256)) == (16, 16, 224, 224)


def test_grad_cam_heat_map_has_the_image_size_and_unit_range(vgg_classifier, rng_images):
    from transferkit.viz import grad_cam

    heat = grad_cam(vgg_classifier, rng_images[0])
    assert heat.shape == rng_images[0].shape[:2]
    assert heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1


def test_grad_cam_evidence_lies_within_the_part_the_classifier_sees(vgg_classifier,
                                                                    rng_images):
    from transferkit.viz import crop_box, grad_cam

    heat = grad_cam(vgg_classifier, rng_images[0])
    top, left, height, width = crop_box(vgg_classifier, heat.shape)
    outside = np.ones_like(heat, dtype=bool)
    outside[top:top + height, left:left + width] = False
    assert not heat[outside].any()


def test_grad_cam_overlay_is_aligned_with_the_whole_image(vgg_classifier, tmp_path):
    from transferkit.viz import plot_grad_cam

    path = tmp_path / "wide.png"
    pixels = np.random.default_rng(1).integers(0, 256, (30, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    display = plot_grad_cam(vgg_classifier, str(path), target="b")
    photo, overlay = display.ax_.images
    assert display.heatmap.shape == (30, 70)
    assert overlay.get_extent() == photo.get_extent()


def test_grad_cam_caption_gives_the_predicted_class_and_its_probability():
    display = _cam_display(probabilities=(0.2, 0.8), target=1)
    assert display.caption.startswith("predicted 'bees' (p = 0.80)")
    assert display.caption in display.ax_.get_title()


def test_grad_cam_of_another_class_says_so_and_still_gives_the_prediction():
    display = _cam_display(probabilities=(0.2, 0.8), target=0)
    assert display.caption == "evidence for 'ants' (p = 0.20); predicted 'bees' (p = 0.80)"


def test_target_chooses_the_class_explained(vgg_classifier, rng_images):
    from transferkit.viz import plot_grad_cam

    display = plot_grad_cam(vgg_classifier, rng_images[0], target="b")
    assert display.target == 1
    assert "'b'" in display.caption


def test_overlay_leaves_the_photo_untouched_where_there_is_no_evidence():
    display = _cam_display()
    alpha = display.ax_.images[1].get_array()[..., 3]
    assert alpha.max() == pytest.approx(0.6)
    assert np.all(alpha[display.heatmap == 0] == 0)


def test_the_part_the_network_sees_is_outlined_only_when_it_is_not_the_whole_image():
    assert len(_cam_display(crop_box=(1, 1, 6, 6)).ax_.patches) == 1
    assert len(_cam_display(crop_box=(0, 0, 8, 8)).ax_.patches) == 0


def test_grad_cam_rejects_a_class_the_classifier_does_not_have(vgg_classifier, rng_images):
    from transferkit.viz import grad_cam

    with pytest.raises(ValueError, match=r"target='wasp'.*\['a', 'b'\]"):
        grad_cam(vgg_classifier, rng_images[0], target="wasp")


def test_grad_cam_needs_a_fitted_classifier(rng_images):
    from transferkit import FineTunedClassifier
    from transferkit.viz import grad_cam

    with pytest.raises(ValueError, match="not fitted"):
        grad_cam(FineTunedClassifier("VGG16", weights=None), rng_images[0])


# ---------------------------------------------------------------------------- history
def _fit_history(*, kept_epochs=3, worse_than_start=False):
    """A history_ as FineTunedClassifier writes it with early stopping and a logistic head."""
    finetune = {"loss": [0.6, 0.4, 0.3], "accuracy": [0.7, 0.8, 0.9],
                "val_loss": [0.55, 0.5, 0.52], "val_accuracy": [0.7, 0.75, 0.75],
                "initial_val_loss": 0.6, "worse_than_start": worse_than_start,
                "best_epoch": 2}
    history = {"head": {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [],
                        "initial_val_loss": 0.6, "best_epoch": -1},
               "finetune": finetune, "refit_head": {"loss": [], "best_epoch": -1},
               "kept_epochs": kept_epochs, "summary": "kept all 3 fine-tuning epochs."}
    if kept_epochs:
        history["refit_finetune"] = {"loss": [0.5, 0.35, 0.25], "accuracy": [0.8, 0.85, 0.9],
                                     "best_epoch": 2}
    return history


def _line_data(ax, colour):
    import matplotlib.colors as mcolors

    return [line.get_xydata() for line in ax.get_lines() if len(line.get_xdata())
            and mcolors.same_color(line.get_color(), colour)]


def test_history_display_puts_the_phases_with_epochs_on_one_axis():
    from transferkit.viz import TrainingHistoryDisplay

    display = TrainingHistoryDisplay.from_history(_fit_history())
    # The logistic heads ran no epochs; fine-tuning is epochs 1-3, its refit 4-6.
    assert list(display.phases) == ["finetune", "refit_finetune"]
    assert display.boundaries_ == [3.5]
    training = _line_data(display.ax_, "tab:blue")
    assert [xy[:, 0].tolist() for xy in training] == [[1, 2, 3], [4, 5, 6]]


def test_history_display_starts_the_validation_loss_where_the_phase_started():
    from transferkit.viz import TrainingHistoryDisplay

    display = TrainingHistoryDisplay.from_history(_fit_history())
    (validation,) = _line_data(display.ax_, "tab:orange")
    assert validation[0].tolist() == [0.5, 0.6]  # initial_val_loss, before epoch 1
    assert validation[1:, 1].tolist() == [0.55, 0.5, 0.52]
    (accuracy,) = _line_data(display.axes_[1], "tab:orange")
    assert accuracy[:, 0].tolist() == [1, 2, 3]  # no accuracy was measured before


def test_history_display_starts_the_validation_accuracy_where_it_was_measured_before():
    from transferkit.viz import TrainingHistoryDisplay

    history = _fit_history()
    history["finetune"]["initial_val_accuracy"] = 0.65
    display = TrainingHistoryDisplay.from_history(history)
    (accuracy,) = _line_data(display.axes_[1], "tab:orange")
    assert accuracy[0].tolist() == [0.5, 0.65]
    assert accuracy[1:, 1].tolist() == [0.7, 0.75, 0.75]


def _rings(ax):
    return [tuple(line.get_xydata()[0]) for line in ax.get_lines()
            if line.get_markerfacecolor() == "none" and len(line.get_xdata())]


def test_history_display_rings_the_last_epoch_of_each_phase_when_fine_tuning_was_kept():
    from transferkit.viz import TrainingHistoryDisplay

    display = TrainingHistoryDisplay.from_history(_fit_history())
    assert _rings(display.ax_) == [(3.0, 0.52), (6.0, 0.25)]


def test_history_display_marks_and_rings_the_score_of_the_head_refit_after_the_epochs():
    from transferkit.viz import TrainingHistoryDisplay

    history = _fit_history()
    history["finetune"].update(val_loss_after=0.45, val_accuracy_after=0.8)
    display = TrainingHistoryDisplay.from_history(history)
    for panel, after in zip(display.axes_, (0.45, 0.8), strict=True):
        diamonds = [tuple(line.get_xydata()[0]) for line in panel.get_lines()
                    if line.get_marker() == "D"]
        assert diamonds == [(3.45, after)]  # just after the last epoch, before the refit
    # What the check judged, and so what was kept, is the network with its head refit.
    assert _rings(display.ax_) == [(3.45, 0.45), (6.0, 0.25)]


def test_history_display_rings_the_last_epoch_where_the_check_kept_adams_head_over_the_refit():
    from transferkit.viz import TrainingHistoryDisplay

    history = _fit_history()
    history["finetune"].update(val_loss_after=0.7, val_accuracy_after=0.5, head_refit=False)
    display = TrainingHistoryDisplay.from_history(history)
    # The refit's score is still drawn; what was kept is the last epoch as it was.
    assert [tuple(line.get_xydata()[0]) for line in display.ax_.get_lines()
            if line.get_marker() == "D"] == [(3.45, 0.7)]
    assert _rings(display.ax_) == [(3.0, 0.52), (6.0, 0.25)]


def test_history_display_rings_the_start_when_fine_tuning_was_worse_than_the_head():
    from transferkit.viz import TrainingHistoryDisplay

    display = TrainingHistoryDisplay.from_history(
        _fit_history(kept_epochs=0, worse_than_start=True))
    assert _rings(display.ax_) == [(0.5, 0.6)]
    assert list(display.phases) == ["finetune"]


def test_history_display_title_says_what_the_fit_kept():
    from transferkit.viz import TrainingHistoryDisplay

    display = TrainingHistoryDisplay.from_history(_fit_history())
    assert any("Kept all 3 fine-tuning epochs." in text for text in _texts(display.figure_))


def test_history_display_names_short_phases_without_overlap_or_clipping(tmp_path):
    from transferkit.viz import TrainingHistoryDisplay

    # A long head, then one-epoch phases: their names crowd at the right-hand end.
    history = {"head": {"loss": [1.0] * 40, "val_loss": [1.0] * 40, "best_epoch": 39},
               "finetune": {"loss": [0.5], "val_loss": [0.6], "best_epoch": 0},
               "refit_head": {"loss": [0.9], "best_epoch": 0},
               "refit_finetune": {"loss": [0.4], "best_epoch": 0}, "kept_epochs": 1}
    display = TrainingHistoryDisplay.from_history(history)
    display.save(tmp_path / "history.png")  # lays the figure out
    renderer = display.figure_.canvas.get_renderer()
    figure_box = display.figure_.bbox
    for panel in display.axes_:
        labels = panel.texts
        assert [t.get_text() for t in labels] == [
            "head", "fine-tuning", "head (refit)", "fine-tuning (refit)"]
        boxes = [t.get_window_extent(renderer) for t in labels]
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert not a.overlaps(b), (a, b)
        for box in boxes:
            assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1


def test_plot_history_draws_a_fitted_classifier(vgg_classifier, tmp_path):
    from transferkit.viz import TrainingHistoryDisplay, plot_history

    display = plot_history(vgg_classifier)
    assert isinstance(display, TrainingHistoryDisplay)
    # early_stopping=False: one fine-tuning epoch, no validation curve.
    assert list(display.phases) == ["finetune"]
    assert _line_data(display.ax_, "tab:orange") == []
    display.save(tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size[0] > 600


def test_plot_history_takes_one_phase_dict():
    from transferkit.viz import plot_history

    display = plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.75]})
    assert [xy[:, 1].tolist() for xy in _line_data(display.axes_[1], "tab:blue")] == [
        [0.5, 0.75]]


def test_plot_history_draws_into_the_given_axes():
    import matplotlib.pyplot as plt

    from transferkit.viz import plot_history

    figure, (left, right) = plt.subplots(1, 2)
    display = plot_history({"loss": [1.0, 0.5]}, ax=right)
    assert display.figure_ is figure
    assert left in figure.axes and right not in figure.axes


def test_plot_history_of_an_unfitted_classifier_says_fit_first():
    from transferkit import FineTunedClassifier
    from transferkit.viz import plot_history

    with pytest.raises(TypeError, match="Fit the classifier first"):
        plot_history(FineTunedClassifier())


def test_plot_history_without_epochs_says_how_to_get_some():
    from transferkit.viz import plot_history

    with pytest.raises(ValueError, match="epochs > 0"):
        plot_history({"head": {"loss": [], "best_epoch": -1}, "kept_epochs": 0})


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
