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

.. code-block:: bash

   python examples/mixed_tabular_images.py
"""

from __future__ import annotations

import argparse
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
    return scores


if __name__ == "__main__":
    main()
