"""Running networks on batches: several passes share each batch of the same inputs."""

from __future__ import annotations

import keras
import numpy as np

from transferkit.network import make_forward, run_batches

layers = keras.layers


def _conv(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs)))


def _pixels(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)


def test_several_passes_over_one_batch_give_what_each_gives_alone():
    first, second = make_forward(_conv(0), (8, 8)), make_forward(_conv(1), (8, 8))
    x = _pixels()
    together = run_batches([first, second], x, (8, 8), batch_size=4)
    np.testing.assert_array_equal(together[0], run_batches([first], x, (8, 8), 4)[0])
    np.testing.assert_array_equal(together[1], run_batches([second], x, (8, 8), 4)[0])
    assert all(isinstance(rows, np.ndarray) and rows.shape == (10, 4) for rows in together)


def test_a_pass_of_ndarrays_beside_network_passes_is_given_ndarrays():
    seen = []

    def brightness(batch: np.ndarray) -> np.ndarray:
        seen.append(type(batch))
        return batch.mean(axis=(1, 2, 3))[:, None]

    x = _pixels()
    network, plain = run_batches([make_forward(_conv(0), (8, 8)), brightness], x, (8, 8), 4)
    assert seen and all(kind is np.ndarray for kind in seen)
    np.testing.assert_allclose(plain[:, 0], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert network.shape == (10, 4)
