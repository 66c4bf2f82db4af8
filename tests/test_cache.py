"""The feature cache: per-image keys, bit-identical hits, misses on every change, safe disk
entries, and a life outside the estimator so clones in a grid search share it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from transferkit import KerasFeatureExtractor, list_cut_points
from transferkit.cache import DiskFeatureCache, MemoryFeatureCache, resolve_cache

from .conftest import REPO


def extractor(cache, **params) -> KerasFeatureExtractor:
    base = {"backbone": "VGG16", "weights": None, "random_state": 0, "input_size": 32}
    return KerasFeatureExtractor(**{**base, **params}, cache=cache)


@pytest.fixture
def images():
    return np.random.default_rng(5).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_cached_features_are_bit_identical_to_fresh_ones(images):
    cache = MemoryFeatureCache()
    first = extractor(cache).fit_transform(images)
    again = extractor(cache).fit_transform(images)
    fresh = extractor(None).fit_transform(images)
    assert cache.hits == 6 and cache.misses == 6
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again, fresh)


def test_subsets_and_reorderings_of_cached_images_hit_the_cache(images):
    cache = MemoryFeatureCache()
    full = extractor(cache).fit_transform(images)
    part = extractor(cache).fit_transform(images[[4, 0, 2]])
    assert cache.hits == 3 and cache.misses == 6
    np.testing.assert_array_equal(part, full[[4, 0, 2]])


def test_only_uncached_images_are_computed(images):
    cache = MemoryFeatureCache()
    extractor(cache).fit_transform(images[:4])
    mixed = extractor(cache).fit_transform(images)
    assert cache.hits == 4 and cache.misses == 4 + 2
    fresh = extractor(None).fit_transform(images)
    # Computed in other batches than `fresh`: equal up to float32 summation order.
    np.testing.assert_allclose(mixed, fresh, rtol=1e-5, atol=1e-5 * np.abs(fresh).max())


def test_cache_survives_clone(images):
    cache = MemoryFeatureCache()
    original = extractor(cache).fit()
    original.transform(images)
    copy = clone(original)
    assert copy.cache is cache
    copy.fit().transform(images)
    assert cache.hits == 6


def test_clones_reuse_the_built_model():
    first = extractor("memory").fit()
    second = clone(first).fit()
    assert second.model_ is first.model_


@pytest.mark.parametrize(
    "change",
    [
        {"backbone": "VGG19"},
        {"input_size": 48},
        {"random_state": 1},
        {"precision": "bfloat16"},
        {"crop_fraction": 0.875},
    ],
    ids=lambda change: next(iter(change)),
)
def test_changing_any_parameter_of_the_network_misses_the_cache(images, change):
    # Cut and pooling are not among them: see the tests of a search over cuts below.
    cache = MemoryFeatureCache()
    extractor(cache).fit_transform(images)
    extractor(cache, **change).fit_transform(images)
    assert cache.hits == 0 and cache.misses == 12


def test_weights_file_identity_is_part_of_the_key(tmp_path, images):
    import keras

    path = tmp_path / "vgg.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)) \
        .save_weights(path)
    cache = MemoryFeatureCache()
    extractor(cache, weights=str(path)).fit_transform(images)
    extractor(cache, weights=str(path)).fit_transform(images)
    assert cache.hits == 6
    os.utime(path, ns=(1, 1))  # the file "changed": another modification time
    extractor(cache, weights=str(path)).fit_transform(images)
    assert cache.misses == 12


def test_changed_image_file_misses_the_cache(tmp_path, images):
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    for path, pixels in zip(paths, images, strict=False):
        Image.fromarray(pixels).save(path)
    cache = MemoryFeatureCache()
    extractor(cache).fit_transform(paths)
    Image.fromarray(images[5]).save(paths[1])
    os.utime(paths[1], ns=(10**18, 10**18))
    refreshed = extractor(cache).fit_transform(paths)
    assert cache.hits == 2 and cache.misses == 4
    fresh = extractor(None).fit_transform(images[5:6])[0]
    np.testing.assert_allclose(refreshed[1], fresh, rtol=1e-5, atol=1e-5 * np.abs(fresh).max())


def test_random_weights_without_a_seed_are_never_cached(images):
    cache = MemoryFeatureCache()
    extractor(cache, random_state=None).fit_transform(images)
    assert len(cache) == 0 and cache.hits == cache.misses == 0


def test_memory_cache_evicts_least_recently_used_beyond_its_budget():
    vector = np.zeros(4, dtype=np.float32)  # 16 bytes
    cache = MemoryFeatureCache(max_bytes=3 * vector.nbytes)
    cache.put_many((bytes([k]), vector + k) for k in range(3))
    cache.get_many([b"\x00"])  # 0 becomes the most recently used
    cache.put_many([(b"\x03", vector + 3)])
    assert cache.nbytes == 3 * vector.nbytes
    assert [v is None for v in cache.get_many([bytes([k]) for k in range(4)])] == [
        False, True, False, False
    ]


def test_memory_cache_entries_are_read_only_copies():
    cache = MemoryFeatureCache()
    vector = np.ones(3, dtype=np.float32)
    cache.put_many([(b"k", vector)])
    vector[:] = 7
    stored = cache.get_many([b"k"])[0]
    np.testing.assert_array_equal(stored, 1)
    with pytest.raises(ValueError):
        stored[0] = 2


def test_disk_cache_is_shared_between_processes(tmp_path, images):
    directory, data = tmp_path / "features", tmp_path / "data.npz"
    np.savez(data, images=images)
    script = textwrap.dedent(f"""
        import numpy as np
        from transferkit import KerasFeatureExtractor
        images = np.load({str(data)!r})["images"]
        features = KerasFeatureExtractor("VGG16", weights=None, random_state=0, input_size=32,
                                         cache={str(directory)!r}).fit_transform(images)
        np.save({str(tmp_path / "theirs.npy")!r}, features)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cache = DiskFeatureCache(directory)
    ours = extractor(cache).fit_transform(images)
    assert cache.hits == 6 and cache.misses == 0
    np.testing.assert_array_equal(ours, np.load(tmp_path / "theirs.npy"))


def test_corrupt_or_truncated_disk_entries_are_recomputed_not_returned(tmp_path, images):
    cache = DiskFeatureCache(tmp_path)
    expected = extractor(cache).fit_transform(images)
    files = sorted(tmp_path.glob("*/*.feat"))
    assert len(files) == 6
    files[0].write_bytes(files[0].read_bytes()[:-7])  # truncated
    damaged = bytearray(files[1].read_bytes())
    damaged[-1] ^= 0xFF  # one flipped byte
    files[1].write_bytes(bytes(damaged))
    again = extractor(cache).fit_transform(images)
    assert cache.corrupt == 2 and cache.hits == 4
    # The two damaged entries were recomputed (in a batch of two, hence the tolerance).
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert len(list(tmp_path.glob("*/*.feat"))) == 6  # recomputed entries were rewritten


def test_interrupted_disk_write_leaves_no_entry_behind(tmp_path, monkeypatch):
    cache = DiskFeatureCache(tmp_path)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.put_many([(b"key", np.ones(8, dtype=np.float32))])
    assert list(tmp_path.rglob("*.feat")) == []
    assert cache.get_many([b"key"]) == [None]


def test_grid_search_computes_each_image_once(images):
    cache = MemoryFeatureCache()
    X = np.concatenate([images, 255 - images])
    y = np.array([0] * 6 + [1] * 6)
    pipe = Pipeline([("features", extractor(cache)), ("clf", LogisticRegression())])
    GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=3).fit(X, y)
    assert cache.misses == 12  # each image computed once, in the first fold that saw it
    assert cache.hits > 0


def test_bfloat16_features_agree_with_float32(images):
    full = extractor(None).fit_transform(images)
    half = extractor(None, precision="bfloat16").fit_transform(images)
    assert half.dtype == np.float32
    cosine = np.sum(full * half, 1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.98


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, type(None)), ("memory", MemoryFeatureCache), ("some/dir", DiskFeatureCache)],
)
def test_cache_parameter_forms(value, expected):
    assert isinstance(resolve_cache(value), expected)


def test_cache_parameter_rejects_a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        extractor(str(path)).fit()


# ------------------------------------------------------------------ never another image's features
def _fresh(images, **params):
    return extractor(None, **params).fit_transform(images)


def assert_features_equal(actual, expected):
    # Computed in other batches: equal up to float32 summation order.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_palette_images_with_other_palettes_get_their_own_features(images):
    indices = Image.fromarray(images[0]).quantize(16)
    negative = indices.copy()
    negative.putpalette([255 - v for v in indices.getpalette()])
    assert indices.tobytes() == negative.tobytes()  # same index bytes, other colours
    cache = MemoryFeatureCache()
    extractor(cache).fit_transform([indices])
    second = extractor(cache).fit_transform([negative])
    assert_features_equal(second, _fresh([negative.convert("RGB")]))
    assert cache.misses == 2 and cache.hits == 0


def test_pil_image_and_its_rgb_array_share_a_cache_entry(images):
    cache = MemoryFeatureCache()
    from_pil = extractor(cache).fit_transform([Image.fromarray(images[0])])
    from_array = extractor(cache).fit_transform(images[:1])
    assert cache.hits == 1
    np.testing.assert_array_equal(from_pil, from_array)


def test_parameters_changed_after_fit_are_checked_before_transform(images):
    cache = MemoryFeatureCache()
    fitted = extractor(cache).fit()
    fitted.set_params(batch_size=-1)
    with pytest.raises(ValueError, match="batch_size=-1"):
        fitted.transform(images)
    assert len(cache) == 0
    assert_features_equal(extractor(cache).fit_transform(images), _fresh(images))


def _model_with_output(value: float):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * 0.0 + value, name="constant")(x)
    return keras.Model(inputs, x, name=f"constant_{abs(value)}")


def test_non_finite_features_never_enter_the_cache(images):
    cache = MemoryFeatureCache()
    model = _model_with_output(np.inf)
    for _ in range(2):
        features = KerasFeatureExtractor(model, cache=cache).fit_transform(images)
        assert np.isinf(features).all()
    assert len(cache) == 0 and cache.hits == 0


def test_user_model_trained_after_transform_gets_all_new_features(images):
    import keras

    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, name="conv")(inputs / 255.0))
    cache = MemoryFeatureCache()
    fitted = KerasFeatureExtractor(model, cache=cache).fit()
    before = fitted.transform(images[:3])
    kernel, bias = model.get_layer("conv").get_weights()
    model.get_layer("conv").set_weights([kernel * -2.0, bias + 1.0])  # "trained further"
    after = fitted.transform(images)  # three images seen before, three new ones
    fresh = KerasFeatureExtractor(model, cache=None).fit_transform(images)
    assert_features_equal(after, fresh)
    assert not np.allclose(after[:3], before)
    assert cache.hits == 0


def test_disk_entry_replaced_by_another_images_entry_is_not_returned(tmp_path, images):
    cache = DiskFeatureCache(tmp_path)
    expected = extractor(cache).fit_transform(images[:2])
    first, second = (cache._path(key) for key in _keys(images[:2]))
    first.write_bytes(second.read_bytes())  # a valid entry, of the other image
    again = extractor(cache).fit_transform(images[:2])
    assert cache.corrupt == 1 and cache.hits == 1
    assert_features_equal(again, expected)


def test_disk_entry_replaced_by_a_directory_is_a_miss(tmp_path, images):
    cache = DiskFeatureCache(tmp_path)
    expected = extractor(cache).fit_transform(images[:2])
    entry = cache._path(_keys(images[:1])[0])
    entry.unlink()
    entry.mkdir()
    again = extractor(cache).fit_transform(images[:2])
    assert cache.hits == 1
    assert_features_equal(again, expected)


def _keys(images):
    from transferkit.cache import image_keys, tap_fingerprint
    from transferkit.image_input import as_image_collection

    fitted = extractor(None).fit()
    tap = tap_fingerprint(fitted._network_fingerprint_, fitted.cut_layer_, fitted.pooling)
    return image_keys(as_image_collection(images), tap)


@pytest.mark.parametrize("cache_kind", ["memory", "disk"])
def test_file_rewritten_with_its_old_size_and_time_misses_the_cache(tmp_path, images,
                                                                    cache_kind):
    # BMP files of one size have one byte size; os.utime restores the modification time, as
    # cp -p, rsync -t and tar x do.
    path = tmp_path / "photo.bmp"
    Image.fromarray(images[0]).save(path)
    before = path.stat()
    cache = MemoryFeatureCache() if cache_kind == "memory" else DiskFeatureCache(tmp_path / "c")
    extractor(cache).fit_transform([str(path)])
    Image.fromarray(images[1]).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    features = extractor(cache).fit_transform([str(path)])
    assert_features_equal(features, _fresh(images[1:2]))
    assert cache.hits == 0


def test_a_copied_file_hits_the_entry_of_its_original(tmp_path, images):
    original = tmp_path / "a.png"
    Image.fromarray(images[0]).save(original)
    copy = tmp_path / "copy of a.png"
    copy.write_bytes(original.read_bytes())
    cache = MemoryFeatureCache()
    first = extractor(cache).fit_transform([str(original)])
    second = extractor(cache).fit_transform([str(copy)])
    assert cache.hits == 1
    np.testing.assert_array_equal(first, second)


def test_unwritable_cache_directory_warns_once_and_computes(tmp_path, images):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    directory = blocker / "cache"  # cannot be created, not even by root
    with pytest.warns(UserWarning, match="cannot write to the feature cache directory") as seen:
        first = extractor(str(directory)).fit_transform(images)
        second = extractor(str(directory)).fit_transform(images)
    assert len([w for w in seen if "feature cache directory" in str(w.message)]) == 1
    assert str(directory) in str(seen[0].message)
    assert_features_equal(first, _fresh(images))
    np.testing.assert_array_equal(first, second)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_cache_directory_warns_and_computes(tmp_path, images):
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.warns(UserWarning, match="read-only"):
            features = extractor(str(directory)).fit_transform(images)
    finally:
        directory.chmod(0o700)
    assert_features_equal(features, _fresh(images))


# ------------------------------------------------------- a search over cuts, one pass per image
# MobileNetV2 (64 px, random weights): BatchNormalization everywhere, so the networks the
# cache runs are folded as the extractor's own network is.
MOBILE = {"backbone": "MobileNetV2", "weights": None, "random_state": 0, "input_size": 64}
CUTS = ["block_3", "block_6", "block_13"]


def mobile(cache, **params) -> KerasFeatureExtractor:
    return KerasFeatureExtractor(**{**MOBILE, **params}, cache=cache)


@pytest.fixture(scope="module")
def mobile_images():
    return np.random.default_rng(7).integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fresh(mobile_images):
    """Each cut's features computed without a cache, by the network cut there."""
    return {(cut, pooling): mobile(None, cut=cut, pooling=pooling).fit_transform(mobile_images)
            for cut in CUTS for pooling in ("avg", "max")}


@pytest.fixture
def passes(monkeypatch):
    """What each forward pass of an extractor started from: 'pixels' or 'activations'."""
    import transferkit.extractor

    seen: list[str] = []
    real = transferkit.extractor.run_batches

    def spy(passes, inputs, *args, **kwargs):
        seen.append("activations" if isinstance(inputs, np.ndarray) else "pixels")
        return real(passes, inputs, *args, **kwargs)

    monkeypatch.setattr(transferkit.extractor, "run_batches", spy)
    return seen


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_features_of_cuts_that_resume_are_bit_identical_to_fresh_ones(mobile_images, fresh,
                                                                      pooling):
    cache = MemoryFeatureCache()
    for cut in CUTS:
        shared = mobile(cache, cut=cut, pooling=pooling).fit_transform(mobile_images)
        assert np.abs(shared).max() > 0
        assert np.array_equal(shared, fresh[(cut, pooling)]), cut


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "size"), [
    ("ResNet50", 64), ("EfficientNetB0", 64), ("DenseNet121", 64), ("Xception", 71),
    ("InceptionV3", 75), ("MobileNetV3Small", 64), ("ConvNeXtTiny", 64)])
def test_resumed_features_are_bit_identical_to_fresh_ones_on_other_backbones(backbone, size):
    # Fresh features come from the stages chained in one traced call, resumed ones from the
    # stages called one by one: the same graphs, whatever the backbone's blocks.
    images = np.random.default_rng(3).integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    cuts = list_cut_points(backbone)
    cache = MemoryFeatureCache()
    for cut in (cuts[len(cuts) // 3], cuts[-1]):
        params = {"backbone": backbone, "weights": None, "random_state": 0,
                  "input_size": size, "cut": cut}
        fresh = KerasFeatureExtractor(**params, cache=None).fit_transform(images)
        shared = KerasFeatureExtractor(**params, cache=cache).fit_transform(images)
        assert np.array_equal(shared, fresh), cut


def test_a_deeper_cut_resumes_from_the_activation_a_shallower_one_kept(mobile_images, passes):
    cache = MemoryFeatureCache()
    mobile(cache, cut="block_3").fit_transform(mobile_images)
    mobile(cache, cut="block_13").fit_transform(mobile_images)
    assert passes == ["pixels", "activations"]


def test_the_other_pooling_and_the_resume_points_passed_are_already_cached(mobile_images, fresh):
    cache = MemoryFeatureCache()
    mobile(cache, cut="block_6", pooling="avg").fit_transform(mobile_images)
    misses = cache.misses
    for cut, pooling in [("block_6", "max"), ("block_3", "avg"), ("block_3", "max")]:
        cached = mobile(cache, cut=cut, pooling=pooling).fit_transform(mobile_images)
        assert np.array_equal(cached, fresh[(cut, pooling)])
    assert cache.misses == misses


def test_a_list_of_cuts_is_put_together_from_the_entries_of_each_cut(mobile_images, fresh):
    cache = MemoryFeatureCache()
    mobile(cache, cut="block_13").fit_transform(mobile_images)
    misses = cache.misses
    both = mobile(cache, cut=["block_3", "block_13"]).fit_transform(mobile_images)
    assert cache.misses == misses
    assert np.array_equal(both, np.hstack([fresh[("block_3", "avg")],
                                           fresh[("block_13", "avg")]]))


def test_a_grid_search_over_cuts_and_poolings_reads_each_image_once(passes):
    X, y = np.random.default_rng(8).integers(0, 256, (12, 64, 64, 3), np.uint8), np.arange(12) % 2
    grid = {"features__cut": CUTS, "features__pooling": ["avg", "max"]}

    def search(cache):
        pipe = Pipeline([("features", mobile(cache)), ("clf", LogisticRegression())])
        return GridSearchCV(pipe, grid, cv=2).fit(X, y)

    shared = search(MemoryFeatureCache())
    # Fold 0 reads its training images, then its test images, from their pixels; every
    # later cut resumes where the one before stopped.
    assert passes.count("pixels") == 2
    passes.clear()
    uncached = search(None)
    assert passes == ["pixels"] * len(passes) and len(passes) > 2
    assert np.array_equal(shared.cv_results_["mean_test_score"],
                          uncached.cv_results_["mean_test_score"])


def test_clones_cut_elsewhere_share_one_backbone():
    from transferkit.network import trunk_of

    shallow = mobile("memory", cut="block_3").fit()
    deep = mobile("memory", cut="block_13").fit()
    assert trunk_of(shallow.model_).layers[1] is trunk_of(deep.model_).layers[1]


def test_activations_are_evicted_before_any_feature_vector_within_the_budget():
    cache = MemoryFeatureCache(max_bytes=1000)
    cache.put_many([(b"feature", np.ones(100, np.float32))])  # 400 bytes
    cache.put_activations([(b"first", np.ones(100, np.float32))])
    cache.put_activations([(b"second", np.ones(100, np.float32))])
    assert cache.nbytes <= 1000
    assert cache.get_many([b"feature"])[0] is not None
    assert cache.get_activations([b"first", b"second"])[0] is None
    assert cache.get_activations([b"second"])[0] is not None


def test_a_disk_cache_keeps_no_activations(tmp_path):
    cache = DiskFeatureCache(tmp_path)
    cache.put_activations([(b"key", np.ones(8, np.float32))])
    assert cache.get_activations([b"key"]) == [None]
    assert list(tmp_path.rglob("*")) == []
