"""
Images next to tabular data with ColumnTransformer
==================================================

Real records often hold an image and numbers side by side: a DataFrame with a column of image
paths next to numeric columns. A ``ColumnTransformer`` routes the path column to
:class:`~transferkit.KerasFeatureExtractor` and the numeric columns to a scaler, and one
classifier learns from both.

The data are built offline from scikit-learn's digits: each digit is written to a PNG file,
and the table gets two numeric columns, a noisy hint of the label (``hint``) and pure noise
(``noise``). The script compares the numbers alone, the images alone and both together.
The picture shows the three accuracies, and how much the combined model leans on each
input: the weights of its logistic regression on the standardised hint, noise and image
features.

.. code-block:: bash

   python examples/mixed_tabular_images.py --picture mixed.png
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferkit import KerasFeatureExtractor, WeightsUnavailableError


def make_table(folder: Path, n_images: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A DataFrame (path, hint, noise) and the digit labels; images are written to folder."""
    digits = load_digits()
    rng = np.random.default_rng(0)
    labels = digits.target[:n_images]
    paths = []
    for i, pixels in enumerate(digits.images[:n_images]):
        path = folder / f"digit_{i:04d}.png"
        Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).save(path)
        paths.append(str(path))
    table = pd.DataFrame({
        "path": paths,
        "hint": labels + rng.normal(0, 3.0, size=len(labels)),
        "noise": rng.normal(size=len(labels)),
    })
    return table, labels


def image_extractor(input_size: int) -> KerasFeatureExtractor:
    """The ImageNet-pretrained extractor, or a randomly initialised one if weights are missing."""
    extractor = KerasFeatureExtractor("MobileNet", backbone_kwargs={"alpha": 0.25},
                                      input_size=input_size)
    try:
        return extractor.fit()
    except WeightsUnavailableError as exc:
        print(f"ImageNet weights unavailable, using RANDOM weights instead.\n  Reason: {exc}")
        return extractor.set_params(weights=None, random_state=0).fit()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Images and numbers in one pipeline.")
    parser.add_argument("--n-images", type=int, default=600, help="digits used (default 600)")
    parser.add_argument("--input-size", type=int, default=64,
                        help="pixels the 8x8 digits are resized to (default 64)")
    parser.add_argument("--picture", type=Path, default=None, metavar="PNG",
                        help="save the accuracies and coefficients here (needs matplotlib)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        table, labels = make_table(Path(tmp), args.n_images)
        X_train, X_test, y_train, y_test = train_test_split(
            table, labels, test_size=0.25, random_state=0, stratify=labels
        )
        extractor = image_extractor(args.input_size)
        image_features = Pipeline([("cnn", extractor), ("scale", StandardScaler())])
        columns = {
            "numbers only": [("numbers", StandardScaler(), ["hint", "noise"])],
            # A single column name (not a list) hands the extractor a 1-D Series of paths.
            "image only": [("image", image_features, "path")],
            "image and numbers": [("image", image_features, "path"),
                                  ("numbers", StandardScaler(), ["hint", "noise"])],
        }
        scores = {}
        for name, transformers in columns.items():
            model = Pipeline([
                ("columns", ColumnTransformer(transformers)),
                ("clf", LogisticRegression(max_iter=3000)),
            ])
            scores[name] = model.fit(X_train, y_train).score(X_test, y_test)
            print(f"{name:>18}: test accuracy {scores[name]:.3f}")
    if importlib.util.find_spec("matplotlib") is None:
        print("no picture: matplotlib is not installed (pip install matplotlib)")
    else:
        # The last model saw both: its columns are the image features, then hint and noise.
        draw(scores, model["clf"].coef_, len(y_test), args.picture)
    return scores


def draw(scores: dict[str, float], coef: np.ndarray, n_test: int,
         picture: Path | None) -> None:
    """Test accuracy per set of columns, and the combined model's weight on each input."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained",
                                         gridspec_kw={"width_ratios": [1.2, 1]})
    bars = left.barh(list(scores), list(scores.values()),
                     color=["tab:gray", "tab:blue", "tab:green"])
    left.bar_label(bars, fmt="%.3f", padding=3)
    left.axvline(0.1, color="0.4", linestyle=":", linewidth=1)
    left.set_xlim(0, 1.12)
    left.invert_yaxis()
    left.set_xlabel(f"test accuracy on {n_test} digits (dotted: chance, 0.1)")
    left.set_title("which columns the classifier sees", fontsize=10)

    # One weight per class and input; an input matters as much as its weights are large.
    weight = np.abs(coef).mean(axis=0)
    image_weights, (hint, noise) = weight[:-2], weight[-2:]
    right.boxplot([image_weights], positions=[2], widths=0.5,
                  flierprops={"markersize": 3})
    right.bar([0, 1], [hint, noise], width=0.5, color=["tab:orange", "tab:gray"])
    right.set_xticks([0, 1, 2], ["hint", "noise", f"{len(image_weights)} image\nfeatures"])
    right.set_ylabel("mean |coefficient| over the 10 classes")
    right.set_title("what 'image and numbers' leans on:\nits weights on the standardised inputs",
                    fontsize=10)
    figure.suptitle("Digits as image paths beside two numbers, a noisy hint of the label and "
                    "pure noise, in one ColumnTransformer")
    if picture is not None:
        figure.savefig(picture, dpi=110)


if __name__ == "__main__":
    main()
