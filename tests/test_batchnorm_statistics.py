"""BatchNormalization statistics re-estimated on the target images, layer after layer."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.batchnorm_statistics import reestimate_statistics


@pytest.fixture
def chain():
    """activations -> BatchNormalization -> 1x1 convolution -> BatchNormalization, and
    the network from the activations to both layers' inputs."""
    import keras

    inputs = keras.Input((3, 3, 2))
    first = keras.layers.BatchNormalization()
    convolution = keras.layers.Conv2D(2, 1, kernel_initializer=keras.initializers.Constant(
        [[[[1.0, 0.5], [-1.0, 2.0]]]]))
    second = keras.layers.BatchNormalization()
    to_first = first(inputs)
    into_second = convolution(to_first)
    second(into_second)
    inputs_net = keras.Model(inputs, [inputs, into_second])
    return inputs_net, (first, second), convolution


def _activations(n: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (5.0 + 2.0 * rng.standard_normal((n, 3, 3, 2))).astype(np.float32)


def test_each_layer_gets_the_mean_and_variance_of_its_inputs(chain):
    inputs_net, layers, _ = chain
    x = _activations()
    reestimate_statistics(inputs_net, layers, x)
    first_inputs = x.reshape(-1, 2)
    np.testing.assert_allclose(layers[0].moving_mean, first_inputs.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(layers[0].moving_variance, first_inputs.var(axis=0), rtol=1e-5)


def test_a_later_layer_is_estimated_on_what_the_earlier_ones_give_with_their_new_statistics(
        chain):
    inputs_net, layers, convolution = chain
    x = _activations()
    reestimate_statistics(inputs_net, layers, x)
    # By hand: the first layer normalises with the statistics just set, then the convolution.
    normalised = np.asarray(layers[0](x, training=False))
    second_inputs = np.asarray(convolution(normalised)).reshape(-1, 2)
    np.testing.assert_allclose(layers[1].moving_mean, second_inputs.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(layers[1].moving_variance, second_inputs.var(axis=0), rtol=1e-4)
    # Normalised with the new statistics, the first layer's output is centred.
    np.testing.assert_allclose(normalised.reshape(-1, 2).mean(axis=0), 0.0, atol=1e-4)


def test_the_statistics_do_not_depend_on_the_batch_size(chain):
    inputs_net, layers, _ = chain
    x = _activations(23)
    reestimate_statistics(inputs_net, layers, x, batch_size=len(x))
    whole = [np.asarray(layer.moving_variance) for layer in layers]
    reestimate_statistics(inputs_net, layers, x, batch_size=4)
    for layer, expected in zip(layers, whole, strict=True):
        np.testing.assert_allclose(layer.moving_variance, expected, rtol=1e-5)


def test_no_images_is_refused(chain):
    inputs_net, layers, _ = chain
    with pytest.raises(ValueError, match="at least one image"):
        reestimate_statistics(inputs_net, layers, _activations()[:0])


def test_a_residual_block_is_re_estimated_through_its_skip_connection():
    from transferkit.finetune_network import build_finetune_network

    # ResNet50 cut after its conv3 stage, frozen up to conv2: four residual blocks trained.
    network = build_finetune_network(
        "ResNet50", weights=None, input_size=32, cut="conv3", backbone_kwargs=None,
        freeze_until="auto", train_batchnorm=False, pooling="avg", dropout=0.0,
        hidden_units=None, head_l2=0.0, crop_fraction=1.0, augmentations=(), n_classes=2,
        seeds=dict.fromkeys(("init", "dropout", "augment", "split", "shuffle"), 0),
        head_blocks=1)
    assert network.freeze_layer == "conv2_block3_out"
    assert len(network.batchnorm_layers) == 13  # 3 per block, and the first block's shortcut
    pixels = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    activations = np.asarray(network.prefix(pixels))
    reestimate_statistics(network.batchnorm_inputs, network.batchnorm_layers, activations)
    inputs = network.batchnorm_inputs(activations)
    for layer, x in zip(network.batchnorm_layers, inputs, strict=True):
        x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        np.testing.assert_allclose(layer.moving_mean, x.mean(axis=0), rtol=1e-3,
                                   atol=1e-5 * np.abs(x).max())
