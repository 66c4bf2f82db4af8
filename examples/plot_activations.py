"""
Visualising what the network sees
=================================

Three pictures from :mod:`transferkit.viz`, each saved as PNG:

* the input image beside the activation maps of three layers of MobileNet, from an early
  block (edges and colours) to the last one before pooling (parts of objects, the maps
  whose averages are the features a classifier sees), the most active channels of each;
* with ``--folder``, a :class:`~transferkit.FineTunedClassifier` is trained on it, and Grad-CAM
  shows which regions of an image drove its prediction, with the predicted class and its
  probability in the caption;
* the training curves of that classifier.

The default image is the flower photograph bundled with scikit-learn, so the first part runs
offline. To write the activation maps into ``pictures/``:

.. code-block:: bash

   python examples/plot_activations.py --out-dir pictures

To also fine-tune on a folder of classes and explain a prediction with Grad-CAM:

.. code-block:: bash

   python examples/plot_activations.py --folder hymenoptera_data/train --out-dir pictures
"""

# One picture under the other, each at full width, where the gallery shows them.
# sphinx_gallery_multi_image = "single"

from __future__ import annotations

import argparse
from pathlib import Path

from sklearn.datasets import load_sample_image

from transferkit import FineTunedClassifier, KerasFeatureExtractor, WeightsUnavailableError
from transferkit.viz import plot_activation_maps, plot_grad_cam, plot_history

MOBILENET = {"backbone": "MobileNet", "backbone_kwargs": {"alpha": 0.25}}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def make_extractor(input_size: int) -> KerasFeatureExtractor:
    """The ImageNet-pretrained extractor, or a randomly initialised one if weights are missing."""
    extractor = KerasFeatureExtractor(**MOBILENET, input_size=input_size)
    try:
        return extractor.fit()
    except WeightsUnavailableError as exc:
        print(f"ImageNet weights unavailable: the maps show a RANDOM network.\n  Reason: {exc}")
        return extractor.set_params(weights=None, random_state=0).fit()


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Activation maps, Grad-CAM, training curves.")
    parser.add_argument("--image", default=None,
                        help="an image file (default: scikit-learn's flower.jpg)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="a folder with one sub-folder per class, to fine-tune on and "
                             "explain with Grad-CAM")
    parser.add_argument("--n-per-class", type=int, default=None,
                        help="use at most N images per class of --folder (fast smoke run)")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    image = args.image if args.image is not None else load_sample_image("flower.jpg")
    extractor = make_extractor(args.input_size)
    # Layers default to three stage ends, input side first; channels to the most active.
    maps = plot_activation_maps(extractor, image, n_channels=6)
    maps.save(args.out_dir / "activations.png")
    written.append(args.out_dir / "activations.png")
    print(f"activations.png: the {maps.rule} channels of {', '.join(maps.layers)}")

    if args.folder is not None:
        paths, labels = [], []
        for class_dir in sorted(p for p in args.folder.iterdir() if p.is_dir()):
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += [str(p) for p in files[: args.n_per_class]]
            labels += [class_dir.name] * len(files[: args.n_per_class])
        clf = FineTunedClassifier(**MOBILENET, weights=extractor.weights, random_state=0,
                                  input_size=args.input_size, epochs=args.epochs)
        clf.fit(paths, labels)
        explained = paths[-1]
        cam = plot_grad_cam(clf, explained)
        cam.save(args.out_dir / "grad_cam.png")
        plot_history(clf).save(args.out_dir / "training_curves.png")
        written += [args.out_dir / "grad_cam.png", args.out_dir / "training_curves.png"]
        print(f"grad_cam.png: {Path(explained).name}, {cam.caption}")
        print("training_curves.png: loss and accuracy per epoch, head then fine-tuning")
    return written


if __name__ == "__main__":
    main()
