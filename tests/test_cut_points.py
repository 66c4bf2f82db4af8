"""Tests for transferkit.cut_points: block names, resolving a cut and truncating."""

from __future__ import annotations

import pytest

from transferkit.backbones import build_backbone, get_backbone_spec
from transferkit.cut_points import _built_cut_points, list_cut_points, resolve_cut, truncate


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    import keras

    keras.backend.clear_session()


@pytest.fixture(scope="module")
def resnet50():
    return build_backbone("ResNet50", weights=None, input_size=(64, 64))


def _channels(layer) -> int:
    return layer.output.shape[-1]


# ------------------------------------------------------- seed backbones at default size


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Xception", {"block2": (74, 128), "block13": (10, 1024), "block14": (10, 2048)}),
        ("VGG16", {"block3": (28, 256), "block4": (14, 512), "block5": (7, 512)}),
        ("VGG19", {"block2": (56, 128), "block4": (14, 512), "block5": (7, 512)}),
        ("ResNet50", {"conv3": (28, 512), "conv4": (14, 1024), "conv5": (7, 2048)}),
        ("InceptionV3", {"mixed2": (35, 288), "mixed7": (17, 768), "mixed10": (8, 2048)}),
    ],
)
def test_seed_backbone_cuts_at_default_size_have_expected_shapes(name, expected):
    spec = get_backbone_spec(name)
    model = build_backbone(name, weights=None, input_size=None)
    assert tuple(model.input.shape) == (None, spec.default_size, spec.default_size, 3)

    for cut, (side, channels) in expected.items():
        truncated = truncate(model, resolve_cut(model, cut, spec.module))
        assert tuple(truncated.output.shape) == (None, side, side, channels), cut
    assert _channels(resolve_cut(model, None, spec.module)) == spec.feature_width


# --------------------------------------------------------- block names, per family


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("VGG16", [f"block{i}" for i in range(1, 6)]),
        ("VGG19", [f"block{i}" for i in range(1, 6)]),
        ("ResNet50", ["conv2", "conv3", "conv4", "conv5"]),
        ("ResNet50V2", ["conv2", "conv3", "conv4", "conv5"]),
        ("Xception", [f"block{i}" for i in range(1, 15)]),
        ("InceptionV3", [f"mixed{i}" for i in range(11)]),
        (
            "DenseNet121",
            ["conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5"],
        ),
        ("MobileNet", [f"conv_pw_{i}" for i in range(1, 14)]),
        (
            "MobileNetV2",
            ["expanded_conv"] + [f"block_{i}" for i in range(1, 17)] + ["Conv_1"],
        ),
        (
            "MobileNetV3Small",
            ["expanded_conv"] + [f"expanded_conv_{i}" for i in range(1, 11)] + ["conv_1"],
        ),
        ("EfficientNetB0", [f"block{i}" for i in range(1, 8)] + ["top"]),
        ("EfficientNetV2B0", [f"block{i}" for i in range(1, 7)] + ["top"]),
        ("ConvNeXtTiny", ["stage_0", "stage_1", "stage_2", "stage_3"]),
        (
            "InceptionResNetV2",
            ["mixed_5b"]
            + [f"block35_{i}" for i in range(1, 11)]
            + ["mixed_6a"]
            + [f"block17_{i}" for i in range(1, 21)]
            + ["mixed_7a"]
            + [f"block8_{i}" for i in range(1, 11)]
            + ["conv_7b"],
        ),
        (
            "NASNetMobile",
            ["stem_1", "stem_2"]
            + [f"normal_{i}" for i in range(4)]
            + ["reduce_4"]
            + [f"normal_{i}" for i in range(5, 9)]
            + ["reduce_8"]
            + [f"normal_{i}" for i in range(9, 13)],
        ),
    ],
)
def test_list_cut_points_gives_family_block_names_shallowest_first(name, expected):
    assert list_cut_points(name) == expected
    # Read from the built network too, not only from transferkit.backbone_table.
    assert _built_cut_points(name, get_backbone_spec(name).module, None) == expected


def test_list_cut_points_accepts_any_spelling_of_the_backbone():
    assert list_cut_points("vgg16") == list_cut_points("VGG16")


def test_list_cut_points_returns_a_new_list_each_call():
    first = list_cut_points("VGG16")
    first.append("mutated")
    assert "mutated" not in list_cut_points("VGG16")


def test_list_cut_points_rejects_reserved_backbone_kwargs():
    with pytest.raises(ValueError, match="input_size"):
        list_cut_points("MobileNet", backbone_kwargs={"input_shape": (64, 64, 3)})


def test_list_cut_points_passes_backbone_kwargs_to_the_constructor():
    # With include_preprocessing=False MobileNetV3 has no Rescaling layer, but the
    # blocks are the same; an unknown argument would raise instead.
    assert list_cut_points(
        "MobileNetV3Small", backbone_kwargs={"include_preprocessing": False}
    ) == list_cut_points("MobileNetV3Small")


# ---------------------------------------------------------------------- resolve_cut


def test_resolve_cut_none_is_the_last_layer(resnet50):
    assert resolve_cut(resnet50, None) is resnet50.layers[-1]


def test_resolve_cut_positive_index(resnet50):
    assert resolve_cut(resnet50, 5) is resnet50.layers[5]


def test_resolve_cut_negative_index_counts_from_the_end(resnet50):
    assert resolve_cut(resnet50, -2) is resnet50.layers[-2]


def test_resolve_cut_exact_layer_name(resnet50):
    assert resolve_cut(resnet50, "conv3_block2_out").name == "conv3_block2_out"


def test_resolve_cut_exact_layer_name_without_module(resnet50):
    assert resolve_cut(resnet50, "conv4_block6_out", module=None).name == "conv4_block6_out"


@pytest.mark.parametrize("spelling", ["conv4", "CONV4", "Conv4"])
def test_resolve_cut_block_name_is_case_insensitive(resnet50, spelling):
    assert resolve_cut(resnet50, spelling, "resnet").name == "conv4_block6_out"


def test_resolve_cut_unknown_name_lists_suggestions(resnet50):
    with pytest.raises(ValueError, match="list_cut_points") as excinfo:
        resolve_cut(resnet50, "conv6", "resnet")
    message = str(excinfo.value)
    assert "'conv6'" in message
    assert "'conv5'" in message or "'conv4'" in message


def test_resolve_cut_unknown_layer_name_suggests_close_layer(resnet50):
    with pytest.raises(ValueError, match="conv3_block2_out"):
        resolve_cut(resnet50, "conv3_block2_outt", "resnet")


def test_resolve_cut_block_name_needs_the_family(resnet50):
    with pytest.raises(ValueError, match="'conv4'"):
        resolve_cut(resnet50, "conv4", module=None)


def test_resolve_cut_index_zero_is_the_input_layer_and_raises(resnet50):
    with pytest.raises(ValueError, match=r"cut=0 .*input layer") as excinfo:
        resolve_cut(resnet50, 0)
    assert f"{len(resnet50.layers) - 1}" in str(excinfo.value)


@pytest.mark.parametrize("index", [10_000, -10_000])
def test_resolve_cut_out_of_range_index_raises_with_valid_range(resnet50, index):
    n_layers = len(resnet50.layers)
    with pytest.raises(ValueError, match=rf"cut={index} .*1\.\.{n_layers - 1}"):
        resolve_cut(resnet50, index)


@pytest.mark.parametrize("cut", [1.5, True, ["conv4"]])
def test_resolve_cut_rejects_other_types(resnet50, cut):
    with pytest.raises(TypeError, match="cut"):
        resolve_cut(resnet50, cut)


def test_block_name_wins_over_the_layer_of_the_same_name():
    # MobileNet's block "conv_pw_1" ends at conv_pw_1_relu; the layer "conv_pw_1" is
    # only the pointwise convolution, before batch normalisation and ReLU.
    model = build_backbone("MobileNet", weights=None, input_size=32)
    assert resolve_cut(model, "conv_pw_1", "mobilenet").name == "conv_pw_1_relu"


def test_convnext_stage_ends_at_its_unnamed_residual_add():
    model = build_backbone("ConvNeXtTiny", weights=None, input_size=32)
    end = resolve_cut(model, "stage_0", "convnext")
    assert "stage_0" not in end.name
    truncated = truncate(model, end)
    assert tuple(truncated.output.shape) == (None, 8, 8, 96)
    # The block output feeds the next stage's downsampling directly.
    assert model.get_layer("convnext_tiny_downsampling_block_0").input is end.output


def test_trailing_normalisation_belongs_to_the_deepest_block():
    model = build_backbone("ResNet50V2", weights=None, input_size=32)
    assert resolve_cut(model, "conv5", "resnet_v2").name == "post_relu"


# ------------------------------------------------------------ a user's own keras.Model


def _residual_model():
    import keras

    inputs = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    added = keras.layers.Add(name="add")([a, b])
    out = keras.layers.ReLU(name="relu")(added)
    return keras.Model(inputs, out, name="residual")


def test_list_cut_points_of_a_model_are_its_articulation_layers():
    # "b" is not a cut point: "add" still needs "a", produced before "b".
    assert list_cut_points(_residual_model()) == ["a", "add", "relu"]


def test_list_cut_points_of_a_sequential_model_is_every_layer():
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.ReLU(name="relu"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
        ]
    )
    assert list_cut_points(model) == ["conv", "relu", "pool"]


def test_list_cut_points_of_a_model_resolve_to_layers():
    model = _residual_model()
    for cut in list_cut_points(model):
        assert resolve_cut(model, cut).name == cut


def test_list_cut_points_of_an_unbuilt_subclassed_model_raises():
    import keras

    class Plain(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="keras.Model\\(inputs, outputs\\)"):
        list_cut_points(Plain())


# ------------------------------------------------------------------------- truncate


def test_truncate_names_the_model_and_shares_layers(resnet50):
    layer = resolve_cut(resnet50, "conv3", "resnet")
    truncated = truncate(resnet50, layer)
    assert truncated.name == f"{resnet50.name}_to_conv3_block4_out"
    assert truncated.get_layer("conv2_block1_1_conv") is resnet50.get_layer("conv2_block1_1_conv")
    assert tuple(truncated.output.shape) == (None, 8, 8, 512)


def test_a_layer_whose_successors_also_read_an_earlier_layer_is_no_articulation():
    # A NASNet cell reads the cell before the previous one: a computation cannot start
    # from the previous cell's activation alone, so staged passes must not resume there.
    import keras

    from transferkit.cut_points import articulation_names

    inputs = keras.Input((8, 8, 3))
    first = keras.layers.Conv2D(4, 1, name="first")(inputs)
    second = keras.layers.Conv2D(4, 1, name="second")(first)
    joined = keras.layers.Add(name="joined")([first, second])
    last = keras.layers.Conv2D(4, 1, name="last")(joined)
    names = articulation_names(keras.Model(inputs, last))
    assert {"first", "joined"} <= names
    assert "second" not in names
