"""
Grid search over backbone and cut point
=======================================

Which backbone, and how deep into it, is a hyper-parameter like any other: put the extractor
in a ``Pipeline`` and let ``GridSearchCV`` cross-validate the combinations. Cut points are
names of each backbone's blocks (:func:`transferkit.list_cut_points`), so each backbone gets
its own sub-grid.

Runs offline on scikit-learn's bundled digits. Backbones whose ImageNet weights cannot be
obtained are left out, with a note; with ``--weights none`` every backbone runs with random
weights (fast, and fine for trying the mechanics, not for comparing backbones).

The picture is a heat map of the mean cross-validated accuracy, one row per backbone and one
column per depth, each cell named by its cut.

.. code-block:: bash

   python examples/grid_search_backbone_cut.py --picture grid_search.png
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferkit import KerasFeatureExtractor, WeightsUnavailableError

# backbone -> (constructor arguments, cut points to try; None is the full network)
CANDIDATES = {
    "MobileNet": ({"alpha": 0.25}, ["conv_pw_5", "conv_pw_11", None]),
    "MobileNetV2": ({"alpha": 0.35}, ["block_6", "block_13", None]),
    "VGG16": ({}, ["block3", "block4", None]),
}


def weights_available(backbone: str, kwargs: dict, input_size: int) -> bool:
    try:
        KerasFeatureExtractor(backbone, backbone_kwargs=kwargs or None,
                              input_size=input_size).fit()
    except WeightsUnavailableError as exc:
        print(f"left out {backbone}: its ImageNet weights are unavailable ({exc})")
        return False
    return True


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description="GridSearchCV over backbone and cut point.")
    parser.add_argument("--backbones", default="MobileNet,MobileNetV2",
                        help=f"comma-separated, from {sorted(CANDIDATES)}")
    parser.add_argument("--weights", choices=("imagenet", "none"), default="imagenet")
    parser.add_argument("--n-images", type=int, default=600, help="digits used (default 600)")
    parser.add_argument("--input-size", type=int, default=64,
                        help="pixels the 8x8 digits are resized to (default 64)")
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    parser.add_argument("--picture", type=Path, default=None, metavar="PNG",
                        help="save the heat map of accuracies here (needs matplotlib)")
    args = parser.parse_args(argv)

    weights = None if args.weights == "none" else "imagenet"
    grid = []
    for backbone in args.backbones.split(","):
        kwargs, cuts = CANDIDATES[backbone]
        if weights is None or weights_available(backbone, kwargs, args.input_size):
            grid.append({
                "features__backbone": [backbone],
                "features__backbone_kwargs": [kwargs or None],
                "features__cut": cuts,
            })
    if not grid:
        raise SystemExit("No backbone has ImageNet weights here; rerun with --weights none.")

    digits = load_digits()
    images = (digits.images[: args.n_images] * (255.0 / 16.0)).astype(np.float32)
    labels = digits.target[: args.n_images]
    pipe = Pipeline([
        ("features", KerasFeatureExtractor(weights=weights, input_size=args.input_size,
                                           random_state=0)),
        # Feature scales differ by orders of magnitude between backbones and cuts.
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=3000)),
    ])
    search = GridSearchCV(pipe, grid, cv=args.cv).fit(images, labels)

    results = pd.DataFrame(search.cv_results_)
    table = pd.DataFrame({
        "backbone": results["param_features__backbone"],
        # cut=None (the whole network) comes back from cv_results_ as a missing value.
        "cut": results["param_features__cut"].map(lambda c: "(full)" if pd.isna(c) else c),
        "accuracy": results["mean_test_score"].round(3),
        "+/-": results["std_test_score"].round(3),
        "fit seconds": results["mean_fit_time"].round(1),
        "rank": results["rank_test_score"],
    }).sort_values("rank")
    print(table.to_string(index=False))
    print(f"best: {search.best_params_}")
    if importlib.util.find_spec("matplotlib") is None:
        print("no picture: matplotlib is not installed (pip install matplotlib)")
    else:
        draw(table, weights, args.cv, args.picture)
    return table


def draw(table: pd.DataFrame, weights: str | None, cv: int, picture: Path | None) -> None:
    """Mean CV accuracy as a heat map: a row per backbone, a column per depth of cut."""
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(table.sort_index()["backbone"]))
    n_cuts = max(len(CANDIDATES[backbone][1]) for backbone in backbones)
    scores = np.full((len(backbones), n_cuts), np.nan)
    figure, ax = plt.subplots(figsize=(2.2 + 2.1 * n_cuts, 2.2 + 0.9 * len(backbones)),
                              layout="constrained")
    cells = []
    for row, backbone in enumerate(backbones):
        for col, cut in enumerate(CANDIDATES[backbone][1]):
            found = table[(table["backbone"] == backbone)
                          & (table["cut"] == ("(full)" if cut is None else cut))].iloc[0]
            scores[row, col] = found["accuracy"]
            cells.append((row, col, f"{cut or 'full network'}\n{found['accuracy']:.3f} "
                                    f"± {found['+/-']:.3f}"))
    image = ax.imshow(scores, cmap="Greens", vmin=np.nanmin(scores) - 0.05,
                      vmax=min(1.0, np.nanmax(scores) + 0.02), aspect="auto")
    for row, col, text in cells:
        dark = image.norm(scores[row, col]) > 0.6  # white on the darker greens
        ax.text(col, row, text, ha="center", va="center", fontsize=9,
                color="white" if dark else "black",
                fontweight="bold" if scores[row, col] == np.nanmax(scores) else "normal")
    figure.colorbar(image, ax=ax, label=f"mean accuracy, {cv}-fold CV")
    ax.set_xticks(range(n_cuts), ["early cut", "middle cut", "whole network"][-n_cuts:])
    ax.set_yticks(range(len(backbones)), backbones)
    kind = "random" if weights is None else "ImageNet"
    ax.set_title(f"GridSearchCV over backbone and cut ({kind} weights; best in bold)",
                 fontsize=10)
    if picture is not None:
        figure.savefig(picture, dpi=110)


if __name__ == "__main__":
    main()
