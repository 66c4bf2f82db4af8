"""The ``transferkit`` command line: list backbones, extract features, train and predict.

Run ``transferkit --help`` or ``transferkit COMMAND --help``. Errors in what the user passed
(a missing file, an unknown backbone, an undecodable image) print one line naming the
offending value and exit with status 1, the way out in the command line's words
(:func:`_ways_out`, see :mod:`transferkit.advice`); malformed command lines exit with status
2, as argparse does, with a "did you mean" for a mistyped option or command. Anything else
is a bug and shows its traceback.

Parsing the command line, the help and the listings (``backbones``, ``cut-points``) import
neither TensorFlow nor scikit-learn: each command imports what it uses when it runs.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .advice import is_advised, worded

__all__ = ["main"]

# Suffixes of the files taken from a folder; Pillow reads more, but these are what photo
# folders hold, and skipping the rest keeps stray .txt or .DS_Store files out.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MODEL_FILE_SUFFIX = ".tkz"  # transferkit.save's format; any other -o of train is a joblib pickle


class UsageError(Exception):
    """A value on the command line the library would reject; reported without a traceback."""


def _ways_out(args: argparse.Namespace) -> dict[str, str]:
    """The ways out library errors name (:data:`transferkit.advice.PYTHON`), as this command
    takes them. A value may use the error's own values, such as ``{cut!r}``."""
    backbone = (getattr(args, "backbone", None) or "NAME").replace("{", "{{").replace("}", "}}")
    return {
        "list_backbones": "'transferkit backbones'",
        "list_cut_points": f"'transferkit cut-points {backbone}'",
        "cut_by_index": "a layer index as --cut N",
        "cut_given": "--cut {cut!r}",
        "cuts_given": "--cut {cut!r}",
        "no_pooling": "--pooling none",
        "pool_each_cut": "--pooling avg or --pooling max",
        "weights_given": "--weights {weights!r}",
        "choose_weights": "use --weights",
        "random_weights": "--weights none",
        "weights_file": "--weights PATH",
        "input_size_given": "--input-size {input_size[0]}",
        "input_size_option": "--input-size",
        "choose_input_size": "use --input-size PIXELS",
        "backbone_kwargs_option": "--backbone-kwargs",
        "model_writer": "'transferkit train -o MODEL'",
        "model_file_formats": "Pass a model written by 'transferkit train -o MODEL'.",
        "other_zip_files": "features written by 'transferkit extract' are zip files too, but "
                           "hold no model",
        "statistics_target": "--batchnorm-statistics target",
        "statistics_pretrained": "--batchnorm-statistics pretrained (the default)",
        "fewer_views": "fewer images",
    }


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that takes option names only in full (``allow_abbrev=False``).

    An abbreviation that argparse would take today becomes ambiguous the day an option with
    the same beginning is added; a script relying on it would then break, or silently mean
    something else.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def option_names(self) -> list[str]:
        return [name for action in self._actions for name in action.option_strings]


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """' Did you mean X?' for the choice ``word`` abbreviates or misspells, if there is one."""
    starting = [choice for choice in choices if choice.startswith(word)]
    if len(starting) == 1:
        return f" Did you mean {starting[0]}? Names are not abbreviated."
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]}?" if close else ""


# What argparse takes for a negative number rather than an option (its own pattern).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _short_option_hint(word: str, known: Sequence[str]) -> tuple[str, str]:
    """The unknown option a ``-x`` word names, and what the user may have meant."""
    long_names = [option for option in known if option.startswith("--")]
    name = word.split("=", 1)[0]
    if "-" + name in long_names:  # -epochs: a long option with one dash
        return name, f" Did you mean -{name}? Long options take two dashes."
    # argparse reads -xVALUE as -x with its value, so the letter is what is unknown.
    letter = word[:2]
    if letter.swapcase() in known:
        return letter, f" Did you mean {letter.swapcase()}?"
    starting = [option for option in long_names if option[2:3] == letter[1:]]
    shorts = ", ".join(option for option in known if not option.startswith("--"))
    if len(starting) == 1:
        return letter, f" Did you mean {starting[0]}? One-letter options: {shorts}."
    return letter, f" One-letter options: {shorts}."


def _refuse_unknown_names(argv: Sequence[str], parser: _Parser,
                          commands: dict[str, _Parser]) -> None:
    """Exit with a "did you mean" for a mistyped command or option, before argparse.

    argparse reports an unknown option only after the whole line, under the main usage, and
    a missing required option first; the mistyped name is what the user needs to hear.
    """
    command = next((word for word in argv if not word.startswith("-")), None)
    if command is None:
        return
    if command not in commands:
        parser.error(f"{command!r} is not a command.{_did_you_mean(command, list(commands))}"
                     f" Commands: {', '.join(commands)}.")
    subparser = commands[command]
    known = subparser.option_names()
    rest = list(argv)[list(argv).index(command) + 1:]
    for word in rest[:rest.index("--")] if "--" in rest else rest:
        name = word.split("=", 1)[0]
        if name.startswith("--") and name not in known:
            long_names = [option for option in known if option.startswith("--")]
            subparser.error(f"unrecognized option {name}.{_did_you_mean(name, long_names)} "
                            f"'{subparser.prog} --help' lists its options.")
        if (name.startswith("-") and not name.startswith("--") and name != "-"
                and not _NEGATIVE_NUMBER.match(word) and word[:2] not in known):
            unknown, hint = _short_option_hint(word, known)
            subparser.error(f"unrecognized option {unknown}.{hint} "
                            f"'{subparser.prog} --help' lists its options.")


# ---------------------------------------------------------------------------- arguments
def _weights(value: str) -> str | None:
    if value.lower() == "none":
        return None
    if value.lower() == "imagenet":
        return "imagenet"
    if not Path(value).expanduser().is_file():
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither 'imagenet', 'none' nor an existing weights file"
        )
    return value


def _cut(value: str) -> str | int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _backbone_kwargs(value: str) -> dict[str, Any]:
    try:
        kwargs = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not JSON ({exc.msg}); write e.g. '{{\"alpha\": 0.25}}'"
        ) from None
    if not isinstance(kwargs, dict):
        raise argparse.ArgumentTypeError(
            f"{value!r} is JSON but not an object; write e.g. '{{\"alpha\": 0.25}}'"
        )
    return kwargs


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


def _crop_fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a fraction in (0, 1]; 1 keeps the whole image, 0.875 its centre"
        )
    return number


def _add_backbone_options(parser: argparse.ArgumentParser, default: str,
                          several_cuts: bool = False) -> None:
    parser.add_argument("--backbone", default=default,
                        help=f"backbone name, see 'transferkit backbones' (default {default}); "
                             "or a keras-hub preset: hub:NAME or a preset directory")
    parser.add_argument("--backbone-kwargs", type=_backbone_kwargs, default=None,
                        metavar="JSON",
                        help="constructor arguments as JSON, e.g. '{\"alpha\": 0.25}'")
    parser.add_argument("--weights", type=_weights, default="imagenet",
                        metavar="imagenet|none|PATH",
                        help="ImageNet weights (Keras cache in $KERAS_HOME/models), random "
                             "weights, or a weights file (default imagenet)")
    if several_cuts:
        parser.add_argument("--cut", type=_cut, action="append", default=None,
                            help="cut point: a block name (see 'transferkit cut-points NAME'), "
                                 "a layer name or an index; default: the last convolutional "
                                 "output. Repeat it (--cut conv3 --cut conv4) for the pooled "
                                 "features of each, side by side, from one pass; '--cut blocks' "
                                 "for every block")
    else:
        parser.add_argument("--cut", type=_cut, default=None,
                            help="cut point: a block name (see 'transferkit cut-points NAME'), "
                                 "a layer name or an index; default: the last convolutional "
                                 "output")
    parser.add_argument("--input-size", type=_positive_int, default=None, metavar="PIXELS",
                        help="side of the image the network sees (default: the backbone's "
                             "own)")
    parser.add_argument("--crop-fraction", type=_crop_fraction, default=None, metavar="F",
                        help="the network sees the central F of each image, resized to "
                             "input-size / F first (default: 1.0 for features; with "
                             "--finetune, 0.875 or 1.0, whichever cross-validation on the "
                             "training images prefers)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="images per forward pass (default: 8 on a CPU and 32 on a GPU "
                             "for features, 32 for fine-tuning)")
    parser.add_argument("--runtime", choices=("tensorflow", "openvino"), default="tensorflow",
                        help="what runs the network for features or, with --finetune, for "
                             "predictions: tensorflow (default) or openvino (pip install "
                             "\"transferkit[openvino]\"; faster on CPUs without oneDNN)")


def _build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    """The main parser, and each command's parser by name."""
    from . import __version__

    parser = _Parser(
        prog="transferkit",
        description="Transfer learning on images with Keras Applications backbones and "
                    "scikit-learn.",
    )
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    commands.add_parser("backbones", help="table of backbones, input sizes, feature widths",
                        description="List the backbones of the installed keras.applications.")

    cut_points = commands.add_parser("cut-points", help="the block names a backbone can be cut at",
                                     description="List a backbone's cut points, shallowest "
                                                 "first.")
    cut_points.add_argument("backbone", metavar="BACKBONE")
    cut_points.add_argument("--backbone-kwargs", type=_backbone_kwargs, default=None,
                            metavar="JSON", help="constructor arguments as JSON")

    extract = commands.add_parser(
        "extract", help="features of images into a .npz or .parquet file",
        description="Compute one feature vector per image. Folders are searched recursively "
                    f"for {', '.join(IMAGE_SUFFIXES)} files.",
    )
    extract.add_argument("images", nargs="+", metavar="IMAGES",
                         help="image files and/or folders of images")
    extract.add_argument("-o", "--output", required=True, metavar="FILE",
                         help="features.npz (arrays 'features', 'paths', 'feature_names') or "
                              "features.parquet (a 'path' column and one column per feature)")
    extract.add_argument("--pooling", choices=("avg", "max", "cls", "cls+avg", "none"),
                         default="avg",
                         help="avg or max over the map (a transformer's patch tokens); cls, "
                              "cls+avg: a transformer's class token, alone or with the average")
    extract.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_backbone_options(extract, default="ResNet50", several_cuts=True)

    train = commands.add_parser(
        "train", help="train a classifier on a folder with one sub-folder per class",
        description="Train on FOLDER/<class>/<image files>, print the validation accuracy and "
                    "save the fitted model with joblib. By default: frozen backbone features, "
                    "standardised, and a logistic regression; --finetune trains a "
                    "FineTunedClassifier instead.",
    )
    train.add_argument("folder", metavar="FOLDER")
    train.add_argument("-o", "--output", required=True, metavar="MODEL",
                       help="where to save the fitted model: model.joblib (a pickle), or "
                            "model.tkz with --finetune (a file that loads without running "
                            "code from it)")
    train.add_argument("--val", metavar="FOLDER", default=None,
                       help="a validation folder of the same layout; without it, "
                            "--validation-fraction of FOLDER is held out")
    train.add_argument("--validation-fraction", type=float, default=0.2,
                       help="fraction held out (stratified) when --val is not given "
                            "(default 0.2)")
    train.add_argument("--finetune", action="store_true",
                       help="fine-tune the backbone (FineTunedClassifier) instead of "
                            "feature extraction + logistic regression")
    train.add_argument("--epochs", type=int, default=10,
                       help="fine-tuning epochs with --finetune (default 10)")
    train.add_argument("--batchnorm-statistics", choices=("pretrained", "target"),
                       default=None,
                       help="with --finetune: what the trained block's BatchNormalization "
                            "layers normalise with, ImageNet's statistics (the default) or "
                            "statistics re-estimated on the training images (for images far "
                            "from photographs)")
    train.add_argument("--random-state", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress output")
    _add_backbone_options(train, default="ResNet50")

    predict = commands.add_parser(
        "predict", help="label images with a saved model",
        description="Print one tab-separated line per image: path, predicted label, its "
                    "probability. A .tkz model file holds data only; loading any other file "
                    "(a joblib pickle) runs code stored in it: only load pickles you trust.",
    )
    predict.add_argument("model", metavar="MODEL",
                         help="a model saved by 'transferkit train' (.joblib or .tkz) or by "
                              "transferkit.save (.tkz)")
    predict.add_argument("images", nargs="+", metavar="IMAGES",
                         help="image files and/or folders of images")
    return parser, dict(commands.choices)


# ---------------------------------------------------------------------------- helpers
# How many of the files left out for one reason a summary names.
_NAMED_PER_REASON = 3
# A format this small a share of a class folder's images is pointed out (hymenoptera's
# train/ants holds one GIF, a "this image could not be found" placeholder, among its JPEGs).
_ODD_FORMAT_SHARE = 0.1


class _LeftOut:
    """Files of a folder that a command did not take as they were, and why: one line."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.skipped: dict[str, list[Path]] = {}
        self.odd: list[tuple[Path, str]] = []

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(path)

    def _names(self, paths: Sequence[Path], notes: Sequence[str] | None = None) -> str:
        shown = [repr(str(p.relative_to(self.folder))) + (f" ({n})" if notes else "")
                 for p, n in zip(paths, notes or [""] * len(paths), strict=True)]
        more = len(paths) - _NAMED_PER_REASON
        return ", ".join(shown[:_NAMED_PER_REASON]) + (f" and {more} more" if more > 0 else "")

    def summary(self, command: str) -> str | None:
        """The line to print, or None when every file was taken as it was."""
        parts = []
        n_skipped = sum(len(paths) for paths in self.skipped.values())
        if n_skipped:
            reasons = "; ".join(f"{len(paths)} {reason}: {self._names(paths)}"
                                for reason, paths in self.skipped.items())
            parts.append(f"skipped {n_skipped} file{'s' * (n_skipped != 1)} ({reasons})")
        if self.odd:
            paths, notes = zip(*self.odd, strict=True)
            one = len(self.odd) == 1
            parts.append(f"used {len(self.odd)} image{'' if one else 's'} of a format rare in "
                         f"{'its' if one else 'their'} folder, check that "
                         f"{'it belongs' if one else 'they belong'}: "
                         f"{self._names(paths, notes)}")
        if not parts:
            return None
        return f"transferkit {command}: in {str(self.folder)!r}: {'; '.join(parts)}."


_NOT_AN_IMAGE = f"not an image by its suffix ({', '.join(IMAGE_SUFFIXES)})"


def _folder_images(folder: Path, left_out: _LeftOut) -> list[Path]:
    """A folder's image files, recursively and sorted; the other files go to ``left_out``."""
    images = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            left_out.skip(path, _NOT_AN_IMAGE)
    return images


def _readable_images(paths: list[Path], left_out: _LeftOut) -> list[Path]:
    """The files Pillow recognises as images, from their headers; the others go to
    ``left_out``. Formats rare among them are noted: a file can be an image and still no
    photograph of its class."""
    from collections import Counter

    from PIL import Image

    readable, formats = [], {}
    for path in paths:
        try:
            with Image.open(path) as image:
                formats[path] = image.format or "unknown"
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            left_out.skip(path, "not readable as an image")
            continue
        readable.append(path)
    counts = Counter(formats.values())
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        left_out.odd.extend(
            (path, f"{fmt} among {usual}") for path, fmt in formats.items()
            if counts[fmt] <= _ODD_FORMAT_SHARE * len(formats)
        )
    return readable


def _report(left_out: _LeftOut, command: str) -> None:
    line = left_out.summary(command)
    if line is not None:
        print(line, file=sys.stderr, flush=True)


def _image_files(arguments: Sequence[str], command: str) -> list[str]:
    """Files as given, folders expanded to their image files (recursively, sorted)."""
    files: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            left_out = _LeftOut(path)
            found = _folder_images(path, left_out)
            if not found:
                raise UsageError(
                    f"folder {argument!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})."
                )
            _report(left_out, command)
            files.extend(map(str, found))
        elif path.is_file():
            files.append(str(path))
        elif os.path.lexists(path):
            # A pipe, a device or a symbolic-link loop: the loader refuses it, saying which.
            files.append(str(path))
        else:
            raise UsageError(f"image {argument!r} does not exist.")
    return files


def _labelled_folder(folder: str, command: str) -> tuple[list[str], list[str]]:
    """Image paths and labels of FOLDER/<label>/<images>.

    Files that are no images (by suffix, or to Pillow) are left out and reported in one
    line, as are images of a format rare in their class folder (taken all the same).
    """
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{folder!r} is not a folder; expected FOLDER/<class>/<image files>.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UsageError(
            f"{folder!r} has {len(classes)} class sub-folder(s); expected one sub-folder per "
            "class, at least two, each holding that class's images."
        )
    paths: list[str] = []
    labels: list[str] = []
    left_out = _LeftOut(root)
    for class_dir in classes:
        files = _readable_images(_folder_images(class_dir, left_out), left_out)
        if not files:
            _report(left_out, command)
            raise UsageError(
                f"class folder {str(class_dir)!r} holds no image files Pillow can read "
                f"({', '.join(IMAGE_SUFFIXES)}); put that class's images in it."
            )
        paths.extend(map(str, files))
        labels.extend([class_dir.name] * len(files))
    _report(left_out, command)
    return paths, labels


def _crop_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    # Absent unless given, so each estimator keeps its own default (1.0 for the extractor,
    # 0.875 for FineTunedClassifier).
    return {} if args.crop_fraction is None else {"crop_fraction": args.crop_fraction}


def _extractor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "weights": args.weights,
        "backbone_kwargs": args.backbone_kwargs,
        "cut": args.cut,
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "random_state": 0,
        **_crop_kwargs(args),
        "runtime": args.runtime,
    }


# ---------------------------------------------------------------------------- commands
def _cmd_backbones(args: argparse.Namespace) -> None:
    from .backbones import list_backbones
    from .hub_backbones import HUB_PREFIX

    rows = list_backbones()
    header = ("name", "input size", "feature width", "preprocessing")
    table = [header] + [
        (r["name"], f"{r['default_size']}x{r['default_size']}", str(r["feature_width"]),
         r["preprocessing"])
        for r in rows
    ]
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    # On stderr: the table on stdout stays one backbone a line for scripts.
    print(f"keras-hub presets too (pip install \"transferkit[hub]\"): --backbone "
          f"{HUB_PREFIX}NAME (e.g. {HUB_PREFIX}dinov2_small) or a preset directory.",
          file=sys.stderr)


def _cmd_cut_points(args: argparse.Namespace) -> None:
    from .cut_points import list_cut_points

    points = list_cut_points(args.backbone, args.backbone_kwargs)
    if not points:
        print(f"{args.backbone} has no named blocks; cut it by layer name or index.",
              file=sys.stderr)
    for point in points:
        print(point)


def _writable_output(output: str, default_name: str, flag: str = "-o") -> Path:
    """The output path, checked before any work: not a folder, and its folder writable.

    A probe file is created and removed rather than asking ``os.access``, which answers for
    the permission bits only (yes for root on a read-only mount, no under some ACLs).
    """
    import tempfile

    path = Path(output)
    if path.is_dir():
        raise UsageError(
            f"{flag} {output!r} is a folder; give the path of a file to write, such as "
            f"{str(path / default_name)!r}."
        )
    folder = path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(
            f"cannot write {flag} {output!r}: {str(existing)!r} is a file, not a folder."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write {flag} {output!r}: {exc.strerror or exc} in {str(folder)!r}; "
            f"choose a folder you can write to."
        ) from None
    return path


def _os_reason(exc: OSError) -> str:
    """What an OSError says, without Python's '[Errno 13]' prefix."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _write_features(output: str, features: Any, paths: list[str], names: Any) -> None:
    import numpy as np

    suffix = Path(output).suffix.lower()  # its folder exists: _writable_output made it
    if suffix == ".npz":
        np.savez_compressed(output, features=features, paths=np.asarray(paths),
                            feature_names=np.asarray(names, dtype=str))
        return
    import pandas as pd  # present: _cmd_extract checked before computing anything

    frame = pd.DataFrame(features, columns=list(names))
    frame.insert(0, "path", paths)
    frame.to_parquet(output, index=False)


def _cmd_extract(args: argparse.Namespace) -> None:
    from .extractor import KerasFeatureExtractor

    # Before any image is read: a wrong -o must not cost a whole extraction.
    _writable_output(args.output, "features.npz")
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".npz", ".parquet"):
        raise UsageError(
            f"output {args.output!r} must end in .npz or .parquet, which decides the format."
        )
    if suffix == ".parquet":
        try:
            import pandas  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(
                "writing .parquet needs pandas and pyarrow: pip install "
                "'transferkit[parquet]', or write .npz instead."
            ) from None
    if args.cut is not None and len(args.cut) == 1:
        args.cut = args.cut[0]  # one --cut names its columns as it always did
    elif args.cut is not None and None in args.cut:
        raise UsageError("--cut none stands for the last layer alone; with other --cut "
                         "options, name that layer, or use --cut blocks.")
    if args.pooling == "none" and (isinstance(args.cut, list) or args.cut == "blocks"):
        raise UsageError("--pooling none flattens one feature map, and several --cut give "
                         "maps of different sizes; use --pooling avg or --pooling max, or "
                         "one --cut.")
    paths = _image_files(args.images, args.command)
    extractor = KerasFeatureExtractor(
        args.backbone, pooling=None if args.pooling == "none" else args.pooling,
        verbose=0 if args.quiet else 1, **_extractor_kwargs(args),
    )
    features = extractor.fit().transform(paths)
    try:
        _write_features(args.output, features, paths, extractor.get_feature_names_out())
    except OSError as exc:  # the disk filled up, or the folder changed, while extracting
        raise UsageError(f"cannot write -o {args.output!r}: {_os_reason(exc)}.") from None
    print(f"{len(paths)} images x {features.shape[1]} features "
          f"({extractor.backbone_name_} cut at {', '.join(extractor.cut_layers_)}) -> "
          f"{args.output}")


def _cmd_train(args: argparse.Namespace) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .extractor import KerasFeatureExtractor
    from .finetune import FineTunedClassifier

    if args.batchnorm_statistics is not None and not args.finetune:
        raise UsageError(
            f"--batchnorm-statistics {args.batchnorm_statistics}: the statistics are those of "
            "the network fine-tuning trains; add --finetune, or leave the option out for "
            "features + logistic regression.")
    output = _writable_output(args.output, "model.joblib")
    if output.suffix.lower() == MODEL_FILE_SUFFIX and not args.finetune:
        raise UsageError(
            f"-o {args.output!r}: a {MODEL_FILE_SUFFIX} file holds one fine-tuned classifier; "
            f"add --finetune, or save the default features + logistic regression pipeline "
            f"with -o {str(output.with_suffix('.joblib'))!r}."
        )
    paths, labels = _labelled_folder(args.folder, args.command)
    if args.val is not None:
        val_paths, val_labels = _labelled_folder(args.val, args.command)
        train_paths, train_labels = paths, labels
    else:
        if not 0 < args.validation_fraction < 1:
            raise UsageError(
                f"--validation-fraction {args.validation_fraction} must be in (0, 1)."
            )
        try:
            train_paths, val_paths, train_labels, val_labels = train_test_split(
                paths, labels, test_size=args.validation_fraction, stratify=labels,
                random_state=args.random_state,
            )
        except ValueError as exc:
            raise UsageError(
                f"cannot hold out {args.validation_fraction:g} of {args.folder!r} with every "
                f"class in both parts ({exc}); add images or pass --val FOLDER."
            ) from None
    unseen = sorted(set(val_labels) - set(train_labels))
    if unseen:
        raise UsageError(
            f"validation classes {unseen} have no training folder in {args.folder!r}."
        )

    if args.finetune:
        model: Any = FineTunedClassifier(
            args.backbone, weights=args.weights, backbone_kwargs=args.backbone_kwargs,
            cut=args.cut, input_size=args.input_size, batch_size=args.batch_size or 32,
            epochs=args.epochs, verbose=0 if args.quiet else 1, random_state=args.random_state,
            runtime=args.runtime, **_crop_kwargs(args),
            batchnorm_statistics=args.batchnorm_statistics or "pretrained",
        )
        if not args.quiet:
            scored = "--val" if args.val is not None else "the images --validation-fraction " \
                                                        "holds out"
            print(f"fine-tuning: the val_loss and val_accuracy of each epoch are measured on "
                  f"the training images, each held out once in a {model.validation_folds}-"
                  f"fold check that fine-tuning does not hurt (not on {scored}); the final "
                  f"network is trained on all of them.", flush=True)
    else:
        extractor_kwargs = {**_extractor_kwargs(args), "random_state": args.random_state}
        model = Pipeline([
            ("features", KerasFeatureExtractor(args.backbone, verbose=0 if args.quiet else 1,
                                               **extractor_kwargs)),
            # Feature scales differ by orders of magnitude between backbones and cut points;
            # standardising lets one regularisation strength fit them all.
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(max_iter=2000)),
        ])
    model.fit(train_paths, train_labels)
    accuracy = float(model.score(val_paths, val_labels))
    try:
        if output.suffix.lower() == MODEL_FILE_SUFFIX:
            model.save(output)  # transferkit's own format: loading it runs no code
        else:
            joblib.dump(model, output)
    except OSError as exc:
        raise UsageError(f"cannot write -o {args.output!r}: {_os_reason(exc)}.") from None
    if args.finetune and args.quiet:  # verbose fits have logged it already
        print(model.history_["summary"])
    kind = "fine-tuned" if args.finetune else "features + logistic regression"
    print(f"validation accuracy {accuracy:.3f} on {len(val_paths)} images "
          f"({len(train_paths)} training images, {kind}) -> {args.output}")


def _load_model(model: str) -> Any:
    """The classifier in ``model``: a .tkz file of transferkit.save, or a joblib pickle."""
    path = Path(model)
    if not path.exists():
        raise UsageError(f"model file {model!r} does not exist.")
    if not path.is_file():
        raise UsageError(f"model {model!r} is not a file; pass the file 'transferkit train' "
                         f"wrote.")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04":
        # A zip archive, as transferkit.save writes them: read without running code. Its
        # errors (ModelFileError) name the file and what is wrong with it.
        from .persistence import load

        return load(path)
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # a pickle parser's failures are many; each means the same
        raise UsageError(
            f"model {model!r} is neither a {MODEL_FILE_SUFFIX} model file nor a joblib "
            f"pickle of one ({type(exc).__name__}: {exc}); pass a file written by "
            f"'transferkit train -o MODEL'."
        ) from None


def _cmd_predict(args: argparse.Namespace) -> None:
    import numpy as np

    model = _load_model(args.model)
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        raise UsageError(
            f"{args.model!r} holds a {type(model).__name__}, not a classifier with "
            "predict_proba; save one with 'transferkit train'."
        )
    paths = _image_files(args.images, args.command)
    probabilities = model.predict_proba(paths)
    best = np.argmax(probabilities, axis=1)
    for path, k, row in zip(paths, best, probabilities, strict=True):
        print(f"{path}\t{model.classes_[k]}\t{row[k]:.4f}")


_COMMANDS = {
    "backbones": _cmd_backbones,
    "cut-points": _cmd_cut_points,
    "extract": _cmd_extract,
    "train": _cmd_train,
    "predict": _cmd_predict,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``transferkit`` command line.

    Parameters
    ----------
    argv : sequence of str, default=None
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        0 on success, 1 when the library rejects a value (the message names it), 2 for a
        malformed command line.

    Examples
    --------
    >>> from transferkit.cli import main
    >>> main(["cut-points", "VGG16"])  # doctest: +SKIP
    block1
    block2
    block3
    block4
    block5
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = _build_parser()
    _refuse_unknown_names(argv, parser, commands)
    args = parser.parse_args(argv)
    try:
        _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`transferkit backbones | head`): stop, as other commands do,
        # and keep the interpreter's final flush from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a process ended by SIGPIPE
    except Exception as exc:
        from .backbones import WeightsUnavailableError

        user_errors = (UsageError, ValueError, FileNotFoundError, WeightsUnavailableError)
        if not (isinstance(exc, user_errors) or is_advised(exc)):
            raise
        # Library errors already name the offending value and the way out: show just that,
        # the way out as this command takes it.
        print(f"transferkit {args.command}: error: {worded(exc, _ways_out(args))}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
