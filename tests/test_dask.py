"""transferkit on Dask: grid searches on a distributed cluster, features of Dask collections.

One ``LocalCluster`` of two worker processes serves the whole module: starting workers
(each imports TensorFlow) is the expensive part, and sharing them also checks that workers
keep their models between computations.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from transferkit import FineTunedClassifier, KerasFeatureExtractor

from .conftest import noise_images

distributed = pytest.importorskip("distributed")
dask_dataframe = pytest.importorskip("dask.dataframe")

# Random VGG16 weights give features of a sane scale at 32 pixels, and the seed makes every
# process build the same network.
SMALL = {"backbone": "VGG16", "weights": None, "input_size": 32, "random_state": 0}


def _two_class_images(n_per_class: int = 12):
    X, names = noise_images(n_per_class)
    return X, (names == "bright").astype(int)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # Float32 rounding, relative to the scale of the features: the math library sums in an
    # order that depends on how images are batched, and partitions batch them differently.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def client():
    def count_extractor_builds():
        # Counts every network an extractor builds in this worker, including the rebuild
        # that unpickling a fitted extractor does: shipping weights per task would show.
        from transferkit import extractor

        original = extractor.KerasFeatureExtractor._build_network

        def counting(self, weights, *args):
            extractor.builds_in_test += 1
            return original(self, weights, *args)

        extractor.builds_in_test = 0
        extractor.KerasFeatureExtractor._build_network = counting

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        client.run(count_extractor_builds)
        yield client


def _worker_extractor_builds(client) -> dict[str, int]:
    def read():
        from transferkit import extractor

        return extractor.builds_in_test

    return client.run(read)


def test_grid_search_of_a_pipeline_on_dask_matches_the_serial_search(client):
    import joblib

    X, y = _two_class_images()
    pipe = Pipeline([("features", KerasFeatureExtractor(**SMALL)),
                     ("clf", LogisticRegression(max_iter=500))])
    # The dummy scores 0.5 and comes first, so the best candidate is not the default pick;
    # two cuts are two networks.
    grid = {"clf": [DummyClassifier(), LogisticRegression(max_iter=500)],
            "features__cut": ["block3", "block5"]}
    serial = GridSearchCV(pipe, grid, cv=2).fit(X, y)

    before = _worker_extractor_builds(client)
    with joblib.parallel_backend("dask"):
        search = GridSearchCV(pipe, grid, cv=2, n_jobs=-1).fit(X, y)
    built = {w: n - before[w] for w, n in _worker_extractor_builds(client).items()}

    assert search.best_params_["features__cut"] == serial.best_params_["features__cut"]
    assert type(search.best_params_["clf"]) is type(serial.best_params_["clf"])
    assert isinstance(search.best_params_["clf"], LogisticRegression)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               serial.cv_results_["mean_test_score"])
    # 8 fits ran on the workers, but each worker built each of the 2 networks at most once:
    # estimators arrived unfitted (a pickled fitted extractor rebuilds its network when
    # loaded, which would count once per task) and the workers' model memo served repeats.
    assert sum(built.values()) >= 2
    assert all(n <= 2 for n in built.values()), built


def test_grid_search_of_fine_tuned_classifier_on_dask_matches_the_serial_search(client):
    import joblib

    X, y = _two_class_images(8)
    clf = FineTunedClassifier(**SMALL, cut="block3", epochs=0, head_epochs=0,
                              early_stopping=False, augment=None)
    # No head epochs: "adam" leaves the head at its random start, "logistic" fits it.
    grid = {"head_init": ["adam", "logistic"]}
    serial = GridSearchCV(clf, grid, cv=2).fit(X, y)
    with joblib.parallel_backend("dask"):
        search = GridSearchCV(clf, grid, cv=2, n_jobs=-1).fit(X, y)
    assert search.best_params_ == serial.best_params_ == {"head_init": "logistic"}
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               serial.cv_results_["mean_test_score"])


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(22):
        path = folder / f"photo_{i:02d}.png"
        # Different sizes: every image goes through the resize to 32 pixels.
        pixels = rng.integers(0, 256, (30 + i, 40 - i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    # Not in name order, so a partition sorted anywhere on the way would show.
    return [paths[i] for i in rng.permutation(len(paths))]


def test_bag_and_dataframe_features_match_in_process_with_one_build_per_worker(
    client, photo_paths
):
    import dask.bag as db
    import pandas as pd

    from transferkit.dask import extract_features, model_builds

    extractor = KerasFeatureExtractor(**SMALL, cut="block4", batch_size=4)
    want = extractor.transform(photo_paths)
    before = client.run(model_builds)

    bag = db.from_sequence(photo_paths, npartitions=5)
    features = extract_features(bag, extractor)
    assert features.shape[1] == want.shape[1] and features.dtype == np.float32
    _close(features.compute(), want)

    # Partitions of 6, 6, 6 and 4 rows; the filter empties the first one.
    series = dask_dataframe.from_pandas(pd.Series(photo_paths, name="path"), npartitions=4)
    kept = series[series.index >= 6]
    frame = extract_features(kept.to_frame(), extractor)
    assert frame.npartitions == 4
    assert list(frame.columns) == list(extractor.get_feature_names_out())
    result = frame.compute()
    assert result.index.tolist() == list(range(6, len(photo_paths)))
    _close(result.to_numpy(), want[6:])

    # Nine partitions over two computations: each worker built the network at most once.
    built = {w: n - before[w] for w, n in client.run(model_builds).items()}
    assert sum(built.values()) >= 1
    assert all(n <= 1 for n in built.values()), built


def test_extract_features_names_what_it_cannot_take():
    import dask.array as da
    import dask.bag as db

    from transferkit.dask import extract_features

    bag = db.from_sequence(["a.png"], npartitions=1)
    with pytest.raises(ValueError, match=r"random weights .* random_state"):
        extract_features(bag, KerasFeatureExtractor("VGG16", weights=None))
    with pytest.raises(ValueError, match="dask.bag.Bag or a Dask DataFrame column"):
        extract_features(da.from_array(np.array(["a.png"])), KerasFeatureExtractor(**SMALL))
    frame = dask_dataframe.from_dict({"path": ["a.png"], "label": [1]}, npartitions=1)
    with pytest.raises(ValueError, match=r"2 columns \['path', 'label'\]"):
        extract_features(frame, KerasFeatureExtractor(**SMALL))


def test_a_preset_directory_gives_on_dask_the_features_of_its_own_transform(
    client, hub_presets, photo_paths
):
    import dask.bag as db

    from transferkit.dask import extract_features

    # Unfitted, it travels as its parameters: every worker reads the directory itself.
    extractor = KerasFeatureExtractor(hub_presets["dinov2"][0], pooling="cls+avg")
    want = extractor.transform(photo_paths[:8])
    features = extract_features(db.from_sequence(photo_paths[:8], npartitions=2), extractor)
    _close(features.compute(), want)


def test_a_fitted_preset_extractor_needs_no_preset_directory_on_the_workers(
    client, hub_presets, photo_paths, tmp_path
):
    import shutil

    import dask.bag as db

    from transferkit.dask import extract_features

    directory = shutil.copytree(hub_presets["dinov2"][0], tmp_path / "dinov2")
    extractor = KerasFeatureExtractor(str(directory), pooling="cls+avg").fit(photo_paths[:8])
    want = extractor.transform(photo_paths[:8])
    # As on a cluster whose workers cannot read the client's disk: its architecture and
    # weights travel with it.
    shutil.rmtree(directory)
    features = extract_features(db.from_sequence(photo_paths[:8], npartitions=2), extractor)
    _close(features.compute(), want)
