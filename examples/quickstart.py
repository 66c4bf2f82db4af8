"""Quick start
===========

Quick start: pretrained ConvNet features + logistic regression, in a scikit-learn Pipeline.

Runs offline on scikit-learn's bundled ``load_digits`` images (1,797 handwritten digits,
8x8 pixels, 10 classes). It uses MobileNet (alpha 0.25) with its ImageNet weights when Keras
can obtain them (downloaded once into ``$KERAS_HOME/models``, by default ``~/.keras/models``),
and otherwise says so and falls back to random weights: the pipeline is the same, the
accuracy is lower. The picture is the confusion matrix of the test digits: which digits the
pipeline takes for which.

.. code-block:: bash

   python examples/quickstart.py --picture confusion_matrix.png
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferkit import KerasFeatureExtractor, WeightsUnavailableError


def make_extractor(input_size: int) -> KerasFeatureExtractor:
    """The ImageNet-pretrained extractor, or a randomly initialised one if weights are missing."""
    extractor = KerasFeatureExtractor(
        "MobileNet", backbone_kwargs={"alpha": 0.25}, input_size=input_size, verbose=1
    )
    try:
        return extractor.fit()
    except WeightsUnavailableError as exc:
        print(
            "ImageNet weights are not available on this machine, so this run falls back to "
            f"RANDOM weights (features are far weaker; expect a lower accuracy).\n  Reason: {exc}"
        )
        return extractor.set_params(weights=None, random_state=0).fit()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(
        description="Pretrained ConvNet features + logistic regression on the digits.")
    parser.add_argument("--n-images", type=int, default=None,
                        help="use only the first N digits (for a fast smoke run)")
    parser.add_argument("--input-size", type=int, default=96,
                        help="pixels the 8x8 digits are resized to (default 96)")
    parser.add_argument("--picture", type=Path, default=None, metavar="PNG",
                        help="save the confusion matrix here (needs matplotlib)")
    args = parser.parse_args(argv)

    digits = load_digits()
    # Digits are 0..16 grey levels; the extractor expects pixel values in [0, 255].
    images = (digits.images[: args.n_images] * (255.0 / 16.0)).astype(np.float32)
    labels = digits.target[: args.n_images]
    X_train, X_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )

    extractor = make_extractor(args.input_size)
    weights = "ImageNet" if extractor.weights == "imagenet" else "random"
    # Standardising the features lets one regularisation strength fit every backbone: random
    # BatchNorm networks give features of ~1e-17, pretrained ones of ~1.
    pipe = Pipeline([
        ("features", extractor),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=3000)),
    ])

    start = time.perf_counter()
    pipe.fit(X_train, y_train)
    accuracy = pipe.score(X_test, y_test)
    elapsed = time.perf_counter() - start
    print(
        f"MobileNet(alpha=0.25, {weights} weights) features "
        f"({extractor.n_features_out_} per image) + LogisticRegression on {len(images)} digits: "
        f"test accuracy {accuracy:.3f} ({elapsed:.1f} s)"
    )

    # Which digits are taken for which: the test digits' true class by row. scikit-learn
    # draws it with matplotlib, which the pipeline itself does not need.
    if importlib.util.find_spec("matplotlib") is None:
        print("no picture: matplotlib is not installed (pip install matplotlib)")
        return accuracy
    matrix = ConfusionMatrixDisplay.from_estimator(pipe, X_test, y_test, cmap="Blues",
                                                   colorbar=False)
    for count in matrix.text_.ravel():
        if count.get_text() == "0":  # fade the empty cells: the mistakes stand out
            count.set_alpha(0.3)
    matrix.ax_.set_title(f"{len(y_test)} test digits, {weights} MobileNet features: "
                         f"accuracy {accuracy:.3f}", fontsize=10)
    matrix.figure_.set_size_inches(5.5, 5.2)
    matrix.figure_.tight_layout()
    if args.picture is not None:
        matrix.figure_.savefig(args.picture, dpi=110)
    return accuracy


if __name__ == "__main__":
    main()
