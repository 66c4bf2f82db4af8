"""FineTunedClassifier against a linear probe and the Keras guide's recipe, on hymenoptera.

Runs, in one process and on the same train/val split of ``../shared/datasets/hymenoptera_data``
with MobileNet (alpha 0.25) ImageNet weights at 224 px:

1. the linear probe: KerasFeatureExtractor + LogisticRegression;
2. the recipe of the Keras transfer-learning guide, written by hand in plain Keras: frozen base
   called with ``training=False``, GAP + Dropout(0.2) + Dense head, 10 epochs Adam 1e-3 with
   flip/rotation augmentation, then the last 20 layers unfrozen, 10 epochs Adam 1e-5;
3. FineTunedClassifier with its defaults, with the margins over 1 and 2 and whether the
   targets of issue #3 (+0.02 over 1, +0.05 over 2) are met; beside it, for reference, the
   linear probe on the central crop FineTunedClassifier sees by default (crop_fraction), which
   shows how much of the margin the framing alone brings;
4. the fine-tuning epoch time of FineTunedClassifier with and without the frozen-prefix cache
   (no augmentation, only the last block trainable), side by side.

Prints one JSON object. ``--only epoch-cache`` runs step 4 alone. The recipe and
FineTunedClassifier are fitted once per seed, seeds 0-4 unless ``--seed`` says otherwise:
their results move by several validation images between seeds (the recipe's by up to 23 of
153 over seeds 0-4), more than the targets' margins, so one seed cannot tell whether a target
is met. The summary gives mean accuracies and the margins between the means, on which the
targets are judged, and how many single seeds meet both targets.

    python benchmarks/finetune_hymenoptera.py [--only {all,epoch-cache}] [--seed 0 [1 ...]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "keras_home" / "models"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
WEIGHTS_FILE = "mobilenet_2_5_224_tf_no_top.h5"
MOBILENET = {"backbone": "MobileNet", "backbone_kwargs": {"alpha": 0.25}}


def _prepare_keras_home() -> None:
    """Point Keras at the shared weights through a writable home, before Keras is imported.

    Keras ignores a read-only ``$KERAS_HOME``; linking the files into a temporary one keeps
    ``weights="imagenet"`` on Keras' real download-and-cache path, which finds them cached.
    """
    missing = [p for p in (SHARED_MODELS / WEIGHTS_FILE, HYMENOPTERA / "train",
                           HYMENOPTERA / "val") if not p.exists()]
    if missing:
        sys.exit(
            f"error: {', '.join(map(str, missing))} not found. This benchmark needs ../shared "
            "(the MobileNet 0.25 ImageNet weights and the hymenoptera images) next to the "
            "repository."
        )
    home = Path(tempfile.mkdtemp(prefix="transferkit-bench-keras-home-"))
    (home / "models").mkdir()
    for weights_file in SHARED_MODELS.iterdir():
        (home / "models" / weights_file.name).symlink_to(weights_file)
    os.environ["KERAS_HOME"] = str(home)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _split(split: str) -> tuple[list[str], list[str]]:
    # Every file, the placeholder GIF of train/ants included, as a user's loader would see them.
    paths, labels = [], []
    for label in ("ants", "bees"):
        for path in sorted((HYMENOPTERA / split / label).iterdir()):
            paths.append(str(path))
            labels.append(label)
    return paths, labels


def linear_probe(train, val) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from transferkit import KerasFeatureExtractor

    started = time.perf_counter()
    pipe = Pipeline([
        ("features", KerasFeatureExtractor(**MOBILENET, weights="imagenet")),
        ("clf", LogisticRegression(max_iter=2000)),
    ]).fit(*train)
    fit_seconds = time.perf_counter() - started
    return {"val_accuracy": float(pipe.score(*val)), "fit_seconds": round(fit_seconds, 1)}


def linear_probe_central_crop(train, val) -> dict:
    """The probe on the central 224 px of images resized to 256: FineTunedClassifier's framing.

    Not a target; it separates what the framing alone brings from what fine-tuning adds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from transferkit import KerasFeatureExtractor

    started = time.perf_counter()
    pipe = Pipeline([
        ("features", KerasFeatureExtractor(**MOBILENET, weights="imagenet", crop_fraction=0.875)),
        ("clf", LogisticRegression(max_iter=2000)),
    ]).fit(*train)
    fit_seconds = time.perf_counter() - started
    return {"val_accuracy": float(pipe.score(*val)), "fit_seconds": round(fit_seconds, 1)}


def keras_guide_recipe(train, val, seed: int) -> dict:
    """The Keras transfer-learning guide's recipe, by hand, on the same decoded pixels."""
    import keras
    import numpy as np

    from transferkit.image_input import as_image_collection

    def pixels(paths):
        # Same decoding and resizing as the estimators get, so only the training differs.
        batches = as_image_collection(paths).batches((224, 224), 64)
        return np.concatenate([batch for _, batch in batches])

    started = time.perf_counter()
    x_train, x_val = pixels(train[0]), pixels(val[0])
    y_train = (np.asarray(train[1]) == "bees").astype("float32")
    y_val = (np.asarray(val[1]) == "bees").astype("float32")
    keras.utils.set_random_seed(seed)

    base = keras.applications.MobileNet(
        alpha=0.25, include_top=False, weights="imagenet", input_shape=(224, 224, 3)
    )
    base.trainable = False
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.1)(x)
    x = keras.applications.mobilenet.preprocess_input(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)

    def accuracy() -> float:
        logits = model.predict(x_val, batch_size=64, verbose=0).ravel()
        return float(np.mean((logits > 0) == (y_val > 0.5)))

    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy()])
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    head_accuracy = accuracy()

    base.trainable = True
    for layer in base.layers[:-20]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-5),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy()])
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    fit_seconds = time.perf_counter() - started
    return {
        "val_accuracy": accuracy(),
        "val_accuracy_after_head_phase": head_accuracy,
        "fit_seconds": round(fit_seconds, 1),
    }


def fine_tuned_classifier(train, val, seed: int) -> dict:
    from transferkit.finetune import FineTunedClassifier

    clf = FineTunedClassifier(**MOBILENET, random_state=seed)
    started = time.perf_counter()
    clf.fit(*train)
    fit_seconds = time.perf_counter() - started
    return {
        "val_accuracy": float(clf.score(*val)),
        "fit_seconds": round(fit_seconds, 1),
        "params": {k: v for k, v in clf.get_params().items()
                   if k in ("freeze_until", "epochs", "learning_rate", "head_init", "augment",
                            "crop_fraction", "head_views", "early_stopping", "input_size")},
        "head_C": clf.history_["head"].get("C"),
        "freeze_layer": clf.freeze_layer_,
        "epochs_run": {phase: len(h["loss"]) for phase, h in clf.history_.items()},
        "best_epoch": {phase: h["best_epoch"] for phase, h in clf.history_.items()},
    }


def epoch_cache(train, seed: int, epochs: int = 4) -> dict:
    """Fine-tuning epoch time with and without the frozen-prefix cache, same configuration."""
    import numpy as np

    from transferkit.finetune import FineTunedClassifier

    result = {}
    for cache in (True, False):
        clf = FineTunedClassifier(
            **MOBILENET, cache=cache, augment=None, epochs=epochs, head_epochs=1,
            early_stopping=False, random_state=seed,
        ).fit(*train)
        seconds = clf.history_["finetune"]["seconds"]
        # The first epoch also traces the training step; the steady state is what repeats.
        result["cached" if cache else "uncached"] = {
            "epoch_seconds": [round(s, 3) for s in seconds],
            "median_epoch_seconds_after_first": round(float(np.median(seconds[1:])), 3),
        }
    result["trainable_part"] = f"after {clf.freeze_layer_} (last block only)"
    result["ratio_uncached_over_cached"] = round(
        result["uncached"]["median_epoch_seconds_after_first"]
        / result["cached"]["median_epoch_seconds_after_first"], 2,
    )
    return result


def _margins(probe: float, recipe: float, ftc: float) -> dict:
    # The targets of issue #3: +0.02 over the linear probe, +0.05 over the guide's recipe,
    # judged on the unrounded margins (0.0196 rounds to 0.02 but falls short). The small
    # tolerance absorbs float error only: margins are multiples of 1/153.
    return {
        "margin_over_linear_probe": round(ftc - probe, 4),
        "margin_over_keras_guide_recipe": round(ftc - recipe, 4),
        "targets_met": {
            "linear_probe_plus_0.02": ftc - probe >= 0.02 - 1e-9,
            "keras_guide_recipe_plus_0.05": ftc - recipe >= 0.05 - 1e-9,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("all", "epoch-cache"), default="all")
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the recipe and FineTunedClassifier, each fitted once "
                             "per seed and summarised (default: 0 1 2 3 4; the probes are "
                             "deterministic and run once)")
    args = parser.parse_args()
    _prepare_keras_home()
    sys.path.insert(0, str(REPO))

    train, val = _split("train"), _split("val")
    seeds = args.seed
    out: dict = {
        "data": {"train": len(train[0]), "val": len(val[0])},
        "backbone": "MobileNet alpha=0.25, ImageNet weights, 224 px",
        "seed": seeds[0] if len(seeds) == 1 else seeds,
    }
    if args.only == "all":
        out["linear_probe"] = linear_probe(train, val)
        out["linear_probe_central_crop"] = linear_probe_central_crop(train, val)
        probe = out["linear_probe"]["val_accuracy"]
        runs = []
        for seed in seeds:
            run = {"seed": seed,
                   "keras_guide_recipe": keras_guide_recipe(train, val, seed),
                   "fine_tuned_classifier": fine_tuned_classifier(train, val, seed)}
            run.update(_margins(probe, run["keras_guide_recipe"]["val_accuracy"],
                                run["fine_tuned_classifier"]["val_accuracy"]))
            runs.append(run)
        if len(runs) == 1:
            out.update({k: v for k, v in runs[0].items() if k != "seed"})
        else:
            import numpy as np

            recipe = [r["keras_guide_recipe"]["val_accuracy"] for r in runs]
            ftc = [r["fine_tuned_classifier"]["val_accuracy"] for r in runs]
            out["runs"] = runs
            # One validation image is 1/153 = 0.0065 of accuracy: single seeds decide the
            # targets by one or two images, so the mean over seeds is reported beside them.
            out["summary"] = {
                "keras_guide_recipe_mean": round(float(np.mean(recipe)), 3),
                "keras_guide_recipe_range": [round(min(recipe), 3), round(max(recipe), 3)],
                "fine_tuned_classifier_mean": round(float(np.mean(ftc)), 3),
                "fine_tuned_classifier_range": [round(min(ftc), 3), round(max(ftc), 3)],
                **_margins(probe, float(np.mean(recipe)), float(np.mean(ftc))),
                "seeds_meeting_both_targets": sum(all(r["targets_met"].values())
                                                  for r in runs),
            }
    out["epoch_cache"] = epoch_cache(train, seeds[0])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
