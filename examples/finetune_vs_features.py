"""
Fine-tuning versus feature extraction
=====================================

The same images, the same MobileNet, two ways:

* feature extraction: the frozen network turns each image into a vector once, and a logistic
  regression learns from those vectors. Fast, needs few images, nothing to tune.
* fine-tuning: :class:`~transferkit.FineTunedClassifier` trains a new head on the frozen
  features, then adapts the last block of the network together with it. Slower, and worth it
  when the images differ from ImageNet photographs or there are many of them.

Takes a folder with ``train/`` and ``val/`` sub-folders, each with one sub-folder per class,
such as the hymenoptera data set (ants and bees). Two pictures: the validation accuracy of
each way, with its fitting time, and the fine-tuned classifier's training history (loss and
accuracy per epoch, its validation part being the images it held out of ``train/`` for early
stopping, not ``val/``). To save them as PNG files in ``pictures/``:

.. code-block:: bash

   python examples/finetune_vs_features.py hymenoptera_data --out-dir pictures
"""

# One picture under the other, each at full width, where the gallery shows them; the training
# history is the gallery's thumbnail.
# sphinx_gallery_multi_image = "single"
# sphinx_gallery_thumbnail_number = 2

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferkit import FineTunedClassifier, KerasFeatureExtractor, WeightsUnavailableError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MOBILENET = {"backbone": "MobileNet", "backbone_kwargs": {"alpha": 0.25}}


def read_split(folder: Path, n_per_class: int | None) -> tuple[list[str], list[str]]:
    paths, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(p) for p in files[:n_per_class]]
        labels += [class_dir.name] * len(files[:n_per_class])
    return paths, labels


def pretrained_weights(input_size: int) -> str | None:
    """Return "imagenet" if Keras can obtain the weights, else None (random, said plainly)."""
    try:
        KerasFeatureExtractor(**MOBILENET, input_size=input_size).fit()
        return "imagenet"
    except WeightsUnavailableError as exc:
        print(f"ImageNet weights unavailable, both models use RANDOM weights.\n  Reason: {exc}")
        return None


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Fine-tuning vs feature extraction.")
    parser.add_argument("folder", type=Path, help="a folder with train/ and val/ sub-folders")
    parser.add_argument("--n-per-class", type=int, default=None,
                        help="use at most N images per class and split (fast smoke run)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="save the pictures here as PNG files (needs matplotlib)")
    args = parser.parse_args(argv)

    train = read_split(args.folder / "train", args.n_per_class)
    val = read_split(args.folder / "val", args.n_per_class)
    weights = pretrained_weights(args.input_size)

    models = {
        "feature extraction + logistic regression": Pipeline([
            ("features", KerasFeatureExtractor(**MOBILENET, weights=weights, random_state=0,
                                               input_size=args.input_size)),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(max_iter=2000)),
        ]),
        "fine-tuning (FineTunedClassifier)": FineTunedClassifier(
            **MOBILENET, weights=weights, random_state=0, input_size=args.input_size,
            epochs=args.epochs,
        ),
    }
    scores, seconds = {}, {}
    for name, model in models.items():
        started = time.perf_counter()
        model.fit(*train)
        seconds[name] = time.perf_counter() - started
        scores[name] = model.score(*val)
        print(f"{name}: validation accuracy {scores[name]:.3f} "
              f"(fit {seconds[name]:.1f} s on {len(train[0])} images)")
    if importlib.util.find_spec("matplotlib") is None:
        print("no pictures: matplotlib is not installed (pip install matplotlib)")
    else:
        draw(scores, seconds, len(val[0]), models["fine-tuning (FineTunedClassifier)"],
             args.out_dir)
    return scores


def draw(scores: dict[str, float], seconds: dict[str, float], n_val: int,
         tuned: FineTunedClassifier, out_dir: Path | None) -> None:
    """Accuracy and fitting time of each way; the fine-tuned classifier's history."""
    import matplotlib.pyplot as plt

    from transferkit.viz import TrainingHistoryDisplay

    figure, ax = plt.subplots(figsize=(8, 2.8), layout="constrained")
    names = list(scores)
    bars = ax.barh([name.replace(" + ", "\n+ ").replace(" (", "\n(") for name in names],
                   [scores[name] for name in names], color=["tab:blue", "tab:green"])
    ax.bar_label(bars, [f"{scores[name]:.3f}  (fit {seconds[name]:.1f} s)" for name in names],
                 padding=4)
    ax.axvline(0.5, color="0.4", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1.3)
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy on the {n_val} images of val/ (dotted: chance with two "
                  "classes)")
    ax.set_title("Feature extraction against fine-tuning, same MobileNet, same images",
                 fontsize=10)
    # Fitted on train/; its validation curve is on the part of train/ held out for early
    # stopping, which decided what was kept.
    history = TrainingHistoryDisplay.from_estimator(tuned)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_dir / "accuracy.png", dpi=110)
        history.save(out_dir / "training_history.png")


if __name__ == "__main__":
    main()
