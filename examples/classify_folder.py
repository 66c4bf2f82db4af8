"""
Classify a folder of images
===========================

Train on a folder with one sub-folder per class (``FOLDER/ants/*.jpg``, ``FOLDER/bees/*.jpg``,
...): pretrained MobileNet features and a logistic regression, scored on a held-out part of
the images, or on a second folder of the same layout given with ``--val``.

The list of image paths goes straight into the pipeline: images are decoded batch by batch,
so a folder of any size fits in memory.

.. code-block:: bash

   python examples/classify_folder.py hymenoptera_data/train --val hymenoptera_data/val

To score on a held-out quarter of the folder instead, and also save a picture of the
confusion matrix (with matplotlib installed):

.. code-block:: bash

   python examples/classify_folder.py hymenoptera_data/train --confusion-matrix cm.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.metrics import classification_report
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferkit import KerasFeatureExtractor, WeightsUnavailableError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def read_folder(folder: Path, n_per_class: int | None) -> tuple[list[str], list[str]]:
    """Image paths and labels of FOLDER/<label>/<image>, at most n_per_class of each."""
    paths, labels = [], []
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise SystemExit(f"error: {str(folder)!r} needs one sub-folder per class (at least 2).")
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files = files[:n_per_class]
        paths += [str(p) for p in files]
        labels += [class_dir.name] * len(files)
    return paths, labels


def make_extractor(input_size: int) -> KerasFeatureExtractor:
    """The ImageNet-pretrained extractor, or a randomly initialised one if weights are missing."""
    extractor = KerasFeatureExtractor(
        "MobileNet", backbone_kwargs={"alpha": 0.25}, input_size=input_size
    )
    try:
        return extractor.fit()
    except WeightsUnavailableError as exc:
        print(
            "ImageNet weights are not available on this machine, so this run falls back to "
            f"RANDOM weights (expect a much lower accuracy).\n  Reason: {exc}"
        )
        return extractor.set_params(weights=None, random_state=0).fit()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description="Classify a folder of images.")
    parser.add_argument("folder", type=Path, help="a folder with one sub-folder per class")
    parser.add_argument("--val", type=Path, default=None,
                        help="a validation folder of the same layout (default: hold out 25%%)")
    parser.add_argument("--n-per-class", type=int, default=None,
                        help="use at most N images per class (for a fast smoke run)")
    parser.add_argument("--input-size", type=int, default=224,
                        help="side the images are resized to (default 224)")
    parser.add_argument("--confusion-matrix", type=Path, default=None, metavar="PNG",
                        help="also save a picture of the confusion matrix (needs matplotlib)")
    args = parser.parse_args(argv)

    paths, labels = read_folder(args.folder, args.n_per_class)
    if args.val is None:
        train_paths, val_paths, train_labels, val_labels = train_test_split(
            paths, labels, test_size=0.25, stratify=labels, random_state=0
        )
    else:
        train_paths, train_labels = paths, labels
        val_paths, val_labels = read_folder(args.val, args.n_per_class)

    pipe = Pipeline([
        ("features", make_extractor(args.input_size)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=2000)),
    ])
    pipe.fit(train_paths, train_labels)
    predicted = pipe.predict(val_paths)
    print(classification_report(val_labels, predicted, digits=3))
    accuracy = pipe.score(val_paths, val_labels)
    print(f"validation accuracy {accuracy:.3f} on {len(val_paths)} images "
          f"({len(train_paths)} training images)")
    if args.confusion_matrix is not None:
        from sklearn.metrics import ConfusionMatrixDisplay

        matrix = ConfusionMatrixDisplay.from_predictions(val_labels, predicted, cmap="Blues")
        matrix.ax_.set_title(f"{len(val_paths)} validation images: true class by row")
        matrix.figure_.savefig(args.confusion_matrix, dpi=110)
    return accuracy


if __name__ == "__main__":
    main()
