"""How images as users have them become model-ready batches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transferkit.image_input import as_image_collection, load_image, resize_image

SIZE = (20, 24)


def _collect(images, size=SIZE, batch_size=3):
    batches = list(as_image_collection(images).batches(size, batch_size))
    assert [start for start, _ in batches] == list(range(0, len(images), batch_size))
    return np.concatenate([batch for _, batch in batches])


def _save(tmp_path, name, pixels, **kwargs):
    path = tmp_path / name
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def test_uint8_array_becomes_float32_batches_in_order(rng_images):
    out = _collect(rng_images, size=rng_images.shape[1:3])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, rng_images.astype(np.float32))


def test_caller_array_is_never_modified(rng_images):
    floats = rng_images.astype(np.float32)
    before = floats.copy()
    out = _collect(floats, size=floats.shape[1:3])
    out += 1
    np.testing.assert_array_equal(floats, before)
    assert not np.shares_memory(out, floats)


def test_grayscale_stack_is_repeated_to_three_channels(rng_images):
    gray = rng_images[..., 0]
    out = _collect(gray, size=gray.shape[1:3])
    assert out.shape == (8, 40, 48, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_single_channel_axis_is_treated_as_grayscale(rng_images):
    np.testing.assert_array_equal(
        _collect(rng_images[..., :1]), _collect(rng_images[..., 0])
    )


def test_rgba_array_drops_alpha_like_pillow(rng_images):
    rgba = np.concatenate([rng_images, np.zeros_like(rng_images[..., :1])], axis=-1)
    np.testing.assert_array_equal(_collect(rgba), _collect(rng_images))


def test_arrays_of_any_size_are_resized_to_the_model_input(rng_images):
    out = _collect(rng_images)
    assert out.shape == (8, *SIZE, 3)


def test_file_paths_give_the_same_pixels_as_the_decoded_array(tmp_path, rng_images):
    paths = [_save(tmp_path, f"img{i}.png", img) for i, img in enumerate(rng_images)]
    from_paths = _collect([str(p) for p in paths])
    from_array = _collect(rng_images)
    np.testing.assert_array_equal(from_paths, from_array)


def test_pathlib_paths_and_pil_images_are_accepted(tmp_path, rng_images):
    paths = [_save(tmp_path, f"img{i}.png", img) for i, img in enumerate(rng_images)]
    pil_images = [Image.fromarray(img) for img in rng_images]
    np.testing.assert_array_equal(_collect(paths), _collect(pil_images))


def test_pandas_series_and_one_column_dataframe_of_paths(tmp_path, rng_images):
    pd = pytest.importorskip("pandas")
    paths = [str(_save(tmp_path, f"img{i}.png", img)) for i, img in enumerate(rng_images)]
    series = pd.Series(paths, index=range(100, 108))
    collection = as_image_collection(series)
    assert list(collection.index) == list(range(100, 108))
    np.testing.assert_array_equal(_collect(series), _collect(paths))
    np.testing.assert_array_equal(_collect(pd.DataFrame({"path": paths})), _collect(paths))


def test_dataframe_with_several_columns_is_rejected_naming_them():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"path": ["a.jpg"], "age": [3]})
    with pytest.raises(ValueError, match="2 columns.*'path', 'age'"):
        as_image_collection(frame)


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((30, 20, 3), dtype=np.uint8)
    upright[:5] = 255  # a white band at the top of a portrait image
    stored = np.rot90(upright, k=1)  # stored sideways, as a camera writes it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": undoes the rotation above
    path = tmp_path / "rotated.png"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif)
    np.testing.assert_array_equal(load_image(path), upright)


def test_palette_grayscale_and_cmyk_files_become_rgb(tmp_path, rng_images):
    rgb = Image.fromarray(rng_images[0])
    for mode in ("P", "L", "CMYK", "LA", "RGBA"):
        path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        rgb.convert(mode).save(path)
        pixels = load_image(path)
        assert pixels.shape == (40, 48, 3) and pixels.dtype == np.uint8, mode


def test_sixteen_bit_grayscale_keeps_its_contrast(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    pixels = load_image(path)
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255


def test_resize_of_float_and_uint8_images_agrees(rng_images):
    as_uint8 = resize_image(rng_images[0], SIZE).astype(np.float32)
    as_float = resize_image(rng_images[0].astype(np.float32), SIZE)
    # Pillow's 8-bit filter rounds its weights to fixed point: within one grey level.
    np.testing.assert_allclose(as_uint8, as_float, atol=1.0)


def test_missing_file_error_names_index_and_path(tmp_path, rng_images):
    good = str(_save(tmp_path, "good.png", rng_images[0]))
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match=r"image 1 .*missing\.jpg"):
        _collect([good, missing, good])


def test_undecodable_file_error_names_index_and_path(tmp_path, rng_images):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"image 0 .*notes\.jpg.*Cannot decode"):
        _collect([str(text)])


def test_truncated_jpeg_is_an_error_not_a_half_image(tmp_path, rng_images):
    path = _save(tmp_path, "whole.jpg", np.repeat(np.repeat(rng_images[0], 8, 0), 8, 1))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.jpg"):
        load_image(truncated)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((4, 4)), r"shape \(4, 4\)"),
        (np.zeros((1, 2, 4, 4, 3)), r"shape \(1, 2, 4, 4, 3\)"),
        (np.zeros((2, 4, 4, 2)), "2 channels"),
        (np.zeros((0, 4, 4, 3)), "empty"),
        ([], "empty"),
        ("image.jpg", "single image"),
        ([1, 2], "image 0 .* int"),
    ],
)
def test_malformed_inputs_raise_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        as_image_collection(bad)


def test_nan_pixels_error_names_the_image():
    images = np.zeros((3, 4, 4, 3), dtype=np.float32)
    images[2, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="image 2 .*NaN"):
        as_image_collection(images)


def test_out_of_range_pixels_error_names_the_image():
    images = np.zeros((3, 4, 4, 3), dtype=np.int32)
    images[1, 0, 0, 0] = 300
    with pytest.raises(ValueError, match=r"image 1 .*\[0, 300\]"):
        as_image_collection(images)


def test_unit_scaled_floats_warn():
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        as_image_collection(np.full((2, 4, 4, 3), 0.5, dtype=np.float32))


def test_streamed_batches_keep_input_order_with_many_threads(tmp_path, rng_images):
    paths = [str(_save(tmp_path, f"img{i}.png", img)) for i, img in enumerate(rng_images)]
    order = [5, 0, 7, 3, 3, 1]
    out = np.concatenate(
        [b for _, b in as_image_collection([paths[i] for i in order]).batches(SIZE, 4, 8)]
    )
    np.testing.assert_array_equal(out, _collect(rng_images)[order])


def test_held_in_memory_keeps_decoded_pixels_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(paths[-1])
    images = as_image_collection(paths)
    held = images.held_in_memory((24, 32), batch_size=2, max_bytes=2**20)
    assert not held.is_streamed and held.array.dtype == np.uint8
    decoded = np.concatenate([b for _, b in images.batches((24, 32), 2)])
    from_memory = np.concatenate([b for _, b in held.batches((24, 32), 2)])
    np.testing.assert_array_equal(from_memory, decoded)


def test_held_in_memory_streams_what_does_not_fit_or_is_not_integer(tmp_path):
    rng = np.random.default_rng(0)
    images = as_image_collection([rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)] * 3)
    assert images.held_in_memory((8, 8), 2, max_bytes=8 * 8 * 3 * 3 - 1) is images
    fractional = as_image_collection([rng.uniform(0, 255, (8, 8, 3))] * 3)
    assert fractional.held_in_memory((8, 8), 2, max_bytes=2**20) is fractional
