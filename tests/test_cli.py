"""The ``transferkit`` command line.

End-to-end behaviours (files written, exit codes, what a shell sees) run in a subprocess, as a
user runs the console script; the rest call ``transferkit.cli.main`` in-process, which is
what the console script calls, to spare a TensorFlow start-up per test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

from transferkit.backbone_table import KERAS_VERSION, describes_installed_keras
from transferkit.openvino_runtime import openvino_available

from .conftest import REPO

# VGG16 at 32 px with random weights: the cheapest backbone whose random features are usable.
SMALL = ["--backbone", "VGG16", "--weights", "none", "--input-size", "32"]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "transferkit.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd)


def _class_folders(root, n_per_class: int, seed: int):
    """ROOT/dark/ and ROOT/bright/: ``n_per_class`` 36-pixel noise PNGs each."""
    rng = np.random.default_rng(seed)
    for label, low in (("dark", 0), ("bright", 160)):
        (root / label).mkdir()
        for i in range(n_per_class):
            pixels = rng.integers(low, low + 96, size=(36, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}_{i}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """FOLDER/<class>/<png>: dark and bright images, 8 of each class."""
    root = _class_folders(tmp_path_factory.mktemp("images"), 8, seed=0)
    (root / "dark" / "notes.txt").write_text("not an image; skipped by suffix")
    return root


@pytest.fixture(scope="module")
def trained_model(image_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("model") / "model.joblib"
    result = run_cli("train", image_folder, "-o", output, "--validation-fraction", "0.25",
                     "--quiet", *SMALL)
    return result, output


def test_console_script_is_declared_and_points_at_main():
    from transferkit.cli import main

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["transferkit"].partition(":")
    assert (module, attribute) == ("transferkit.cli", "main")
    assert callable(main)


def test_backbones_prints_sizes_and_feature_widths(capsys):
    from transferkit.cli import main

    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "input", "size", "feature", "width", "preprocessing"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["ResNet50"][:2] == ["224x224", "2048"]
    assert rows["Xception"][:2] == ["299x299", "2048"]


def test_cut_points_lists_blocks_shallowest_first(capsys):
    from transferkit.cli import main

    assert main(["cut-points", "vgg16"]) == 0
    assert capsys.readouterr().out.split() == ["block1", "block2", "block3", "block4", "block5"]


def test_unknown_backbone_returns_1_with_suggestions(capsys):
    from transferkit.cli import main

    assert main(["cut-points", "ResNet5O"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("transferkit cut-points: error: Unknown backbone 'ResNet5O'.")
    assert "ResNet50" in err


def test_extract_writes_npz_with_one_row_per_image(image_folder, tmp_path):
    output = tmp_path / "features.npz"
    result = run_cli("extract", image_folder / "dark", image_folder / "bright" / "bright_0.png",
                     "-o", output, "--cut", "block3", "--batch-size", "4", *SMALL)
    assert result.returncode == 0, result.stderr
    saved = np.load(output)
    assert saved["features"].shape == (9, 256)  # 8 dark + 1 bright, block3 has 256 channels
    assert saved["paths"][-1].endswith("bright_0.png")
    assert saved["feature_names"][0] == "vgg16_block3_pool_0"
    assert "9 images x 256 features" in result.stdout


def test_extract_writes_parquet_with_a_path_column(image_folder, tmp_path):
    import pandas as pd

    from transferkit.cli import main

    output = tmp_path / "features.parquet"
    assert main(["extract", str(image_folder), "-o", str(output), "--quiet", *SMALL]) == 0
    frame = pd.read_parquet(output)
    assert frame.shape == (16, 1 + 512)
    assert frame.columns[0] == "path"
    assert frame["path"].str.endswith(".png").all()


def test_extract_with_repeated_cut_writes_each_cuts_features_side_by_side(image_folder,
                                                                          tmp_path):
    from transferkit.cli import main

    output = tmp_path / "features.npz"
    assert main(["extract", str(image_folder / "dark"), "-o", str(output), "--quiet",
                 "--cut", "block2", "--cut", "block3", *SMALL]) == 0
    names = np.load(output)["feature_names"]
    assert np.load(output)["features"].shape == (8, 128 + 256)
    assert (names[0], names[128]) == ("block2_avg_0", "block3_avg_0")


def test_extract_with_several_cuts_and_no_pooling_names_the_flags_to_use(image_folder,
                                                                         tmp_path, capsys):
    from transferkit.cli import main

    assert main(["extract", str(image_folder), "-o", str(tmp_path / "f.npz"), "--cut",
                 "block2", "--cut", "block3", "--pooling", "none", *SMALL]) != 0
    assert "use --pooling avg or --pooling max" in capsys.readouterr().err


def test_extract_refuses_an_unknown_output_format(image_folder, tmp_path, capsys):
    from transferkit.cli import main

    output = tmp_path / "features.csv"
    assert main(["extract", str(image_folder), "-o", str(output), *SMALL]) == 1
    assert f"output '{output}' must end in .npz or .parquet" in capsys.readouterr().err
    assert not output.exists()


def test_extract_crop_fraction_gives_the_extractors_central_crop_features(image_folder,
                                                                          tmp_path, capsys):
    from transferkit import KerasFeatureExtractor
    from transferkit.cli import main

    output = tmp_path / "features.npz"
    assert main(["extract", str(image_folder / "dark"), "-o", str(output), "--quiet",
                 "--crop-fraction", "0.875", *SMALL]) == 0
    saved = np.load(output)
    expected = KerasFeatureExtractor("VGG16", weights=None, input_size=32, crop_fraction=0.875,
                                     random_state=0, cache=None).fit_transform(
        list(saved["paths"]))
    np.testing.assert_allclose(saved["features"], expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
def test_extract_runtime_openvino_gives_the_extractors_features(image_folder, tmp_path):
    from transferkit import KerasFeatureExtractor
    from transferkit.cli import main

    output = tmp_path / "features.npz"
    assert main(["extract", str(image_folder / "dark"), "-o", str(output), "--quiet",
                 "--runtime", "openvino", *SMALL]) == 0
    saved = np.load(output)
    expected = KerasFeatureExtractor("VGG16", weights=None, input_size=32, random_state=0,
                                     cache=None).fit_transform(list(saved["paths"]))
    np.testing.assert_allclose(saved["features"], expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
def test_train_finetune_runtime_openvino_saves_a_classifier_that_predicts_with_it(
        image_folder, tmp_path):
    import joblib

    from transferkit.cli import main

    output = tmp_path / "tuned.joblib"
    assert main(["train", str(image_folder), "-o", str(output), "--finetune", "--epochs", "1",
                 "--validation-fraction", "0.25", "--quiet", "--runtime", "openvino",
                 *SMALL]) == 0
    model = joblib.load(output)
    assert model.runtime == "openvino"
    # The central view in TensorFlow, the rest compiled by OpenVINO.
    assert type(model._forward.rest).__name__ == "_OpenVINOForward"
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    from transferkit.image_input import as_image_collection

    pixels = np.concatenate([batch for _, batch in
                             as_image_collection(paths).batches(model.source_size_, 64)])
    np.testing.assert_allclose(model.predict_proba(paths),
                               model.model_.predict(pixels, verbose=0), atol=1e-5)


def test_crop_fraction_outside_zero_one_is_a_usage_error(capsys):
    from transferkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "x.jpg", "-o", "f.npz", "--crop-fraction", "1.5"])
    assert exit_info.value.code == 2
    assert "'1.5' is not a fraction in (0, 1]" in capsys.readouterr().err


def test_missing_image_exits_1_naming_it(tmp_path):
    result = run_cli("extract", tmp_path / "nope.jpg", "-o", tmp_path / "f.npz", *SMALL)
    assert result.returncode == 1
    assert f"image '{tmp_path / 'nope.jpg'}' does not exist" in result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_named_pipe_exits_1_saying_it_is_a_pipe_not_missing(tmp_path):
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    result = run_cli("extract", pipe, "-o", tmp_path / "f.npz", *SMALL)
    assert result.returncode == 1
    assert "named pipe" in result.stderr and "does not exist" not in result.stderr


def test_malformed_command_line_exits_2():
    result = run_cli("extract", "x.jpg", "-o", "f.npz", "--weights", "/no/such/file.h5")
    assert result.returncode == 2
    assert "'/no/such/file.h5' is neither 'imagenet', 'none' nor an existing weights file" \
        in result.stderr


def test_train_prints_validation_accuracy_and_saves_the_model(trained_model):
    result, output = trained_model
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("validation accuracy ")
    # 25% of 16 images, stratified: 4 validation and 12 training images.
    assert "on 4 images (12 training images, features + logistic regression)" in line
    assert 0 <= float(line.split()[2]) <= 1
    assert output.is_file()


def test_train_needs_one_sub_folder_per_class(tmp_path, capsys):
    from transferkit.cli import main

    (tmp_path / "only").mkdir()
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "m.joblib"), *SMALL]) == 1
    assert "has 1 class sub-folder(s)" in capsys.readouterr().err


def test_predict_prints_path_label_and_probability_per_image(trained_model, image_folder):
    result, model = trained_model
    assert result.returncode == 0, result.stderr
    images = [image_folder / "dark" / "dark_0.png", image_folder / "bright" / "bright_1.png"]
    predicted = run_cli("predict", model, *images)
    assert predicted.returncode == 0, predicted.stderr
    lines = [line.split("\t") for line in predicted.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == [str(p) for p in images]
    # Brightness separates the classes even through random VGG16 features.
    assert [line[1] for line in lines] == ["dark", "bright"]
    assert all(0.5 <= float(line[2]) <= 1 for line in lines)


def test_train_finetune_saves_a_fine_tuned_classifier(image_folder, tmp_path, capsys):
    import joblib

    from transferkit import FineTunedClassifier
    from transferkit.cli import main

    output = tmp_path / "tuned.joblib"
    assert main(["train", str(image_folder), "-o", str(output), "--finetune", "--epochs", "1",
                 "--validation-fraction", "0.25", "--quiet", "--crop-fraction", "0.9",
                 *SMALL]) == 0
    out = capsys.readouterr().out
    assert "(12 training images, fine-tuned)" in out

    model = joblib.load(output)
    # Which weights the fit kept, and why, in one line even with --quiet.
    assert model.history_["summary"] in out.splitlines()
    assert isinstance(model, FineTunedClassifier)
    assert model.crop_fraction == 0.9 and model.source_size_ == (36, 36)


# ------------------------------------------------------------------ outputs and model files
def _cli_error(capsys, *argv: str) -> str:
    """Run the command in-process; it must fail with status 1 and one line on stderr."""
    from transferkit.cli import main

    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_extract_onto_a_folder_names_it_before_reading_any_image(image_folder, tmp_path,
                                                                 capsys):
    err = _cli_error(capsys, "extract", tmp_path / "missing.jpg", "-o", tmp_path, *SMALL)
    assert f"-o '{tmp_path}' is a folder; give the path of a file to write, such as " \
           f"'{tmp_path / 'features.npz'}'" in err


def test_extract_into_a_folder_that_cannot_exist_names_the_output(image_folder, tmp_path,
                                                                   capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = _cli_error(capsys, "extract", image_folder, "-o", blocker / "features.npz", *SMALL)
    assert f"cannot write -o '{blocker / 'features.npz'}': '{blocker}' is a file, not a " \
           "folder" in err


def test_extract_into_a_folder_it_cannot_write_names_the_output(image_folder, tmp_path,
                                                                 capsys):
    # chmod does not stop root; /sys refuses new files to everyone.
    if os.geteuid() == 0:
        folder = Path("/sys")
        if not folder.is_dir() or os.access(folder, os.W_OK) and _can_create_in(folder):
            pytest.skip("no folder this user cannot write to")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
    err = _cli_error(capsys, "extract", image_folder, "-o", folder / "features.npz", *SMALL)
    assert f"cannot write -o '{folder / 'features.npz'}': Permission denied in '{folder}'" in err


def _can_create_in(folder: Path) -> bool:
    try:
        (folder / ".transferkit-probe").touch()
    except OSError:
        return False
    (folder / ".transferkit-probe").unlink()
    return True


@pytest.mark.parametrize(("content", "match"), [
    (b"just some notes\n", "is neither a .tkz model file nor a joblib pickle"),
    (b"", "is neither a .tkz model file nor a joblib pickle"),
    ("npz", "is a zip file without 'manifest.json': not a file written by 'transferkit train "
            "-o MODEL'"),
    ("extracted-npz", "is a zip file without 'manifest.json': not a file written by "
                      "'transferkit train -o MODEL' (features written by 'transferkit "
                      "extract' are zip files too"),
    ("truncated", "is not a transferkit model file, or it is truncated"),
], ids=["text", "empty", "npz", "extracted-npz", "truncated-tkz"])
def test_predict_with_a_file_that_is_not_a_model_is_one_line_naming_it(
        content, match, image_folder, tmp_path, capsys):
    from transferkit import FineTunedClassifier

    model = tmp_path / "model.bin"
    if content == "npz":
        np.savez(model, features=np.zeros((2, 3)))
        model = model.with_suffix(".bin.npz")
    elif content == "extracted-npz":  # compressed, as 'transferkit extract' writes them
        model = tmp_path / "features.npz"
        np.savez_compressed(model, features=np.zeros((2, 3)), paths=np.array(["a", "b"]))
    elif content == "truncated":
        saved = FineTunedClassifier("VGG16", weights=None).save(tmp_path / "whole.tkz")
        model.write_bytes(saved.read_bytes()[:100])
    else:
        model.write_bytes(content)
    err = _cli_error(capsys, "predict", model, image_folder / "dark" / "dark_0.png")
    assert f"'{model}'" in err and match in err


def test_predict_with_an_extractor_file_says_it_is_not_a_classifier(image_folder, tmp_path,
                                                                     capsys):
    from transferkit import KerasFeatureExtractor

    model = KerasFeatureExtractor("VGG16", weights=None).save(tmp_path / "extractor.tkz")
    err = _cli_error(capsys, "predict", model, image_folder / "dark" / "dark_0.png")
    assert f"'{model}' holds a KerasFeatureExtractor, not a classifier" in err


def test_train_finetune_passes_batchnorm_statistics_to_the_classifier(image_folder, tmp_path):
    from transferkit import load
    from transferkit.cli import main

    output = tmp_path / "tuned.tkz"
    assert main(["train", str(image_folder), "-o", str(output), "--finetune", "--epochs", "1",
                 "--validation-fraction", "0.25", "--quiet", "--batchnorm-statistics",
                 "target", *SMALL]) == 0
    assert load(output).batchnorm_statistics == "target"


def test_batchnorm_statistics_without_finetune_says_to_add_it(image_folder, tmp_path, capsys):
    err = _cli_error(capsys, "train", image_folder, "-o", tmp_path / "model.joblib",
                     "--batchnorm-statistics", "target", *SMALL)
    assert "--batchnorm-statistics target: the statistics are those of the network " \
           "fine-tuning trains; add --finetune" in err


def test_a_streamed_fit_refuses_target_statistics_in_the_words_of_the_command_line():
    from argparse import Namespace

    from transferkit import FineTunedClassifier
    from transferkit.advice import worded
    from transferkit.cli import _ways_out

    X = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    y = np.array(["a", "b"] * 3)
    with pytest.raises(ValueError) as error:
        FineTunedClassifier("MobileNet", weights=None, backbone_kwargs={"alpha": 0.25},
                            input_size=32, cut="conv_pw_2", cache=False,
                            batchnorm_statistics="target").fit(X, y)
    message = worded(error.value, _ways_out(Namespace()))
    assert message.startswith("--batchnorm-statistics target re-estimates the statistics")
    assert message.endswith("use --batchnorm-statistics pretrained (the default), or fewer "
                            "images.")


def test_train_finetune_to_a_tkz_file_that_predict_reads(image_folder, tmp_path, capsys):
    from transferkit import FineTunedClassifier, load
    from transferkit.cli import main

    output = tmp_path / "tuned.tkz"
    assert main(["train", str(image_folder), "-o", str(output), "--finetune", "--epochs", "1",
                 "--validation-fraction", "0.25", "--quiet", *SMALL]) == 0
    capsys.readouterr()
    model = load(output)
    assert isinstance(model, FineTunedClassifier)
    images = [str(image_folder / "dark" / "dark_0.png"), str(image_folder / "bright" /
                                                             "bright_1.png")]
    assert main(["predict", str(output), *images]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    proba = model.predict_proba(images)
    assert [line[1] for line in lines] == list(model.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose([float(line[2]) for line in lines], proba.max(axis=1),
                               atol=1e-4)


def test_train_without_finetune_to_a_tkz_file_says_what_to_do(image_folder, tmp_path, capsys):
    err = _cli_error(capsys, "train", image_folder, "-o", tmp_path / "model.tkz", *SMALL)
    assert "add --finetune, or save the default features + logistic regression pipeline " \
           f"with -o '{tmp_path / 'model.joblib'}'" in err


# ------------------------------------------------------------------ answering at once
# What a command imports, counted in a fresh interpreter: the help and the listings must not
# pay for TensorFlow's or scikit-learn's start-up (seconds) before printing a line.
IMPORTS_OF = """
import contextlib, io, sys
from transferkit.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(sorted(name for name in ("tensorflow", "keras", "sklearn") if name in sys.modules))
"""


def _heavy_imports(*argv: str) -> str:
    result = subprocess.run([sys.executable, "-c", IMPORTS_OF, *argv], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("argv", [["--help"], ["--version"],
                                  *([command, "--help"] for command in
                                    ("backbones", "cut-points", "extract", "train", "predict"))],
                         ids=" ".join)
def test_help_imports_neither_tensorflow_keras_nor_scikit_learn(argv):
    assert _heavy_imports(*argv) == "[]"


needs_recorded_keras = pytest.mark.skipif(
    not describes_installed_keras(),
    reason=f"transferkit.backbone_table records Keras {KERAS_VERSION}; with another Keras "
           "the listings read keras.applications",
)


@needs_recorded_keras
@pytest.mark.parametrize("argv", [["backbones"], ["cut-points", "MobileNetV2"],
                                  ["cut-points", "nope"]], ids=" ".join)
def test_listings_import_neither_tensorflow_keras_nor_scikit_learn(argv):
    assert _heavy_imports(*argv) == "[]"


@needs_recorded_keras
def test_a_listing_whose_reader_went_away_ends_without_a_traceback():
    # `transferkit backbones | head -1`, made deterministic: nobody reads at all.
    read_end, write_end = os.pipe()
    os.close(read_end)
    result = subprocess.run([sys.executable, "-m", "transferkit.cli", "backbones"],
                            stdout=write_end, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


# ------------------------------------------------------------------ mistyped command lines
def _usage_error(capsys, *argv: str) -> str:
    """Run the command in-process; argparse must refuse it with status 2."""
    from transferkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_an_abbreviated_option_is_refused_naming_the_whole_one(capsys):
    err = _usage_error(capsys, "cut-points", "MobileNet", "--backbone-kwarg", '{"alpha": 1}')
    assert err.startswith("usage: transferkit cut-points ")
    assert "unrecognized option --backbone-kwarg. Did you mean --backbone-kwargs?" in err


def test_a_misspelt_option_shows_the_commands_usage_and_the_closest_option(capsys):
    # Named before argparse would complain that the required -o is missing.
    err = _usage_error(capsys, "extract", "photos/", "--ouptut", "features.npz")
    assert err.startswith("usage: transferkit extract ")
    assert "unrecognized option --ouptut. Did you mean --output?" in err
    assert "'transferkit extract --help' lists its options" in err


def test_an_unknown_short_option_shows_the_commands_usage_and_its_short_options(capsys):
    # Named before argparse would complain that FOLDER and -o are missing.
    err = _usage_error(capsys, "train", "-z")
    assert err.startswith("usage: transferkit train ")
    assert "unrecognized option -z. One-letter options: -h, -o." in err
    assert "'transferkit train --help' lists its options" in err


def test_a_short_option_in_the_wrong_case_is_named(capsys):
    err = _usage_error(capsys, "train", "photos/", "-O", "model.pkl")
    assert "unrecognized option -O. Did you mean -o?" in err


def test_a_long_option_with_one_dash_is_named_with_two(capsys):
    err = _usage_error(capsys, "train", "photos/", "-o", "model.pkl", "-epochs", "3")
    assert "unrecognized option -epochs. Did you mean --epochs? Long options take two " \
           "dashes." in err


def test_a_negative_number_is_a_value_not_an_option(capsys):
    # --cut -1 (the last layer) reaches argparse, which takes it as --cut's value and
    # complains of what is missing.
    err = _usage_error(capsys, "extract", "--cut", "-1")
    assert "unrecognized option" not in err
    assert "the following arguments are required" in err


def test_a_misspelt_command_is_refused_naming_the_closest_one(capsys):
    err = _usage_error(capsys, "cutpoints", "VGG16")
    assert "'cutpoints' is not a command. Did you mean cut-points?" in err
    assert "Commands: backbones, cut-points, extract, train, predict." in err


def test_no_parser_takes_abbreviations():
    from transferkit.cli import _build_parser

    parser, commands = _build_parser()
    assert not parser.allow_abbrev
    assert not any(command.allow_abbrev for command in commands.values())


# ------------------------------------------------------------------ errors in the CLI's words
def test_every_way_out_a_library_error_names_has_command_line_words():
    from argparse import Namespace

    from transferkit.advice import PYTHON
    from transferkit.cli import _ways_out

    assert set(_ways_out(Namespace())) == set(PYTHON)


def test_unknown_backbone_points_at_the_backbones_command(capsys):
    err = _cli_error(capsys, "cut-points", "ResNet5O")
    assert "See 'transferkit backbones' for the" in err
    assert "list_backbones" not in err


def test_unknown_cut_points_at_the_cut_points_command_and_cut_by_index(image_folder, tmp_path,
                                                                      capsys):
    err = _cli_error(capsys, "extract", image_folder / "dark" / "dark_0.png",
                     "-o", tmp_path / "f.npz", *SMALL, "--cut", "blok3")
    assert "--cut 'blok3' is not a block or layer name" in err
    assert "Closest: 'block3'" in err
    assert "See 'transferkit cut-points VGG16' for the valid cut points, or pass a layer " \
           "index as --cut N." in err


def test_too_small_an_input_size_names_the_option(image_folder, tmp_path, capsys):
    err = _cli_error(capsys, "extract", image_folder / "dark" / "dark_0.png",
                     "-o", tmp_path / "f.npz", "--backbone", "VGG16", "--weights", "none",
                     "--input-size", "16")
    assert "--input-size 16 is too small for VGG16" in err
    assert "Pass a larger --input-size (the default for VGG16 is 224)." in err


@pytest.mark.parametrize(("kwargs", "message"), [
    ('{"weights": null}', "--backbone-kwargs may not contain 'weights': use --weights instead"),
    ('{"input_shape": [64, 64, 3]}', "may not contain 'input_shape': use --input-size PIXELS"),
    ('{"alhpa": 0.5}', "keras.applications.MobileNet does not accept ['alhpa'] in "
                       "--backbone-kwargs"),
], ids=["reserved", "input-shape", "unknown"])
def test_backbone_kwargs_errors_name_the_options(kwargs, message, capsys):
    err = _cli_error(capsys, "cut-points", "MobileNet", "--backbone-kwargs", kwargs)
    assert message in err


def test_missing_imagenet_weights_offline_suggest_weights_options(image_folder, tmp_path):
    # An empty Keras cache and an unreachable proxy: exactly an offline user's machine.
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_HOME": str(tmp_path),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "transferkit.cli", "extract",
         str(image_folder / "dark" / "dark_0.png"), "-o", str(tmp_path / "f.npz"),
         "--backbone", "MobileNet",
         "--backbone-kwargs", '{"alpha": 0.5}', "--quiet"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines()
               if line.startswith("transferkit extract: error:")]
    assert "error: Could not download the ImageNet weights of MobileNet" in line
    assert "pass --weights PATH, or use --weights none for random initialisation" in line
    assert "weights=" not in line


# ------------------------------------------------------------------ files left out of a folder
@pytest.fixture(scope="module")
def untidy_folder(tmp_path_factory):
    """FOLDER/<class>/: PNGs, with a text file, a GIF placeholder and a fake JPEG among them."""
    root = _class_folders(tmp_path_factory.mktemp("untidy"), 10, seed=1)
    (root / "dark" / "notes.txt").write_text("not an image")
    Image.new("RGB", (36, 36), "white").save(root / "dark" / "placeholder.gif")
    (root / "bright" / "broken.jpg").write_text("not a JPEG either")
    return root


def test_train_reports_the_files_it_skipped_and_the_odd_ones_it_used(untidy_folder, tmp_path,
                                                                     capsys):
    from transferkit.cli import main

    assert main(["train", str(untidy_folder), "-o", str(tmp_path / "m.joblib"), "--quiet",
                 *SMALL]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"transferkit train: in '{untidy_folder}': skipped 2 files (")
    assert "1 not readable as an image: 'bright/broken.jpg'" in line
    assert "1 not an image by its suffix (.jpg, " in line and "'dark/notes.txt'" in line
    assert "used 1 image of a format rare in its folder, check that it belongs: " \
           "'dark/placeholder.gif' (GIF among PNG)" in line


def test_a_class_folder_without_readable_images_is_named(tmp_path, capsys):
    from transferkit.cli import main

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / label / "x.png")
    (tmp_path / "b" / "x.png").write_bytes(b"no longer a PNG")
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "m.joblib"), *SMALL]) == 1
    skipped, error = capsys.readouterr().err.splitlines()
    assert "skipped 1 file (1 not readable as an image: 'b/x.png')" in skipped
    assert f"class folder '{tmp_path / 'b'}' holds no image files Pillow can read" in error


def test_extract_names_the_files_of_a_folder_it_skipped(image_folder, tmp_path, capsys):
    from transferkit.cli import main

    assert main(["extract", str(image_folder / "dark"), "-o", str(tmp_path / "f.npz"),
                 "--quiet", *SMALL]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 file (1 not an image by its suffix" in err and "'notes.txt'" in err


def test_backbones_says_how_to_name_a_keras_hub_preset(capsys):
    from transferkit.cli import main

    assert main(["backbones"]) == 0
    assert "--backbone hub:NAME" in capsys.readouterr().err
