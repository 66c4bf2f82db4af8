"""
Save and load a fitted pipeline
===============================

A fitted :class:`~transferkit.KerasFeatureExtractor` pickles together with its network
weights, so ``joblib.dump`` saves the whole pipeline in one file and ``joblib.load`` gives it
back, ready to predict, in another process and without network access.

Loading a pickle runs code stored in the file: only load models from sources you trust.

The picture puts the class probabilities of a few digits from the pipeline before saving beside
those of the pipeline loaded in the new process: the two must be the same.

.. code-block:: bash

   python examples/save_and_load.py --picture probabilities.png
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferkit import KerasFeatureExtractor, WeightsUnavailableError

# Run in a fresh interpreter: nothing of this process (imported Keras models, caches) helps it.
LOAD_AND_PREDICT = """
import sys, joblib, numpy as np
pipe = joblib.load(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], pipe.predict_proba(images))
"""


def make_extractor(input_size: int) -> KerasFeatureExtractor:
    """The ImageNet-pretrained extractor, or a randomly initialised one if weights are missing."""
    extractor = KerasFeatureExtractor(
        "MobileNet", backbone_kwargs={"alpha": 0.25}, input_size=input_size
    )
    try:
        return extractor.fit()
    except WeightsUnavailableError as exc:
        print(f"ImageNet weights unavailable, using RANDOM weights instead.\n  Reason: {exc}")
        return extractor.set_params(weights=None, random_state=0).fit()


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description="Save a fitted pipeline and load it back.")
    parser.add_argument("--n-images", type=int, default=500,
                        help="digits to train on (default 500)")
    parser.add_argument("--input-size", type=int, default=64,
                        help="pixels the 8x8 digits are resized to (default 64)")
    parser.add_argument("--picture", type=Path, default=None, metavar="PNG",
                        help="save the probabilities before and after loading here "
                             "(needs matplotlib)")
    args = parser.parse_args(argv)

    digits = load_digits()
    images = (digits.images[: args.n_images] * (255.0 / 16.0)).astype(np.float32)
    labels = digits.target[: args.n_images]
    pipe = Pipeline([
        ("features", make_extractor(args.input_size)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=3000)),
    ]).fit(images, labels)
    expected = pipe.predict_proba(images[:20])

    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "digits_pipeline.joblib"
        joblib.dump(pipe, model_file)
        print(f"saved {model_file.name}: {model_file.stat().st_size / 1e6:.1f} MB")
        np.save(Path(tmp) / "images.npy", images[:20])
        subprocess.run(
            [sys.executable, "-c", LOAD_AND_PREDICT, str(model_file),
             str(Path(tmp) / "images.npy"), str(Path(tmp) / "proba.npy")],
            check=True,
        )
        reloaded = np.load(Path(tmp) / "proba.npy")

    same = bool(np.allclose(reloaded, expected, atol=1e-5))
    print(f"predictions of the pipeline loaded in a new process are identical: {same}")
    if importlib.util.find_spec("matplotlib") is None:
        print("no picture: matplotlib is not installed (pip install matplotlib)")
    else:
        draw(expected, reloaded, labels[:20], args.picture)
    return same


def draw(expected: np.ndarray, reloaded: np.ndarray, labels: np.ndarray,
         picture: Path | None) -> None:
    """The probabilities before saving and after loading, side by side, and how they differ."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(11, 4.6), layout="constrained",
                                gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for ax, probabilities, title in ((axes[0], expected, "before saving (this process)"),
                                     (axes[1], reloaded, "loaded in a new process")):
        image = ax.imshow(probabilities, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("class")
        ax.set_xticks(range(probabilities.shape[1]))
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0].set_ylabel("digit, by its true class")
    figure.colorbar(image, ax=axes[1], label="probability", shrink=0.8)
    axes[2].plot([0, 1], [0, 1], color="0.7", linewidth=1, zorder=0)
    axes[2].scatter(expected.ravel(), reloaded.ravel(), s=12, color="tab:blue")
    axes[2].set_xlabel("probability before saving")
    axes[2].set_ylabel("probability after loading")
    difference = float(np.abs(reloaded - expected).max())
    axes[2].set_title(f"every class of every digit\nlargest difference: {difference:.2g}",
                      fontsize=10)
    axes[2].set_aspect("equal")
    figure.suptitle(f"Class probabilities of {len(labels)} digits, before and after "
                    "joblib.dump / joblib.load")
    if picture is not None:
        figure.savefig(picture, dpi=110)


if __name__ == "__main__":
    main()
