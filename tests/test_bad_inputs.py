"""Every bad input meets a clear error or a correct, documented result — for both estimators.

The files are generated in a temporary folder; nothing binary is committed. Each case states
its outcome: converted (and to what), or the error type and what its message names.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image

from transferkit import FineTunedClassifier, KerasFeatureExtractor

from .conftest import HYMENOPTERA, needs_hymenoptera

SIZE = 32


def assert_close(actual, expected, rtol=1e-5):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def extractor():
    return KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=SIZE,
                                 cache=None).fit()


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.integers(0, 90, (8, SIZE, SIZE, 3)),
                        rng.integers(160, 256, (8, SIZE, SIZE, 3))]).astype(np.uint8)
    y = np.array(["dark"] * 8 + ["bright"] * 8)
    return FineTunedClassifier("VGG16", weights=None, cut="block3", input_size=SIZE, epochs=1,
                               head_epochs=3, batch_size=8, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def photo():
    """A 48x40 RGB picture with structure (a gradient and a bright square)."""
    yy, xx = np.mgrid[0:40, 0:48]
    pixels = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1).astype(np.uint8)
    pixels[10:25, 12:30] = 240
    return pixels


def run_both(extractor, classifier, images):
    """Apply both fitted estimators to the same input; return the extractor's features."""
    features = extractor.transform(images)
    proba = classifier.predict_proba(images)
    assert proba.shape == (len(features), 2)
    return features


# ------------------------------------------------------------------ files that are errors
def _truncated(tmp_path, photo, fmt):
    path = tmp_path / f"whole.{fmt}"
    big = np.kron(photo, np.ones((6, 6, 1), dtype=np.uint8))  # enough bytes to cut in half
    Image.fromarray(big).save(path)
    cut = tmp_path / f"truncated.{fmt}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda tmp, photo: (tmp / "empty.jpg").write_bytes(b"") and None or tmp / "empty.jpg",
         ValueError, "empty.jpg"),
        (lambda tmp, photo: _truncated(tmp, photo, "jpg"), ValueError, "truncated.jpg"),
        (lambda tmp, photo: _truncated(tmp, photo, "png"), ValueError, "truncated.png"),
        (lambda tmp, photo: (tmp / "notes.jpg").write_text("hello") and tmp / "notes.jpg",
         ValueError, "notes.jpg"),
        (lambda tmp, photo: tmp / "does-not-exist.jpg", FileNotFoundError,
         "does-not-exist.jpg"),
        (lambda tmp, photo: (tmp / "folder.jpg").mkdir() or tmp / "folder.jpg",
         ValueError, "folder.jpg.*directory"),
    ],
    ids=["zero-byte", "truncated-jpeg", "truncated-png", "text-as-jpeg", "missing", "directory"],
)
def test_unreadable_files_raise_naming_index_and_path(
    tmp_path, photo, extractor, classifier, make, error, message
):
    good = tmp_path / "good.png"
    Image.fromarray(photo).save(good)
    bad = make(tmp_path, photo)
    for estimator_call in (extractor.transform, classifier.predict):
        with pytest.raises(error, match=f"image 1 .*{message}"):
            estimator_call([str(good), str(bad), str(good)])


def test_decompression_bomb_is_refused_naming_the_file(tmp_path, photo, extractor, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.fromarray(photo).save(path)
    # Pillow refuses images over twice MAX_IMAGE_PIXELS; lower it rather than write 180 MP.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="bomb.png.*decompression-bomb limit"):
        extractor.transform([str(path)])


def test_on_error_nan_keeps_the_other_rows_and_names_every_failure(tmp_path, photo):
    good = tmp_path / "good.png"
    Image.fromarray(photo).save(good)
    paths = [str(good), str(tmp_path / "gone.jpg"), str(good), str(tmp_path / "also gone.jpg")]
    tolerant = KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=SIZE,
                                     cache=None, on_error="nan")
    with pytest.warns(UserWarning, match=r"2 of 4 images.*gone\.jpg.*also gone\.jpg"):
        features = tolerant.fit_transform(paths)
    assert np.isnan(features[[1, 3]]).all()
    assert np.isfinite(features[[0, 2]]).all()
    assert_close(features[0], tolerant.transform([str(good)])[0])


def test_on_error_nan_never_caches_a_failed_image(tmp_path, photo):
    from transferkit.cache import MemoryFeatureCache

    cache = MemoryFeatureCache()
    tolerant = KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=SIZE,
                                     cache=cache, on_error="nan").fit()
    path = tmp_path / "late.png"
    with pytest.warns(UserWarning):
        tolerant.transform([str(path)])
    Image.fromarray(photo).save(path)
    assert np.isfinite(tolerant.transform([str(path)])).all()


# ------------------------------------------------------------------ files that convert
def test_animated_gif_uses_its_first_frame(tmp_path, photo, extractor, classifier):
    frames = [Image.fromarray(photo), Image.fromarray(255 - photo)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    first = np.asarray(Image.open(path).convert("RGB"))
    assert_close(run_both(extractor, classifier, [str(path)]), extractor.transform(first[None]))


@needs_hymenoptera
def test_hymenoptera_placeholder_gif_loads(extractor, classifier):
    placeholder = HYMENOPTERA / "train" / "ants" / "imageNotFound.gif"
    assert np.isfinite(run_both(extractor, classifier, [str(placeholder)])).all()


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L"])
def test_other_color_modes_convert_like_pillow_shows_them(tmp_path, photo, extractor,
                                                          classifier, mode):
    image = Image.fromarray(photo).convert(mode)
    path = tmp_path / f"picture.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert_close(run_both(extractor, classifier, [str(path)]), extractor.transform(expected[None]))


def test_palette_png_with_transparency_converts_to_rgb(tmp_path, photo, extractor, classifier):
    image = Image.fromarray(photo).convert("P")
    path = tmp_path / "transparent.png"
    image.save(path, transparency=0)
    features = run_both(extractor, classifier, [str(path)])
    expected = np.asarray(Image.open(path).convert("RGBA").convert("RGB"))
    assert_close(features, extractor.transform(expected[None]))


def test_sixteen_bit_grayscale_png_is_scaled_to_eight_bits(tmp_path, photo, extractor,
                                                          classifier):
    gray16 = photo[..., 0].astype(np.uint16) * 257  # the full 16-bit range
    path = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(path)
    features = run_both(extractor, classifier, [str(path)])
    assert_close(features, extractor.transform(photo[None, ..., 0]))


def test_one_pixel_image_is_upscaled(tmp_path, extractor, classifier):
    path = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(path)
    features = run_both(extractor, classifier, [str(path)])
    assert_close(features, extractor.transform(np.full((1, SIZE, SIZE, 3), 200, np.uint8)))


def test_exif_rotated_jpeg_matches_the_upright_image(tmp_path, photo, extractor, classifier):
    upright = np.kron(photo, np.ones((2, 2, 1), dtype=np.uint8))  # 96 x 80, portrait-free
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates 90 degrees clockwise to show it upright
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    rotated_path, upright_path = tmp_path / "rotated.jpg", tmp_path / "upright.jpg"
    Image.fromarray(stored).save(rotated_path, quality=100, exif=exif)
    Image.fromarray(upright).save(upright_path, quality=100)
    rotated = run_both(extractor, classifier, [str(rotated_path)])
    straight = extractor.transform([str(upright_path)])
    sideways = extractor.transform(stored[None])

    def cosine(a, b):
        return float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))

    # JPEG blocks differ between the two encodings, so equal up to compression noise.
    assert cosine(rotated, straight) > 0.999
    assert cosine(rotated, straight) > cosine(rotated, sideways)


def test_file_name_with_spaces_and_non_ascii(tmp_path, photo, extractor, classifier):
    path = tmp_path / "fourmi rousse é 蜂.png"
    Image.fromarray(photo).save(path)
    assert_close(run_both(extractor, classifier, [str(path)]), extractor.transform(photo[None]))


# ------------------------------------------------------------------ arrays
@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.where(np.arange(3)[:, None, None, None] == 1, np.nan, np.ones((3, 8, 8, 3))),
         "image 1 .*NaN"),
        (np.where(np.arange(3)[:, None, None, None] == 2, np.inf, np.ones((3, 8, 8, 3))),
         "image 2 .*infinite"),
        (np.full((2, 8, 8, 3), -3.0), r"image 0 .*\[-3, -3\]"),
        (np.full((2, 8, 8, 3), 300.0), r"image 0 .*\[300, 300\]"),
        (np.full((2, 8, 8, 3), 1000, dtype=np.uint16), "x / 257"),
        (np.arange(5.0), r"shape \(5,\)"),
        (np.zeros((1, 2, 8, 8, 3)), r"shape \(1, 2, 8, 8, 3\)"),
        (np.zeros((2, 8, 8, 2)), "2 channels"),
        (np.zeros((2, 8, 8, 5)), "5 channels"),
        ([], "empty"),
        (np.zeros((0, 8, 8, 3)), "empty"),
    ],
    ids=["nan", "inf", "negative", "over-255", "uint16-16-bit", "1-d", "5-d", "2-channels",
         "5-channels", "empty-list", "empty-array"],
)
def test_bad_arrays_raise_value_errors(extractor, classifier, images, message):
    for estimator_call in (extractor.transform, classifier.predict):
        with pytest.raises(ValueError, match=message):
            estimator_call(images)


def test_eight_bit_values_in_a_uint16_array_are_accepted(extractor, photo):
    assert_close(extractor.transform(photo[None].astype(np.uint16)),
                 extractor.transform(photo[None]))


def test_unit_scaled_floats_warn_but_work(extractor, photo):
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        features = extractor.transform(photo[None] / 255.0)
    assert np.isfinite(features).all()


def test_a_list_mixing_paths_pil_images_and_arrays(tmp_path, photo, extractor, classifier):
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    mixed = [str(path), photo, Image.fromarray(255 - photo)]
    features = run_both(extractor, classifier, mixed)
    assert_close(features, extractor.transform(np.stack([photo, photo, 255 - photo])))


# ------------------------------------------------------------------ files that could hang
def _finishes(call, *args):
    """Run ``call`` on a thread; fail (rather than hang the suite) if it never returns."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(300)  # a guard against a hang, not a speed limit
    assert not thread.is_alive(), f"{call} blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


def test_named_pipe_is_refused_naming_index_and_path(tmp_path, photo, extractor, classifier,
                                                     fifo):
    good = tmp_path / "good.png"
    Image.fromarray(photo).save(good)
    for call in (extractor.transform, classifier.predict):
        with pytest.raises(ValueError, match=r"image 1 .*pipe\.jpg.*named pipe"):
            _finishes(call, [str(good), str(fifo)])


def test_named_pipe_under_on_error_nan_is_a_nan_row(tmp_path, photo, fifo):
    good = tmp_path / "good.png"
    Image.fromarray(photo).save(good)
    tolerant = KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=SIZE,
                                     on_error="nan")
    with pytest.warns(UserWarning, match="named pipe"):
        features = _finishes(tolerant.fit_transform, [str(good), str(fifo)])
    assert np.isnan(features[1]).all() and np.isfinite(features[0]).all()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_device_that_streams_forever_is_refused(extractor):
    with pytest.raises(ValueError, match=r"image 0 .*/dev/zero.*character device"):
        _finishes(extractor.transform, ["/dev/zero"])


def test_dangling_symlink_is_a_missing_file_naming_index_and_path(tmp_path, photo, extractor):
    dangling = tmp_path / "gone.jpg"
    dangling.symlink_to(tmp_path / "never-there.jpg")
    with pytest.raises(FileNotFoundError, match=r"image 0 .*gone\.jpg"):
        extractor.transform([str(dangling)])


@pytest.mark.parametrize("on_error", ["raise", "nan"])
def test_symlink_loop_is_an_image_error_naming_index_and_path(tmp_path, photo, on_error):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(tmp_path / "loop.jpg")
    good = tmp_path / "good.png"
    Image.fromarray(photo).save(good)
    estimator = KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=SIZE,
                                      on_error=on_error)
    if on_error == "raise":
        with pytest.raises(ValueError, match=r"image 1 .*loop\.jpg.*loop of symbolic links"):
            estimator.fit_transform([str(good), str(loop)])
    else:
        with pytest.warns(UserWarning, match="loop of symbolic links"):
            features = estimator.fit_transform([str(good), str(loop)])
        assert np.isnan(features[1]).all()


# ------------------------------------------------------------------ high-bit-depth files
@pytest.fixture(scope="module")
def gray(photo):
    return np.asarray(Image.fromarray(photo).convert("L"))


def test_float_tiff_in_unit_range_is_scaled_to_eight_bits(tmp_path, gray, extractor, classifier):
    path = tmp_path / "float.tif"
    Image.fromarray(gray.astype(np.float32) / 255.0).save(path)
    assert Image.open(path).mode == "F"
    assert_close(run_both(extractor, classifier, [str(path)]),
                 extractor.transform(gray[None]))


def test_float_tiff_in_eight_bit_range_is_kept(tmp_path, gray, extractor):
    path = tmp_path / "float255.tif"
    Image.fromarray(gray.astype(np.float32)).save(path)
    assert_close(extractor.transform([str(path)]), extractor.transform(gray[None]))


def test_float_tiff_of_unknown_scale_is_refused(tmp_path, gray, extractor):
    path = tmp_path / "float-wide.tif"
    Image.fromarray(gray.astype(np.float32) * 10 - 5).save(path)
    with pytest.raises(ValueError, match=r"image 0 .*float-wide\.tif.*\[-5, .*scale"):
        extractor.transform([str(path)])


def test_sixteen_bit_values_in_a_32_bit_tiff_are_scaled_from_16_bits(tmp_path, gray, extractor):
    path = tmp_path / "int32.tif"
    Image.fromarray(gray.astype(np.int32) * 257).save(path)
    assert Image.open(path).mode == "I"
    assert_close(extractor.transform([str(path)]), extractor.transform(gray[None]))


def test_32_bit_tiff_beyond_16_bits_is_refused_saying_how_to_convert(tmp_path, gray, extractor):
    path = tmp_path / "int32-wide.tif"
    Image.fromarray(gray.astype(np.int32) * 4000).save(path)
    with pytest.raises(ValueError, match=r"image 0 .*int32-wide\.tif.*16-bit.*np\.ptp"):
        extractor.transform([str(path)])


# ------------------------------------------------------------------ lazily opened PIL images
def test_lazily_opened_image_whose_file_was_closed_names_its_index(tmp_path, photo, extractor,
                                                                   classifier):
    path = tmp_path / "lazy.png"
    Image.fromarray(photo).save(path)
    lazy = Image.open(path)  # not loaded: pixels are read from the file on first use
    lazy.close()
    for call in (extractor.transform, classifier.predict):
        with pytest.raises(ValueError, match=r"image 1\b.*PIL image.*lazy\.png"):
            call([photo, lazy])


def test_lazily_opened_truncated_jpeg_names_its_index(tmp_path, photo, extractor, classifier):
    lazy = Image.open(_truncated(tmp_path, photo, "jpg"))
    for call in (extractor.transform, classifier.predict):
        with pytest.raises(ValueError, match=r"image 1\b.*PIL image.*truncated\.jpg"):
            call([photo, lazy])


# ------------------------------------------------------------------ arrays nobody can see
@pytest.mark.parametrize("shape", [(0, 5), (5, 0, 3)])
def test_zero_size_image_in_a_list_is_refused_naming_its_index(photo, extractor, classifier,
                                                               shape):
    for call in (extractor.transform, classifier.predict):
        with pytest.raises(ValueError, match=r"image 1 of X .*at least 1x1"):
            call([photo, np.zeros(shape, np.uint8)])


def test_object_array_is_refused_without_dumping_it(extractor, classifier, photo):
    pixels = photo[None].astype(object).repeat(3, 0)
    for call in (extractor.transform, classifier.predict):
        with pytest.raises(ValueError, match=r"object dtype.*astype\(np\.uint8\)") as error:
            call(pixels)
        assert len(str(error.value)) < 300


def test_one_column_array_of_paths_is_taken_like_a_one_column_frame(tmp_path, photo,
                                                                    extractor):
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    column = np.array([[str(path)], [str(path)]], dtype=object)
    assert_close(extractor.transform(column), extractor.transform([str(path)] * 2))


@pytest.mark.parametrize("as_list", [False, True])
def test_masked_array_is_refused_saying_what_to_pass(photo, extractor, as_list):
    pixels = photo[None].astype(np.float32)
    masked = np.ma.masked_array(pixels, mask=pixels > 200, fill_value=999)
    with pytest.raises(ValueError, match=r"masked array.*filled\(0\).*\.data"):
        extractor.transform(list(masked) if as_list else masked)


@pytest.mark.parametrize("estimator", [KerasFeatureExtractor, FineTunedClassifier])
def test_crop_fraction_that_implies_a_huge_source_is_refused(photo, estimator):
    tiny = estimator("VGG16", weights=None, input_size=SIZE, crop_fraction=1e-4)
    with pytest.raises(ValueError, match=r"crop_fraction=0\.0001 .*at most 4096"):
        tiny.fit(np.stack([photo, 255 - photo] * 4), ["a", "b"] * 4)


# ------------------------------------------------------------------ labels and sizes
def test_classifier_rejects_bad_labels_and_a_single_sample(photo):
    X = np.stack([photo, 255 - photo, photo])
    clf = FineTunedClassifier("VGG16", weights=None, cut="block3", input_size=SIZE, epochs=1)
    with pytest.raises(ValueError, match="2 labels but X has 3 images"):
        clf.fit(X, ["a", "b"])
    with pytest.raises(ValueError, match="one class|single class|2 classes"):
        clf.fit(X, ["a", "a", "a"])
    with pytest.raises(ValueError, match="one class|single class|2 classes"):
        clf.fit(X[:1], ["a"])


def test_extractor_ignores_y_and_handles_one_sample(extractor, photo):
    features = KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=SIZE,
                                     cache=None).fit(photo[None], ["wrong", "length"]) \
        .transform(photo[None])
    assert features.shape == (1, 512)


# ------------------------------------------------------------------ inputs are never modified
def _families():
    from transferkit.backbones import list_backbones

    # The cheapest member of each family: smallest input, narrowest output, shortest name
    # (ResNet50 before ResNet101).
    cheapest = {}
    for entry in sorted(list_backbones(), key=lambda e: (e["default_size"], e["feature_width"],
                                                          len(e["name"]), e["name"])):
        cheapest.setdefault(entry["module"], entry["name"])
    return sorted(cheapest.values())


@pytest.mark.parametrize("backbone", _families())
def test_no_input_type_is_modified_by_any_backbone_family(backbone, photo):
    size = {"Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75}.get(backbone, 32)
    extractor = KerasFeatureExtractor(backbone, weights=None, random_state=0, input_size=size,
                                      cache=None, batch_size=4).fit()
    inputs = {
        "float32": photo[None].astype(np.float32).repeat(2, 0),
        "float64": photo[None].astype(np.float64).repeat(2, 0),
        "uint8 at model size": np.zeros((2, size, size, 3), np.float32) + 7,
        "list of arrays": [photo.astype(np.float32), photo.copy()],
    }
    for name, value in inputs.items():
        before = [np.array(v, copy=True) for v in value]
        out = extractor.transform(value)
        for original, kept in zip(value, before, strict=True):
            np.testing.assert_array_equal(original, kept, err_msg=f"{backbone}: {name}")
            assert not np.shares_memory(out, original)
    pil = Image.fromarray(photo)
    pixels = np.asarray(pil).copy()
    extractor.transform([pil])
    np.testing.assert_array_equal(np.asarray(pil), pixels)


# ------------------------------------------------------------------ concurrency
def test_four_threads_share_one_extractor_and_get_serial_results(photo):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8)
    shared = KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=SIZE,
                                   cache=None, batch_size=6).fit()
    serial = [shared.transform(images[k::4]) for k in range(4)]
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = shared.transform(images[k::4])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(4):
        np.testing.assert_array_equal(results[k], serial[k])
