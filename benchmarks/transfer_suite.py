"""Four ways to transfer a pretrained backbone to a folder of labelled images, side by side.

On any folder with one sub-folder of images per class (``FOLDER/<class>/<image>``):

1. ``hand_probe``: a linear probe written by hand, as the Keras documentation shows it:
   ``keras.applications.X(include_top=False, pooling="avg")``, its ``preprocess_input``,
   ``model.predict`` over images loaded by a PIL loop, and ``LogisticRegression``;
2. ``hand_recipe``: the recipe of the Keras transfer-learning guide, by hand: frozen base
   called with ``training=False``, GAP + Dropout(0.2) + Dense head, 10 epochs of Adam 1e-3
   with flip and rotation augmentation, then the last 20 layers unfrozen for 10 epochs of
   Adam 1e-5. Its accuracy is the better of the two phases (``best_accuracy``), as a user
   who checks after each phase would keep;
3. ``transferkit_probe``: ``Pipeline([KerasFeatureExtractor(backbone), LogisticRegression()])``
   with the extractor's defaults (feature cache off, so that its fit time is the
   computation's);
4. ``fine_tuned``: ``FineTunedClassifier(backbone)`` with its defaults, with which phase's
   weights it kept.

Per seed: up to ``--per-class`` images of each class are drawn, split 80/20 stratified, and
every method is fitted on the same training images and scored on the same test images.
Prints one JSON object: per-seed accuracies, test log-losses (the hand recipe's aside) and
fit times, their means, the margins of the
fine-tuned classifier over the two hand-written baselines, its fit time over the
transferkit probe's, and the targets of the fine-tuning issue (+0.02 over the hand probe,
+0.05 over the hand recipe, at most 15x the probe's time, an epoch kept on the fine-tuning
phase).

By default the backbone is MobileNet (alpha 0.25) with ImageNet weights at 224 px; the
weights come through Keras' own cache (``$KERAS_HOME``), which ``../shared`` provides when
it is next to the repository. ``--quick`` runs a tiny random-weights configuration for the
tests (``tests/test_benchmarks.py``); its accuracies mean nothing.

    python benchmarks/transfer_suite.py FOLDER [--per-class 150] [--seeds 0 1 2]
        [--backbone MobileNet] [--backbone-kwargs '{"alpha": 0.25}'] [--input-size 224]
        [--weights imagenet|none] [--methods hand_probe fine_tuned ...]
        [--finetune-params '{"label_smoothing": 0.1}']

``--methods`` runs some of the four only (the summary then holds the means, margins and
targets those allow), so that a variant of the fine-tuned classifier, given by
``--finetune-params`` (extra ``FineTunedClassifier`` parameters, recorded in the output),
can be compared with the hand probe on the same splits without rerunning the slow hand
recipe. ``--combine REPORT ...`` prints one report from the JSON of several such runs on
the same images (more seeds later, or the recipe run once on its own), judging the
targets on every seed together:

    python benchmarks/transfer_suite.py --combine seeds012.json seeds34.json recipe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import emit, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "keras_home" / "models"
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
METHODS = ("hand_probe", "hand_recipe", "transferkit_probe", "fine_tuned")
TARGETS = {"over_hand_probe": 0.02, "over_hand_recipe": 0.05, "time_over_probe": 15.0}


def _use_shared_weights() -> None:
    """Point Keras at ../shared's weights through a writable home, before Keras is imported.

    Keras ignores a read-only ``$KERAS_HOME``; linking the files into a temporary one keeps
    ``weights="imagenet"`` on Keras' real download-and-cache path, which finds them cached.
    """
    if "KERAS_HOME" in os.environ or not SHARED_MODELS.is_dir():
        return
    home = Path(tempfile.mkdtemp(prefix="transferkit-suite-keras-home-"))
    (home / "models").mkdir()
    for weights_file in SHARED_MODELS.iterdir():
        (home / "models" / weights_file.name).symlink_to(weights_file)
    os.environ["KERAS_HOME"] = str(home)


def labelled_images(folder: Path) -> tuple[list[str], list[str]]:
    """Every image file of ``folder/<class>/``, sorted, with its class."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        sys.exit(f"error: {str(folder)!r} has {len(classes)} class sub-folder(s); the suite "
                 f"needs FOLDER/<class>/<image> with at least two classes.")
    paths, labels = [], []
    for directory in classes:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.suffix.lower() in SUFFIXES:
                paths.append(str(path))
                labels.append(directory.name)
    return paths, labels


def draw(paths: list[str], labels: list[str], per_class: int, seed: int,
         test_fraction: float) -> tuple[tuple[list, list], tuple[list, list]]:
    """Up to ``per_class`` images per class, split stratified into (train, test)."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    chosen = []
    for label in sorted(set(labels)):
        members = np.flatnonzero(labels_array == label)
        chosen.extend(rng.choice(members, size=min(per_class, len(members)), replace=False))
    chosen = np.sort(np.asarray(chosen))
    train, test = train_test_split(chosen, test_size=test_fraction,
                                   stratify=labels_array[chosen], random_state=seed)
    pick = lambda idx: ([paths[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    return pick(train), pick(test)


def _application(backbone: str):
    import keras

    from transferkit.backbones import get_backbone_spec

    spec = get_backbone_spec(backbone)
    return getattr(keras.applications, spec.name), spec.preprocess_input


def _pil_pixels(paths: list[str], size: int) -> np.ndarray:
    """What the Keras documentation does: load_img with target_size, img_to_array."""
    import keras

    return np.stack([keras.utils.img_to_array(
        keras.utils.load_img(path, target_size=(size, size), color_mode="rgb"))
        for path in paths])


def hand_probe(train, test, config: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    constructor, preprocess = _application(config["backbone"])
    size = config["input_size"]
    started = time.perf_counter()
    base = constructor(include_top=False, pooling="avg", weights=config["weights"],
                       input_shape=(size, size, 3), **config["backbone_kwargs"])

    def features(paths):
        return base.predict(preprocess(_pil_pixels(paths, size)), batch_size=32, verbose=0)

    clf = LogisticRegression(max_iter=2000).fit(features(train[0]), train[1])
    fit_seconds = time.perf_counter() - started
    return _scores(clf.predict_proba(features(test[0])), clf.classes_, test[1], fit_seconds)


def _scores(proba: np.ndarray, classes, labels: list, fit_seconds: float) -> dict:
    """Test accuracy and log-loss (how good the probabilities are, not just their order)."""
    from sklearn.metrics import log_loss

    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    return {"accuracy": float(np.mean(predicted == np.asarray(labels))),
            "log_loss": round(float(log_loss(labels, proba, labels=classes)), 4),
            "fit_seconds": round(fit_seconds, 2)}


def hand_recipe(train, test, config: dict, seed: int) -> dict:
    import keras

    constructor, preprocess = _application(config["backbone"])
    size, epochs = config["input_size"], config["recipe_epochs"]
    classes = sorted(set(train[1]))
    started = time.perf_counter()
    x_train = _pil_pixels(train[0], size)
    y_train = np.asarray([classes.index(label) for label in train[1]])
    keras.utils.set_random_seed(seed)
    base = constructor(include_top=False, weights=config["weights"],
                       input_shape=(size, size, 3), **config["backbone_kwargs"])
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.1)(x)
    x = preprocess(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(len(classes))(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    head_seconds = time.perf_counter() - started
    x_test = _pil_pixels(test[0], size)
    y_test = np.asarray([classes.index(label) for label in test[1]])

    def accuracy() -> float:
        logits = model.predict(x_test, batch_size=32, verbose=0)
        return float(np.mean(logits.argmax(axis=1) == y_test))

    head_accuracy = accuracy()
    started = time.perf_counter()
    base.trainable = True
    for layer in base.layers[:-20]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    fit_seconds = head_seconds + time.perf_counter() - started
    tuned_accuracy = accuracy()
    return {"accuracy_after_head": head_accuracy, "accuracy_after_fine_tuning": tuned_accuracy,
            "best_accuracy": max(head_accuracy, tuned_accuracy),
            "fit_seconds": round(fit_seconds, 2)}


def _estimator_config(config: dict) -> dict:
    return {"backbone": config["backbone"], "backbone_kwargs": config["backbone_kwargs"] or None,
            "weights": config["weights"], "input_size": config["input_size"]}


def transferkit_probe(train, test, config: dict) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from transferkit import KerasFeatureExtractor

    started = time.perf_counter()
    pipe = Pipeline([
        ("features", KerasFeatureExtractor(**_estimator_config(config), cache=None)),
        ("clf", LogisticRegression(max_iter=2000)),
    ]).fit(*train)
    fit_seconds = time.perf_counter() - started
    return _scores(pipe.predict_proba(test[0]), pipe.classes_, test[1], fit_seconds)


def fine_tuned(train, test, config: dict, seed: int) -> dict:
    from transferkit import FineTunedClassifier

    clf = FineTunedClassifier(**_estimator_config(config), random_state=seed,
                              **config["finetune_overrides"])
    started = time.perf_counter()
    clf.fit(*train)
    fit_seconds = time.perf_counter() - started
    history = clf.history_
    return {
        **_scores(clf.predict_proba(test[0]), clf.classes_, test[1], fit_seconds),
        # 0: the fit kept the head alone, on the pretrained backbone.
        "kept_epochs": history["kept_epochs"],
        # What the final logits are divided by (absent before the calibrated check).
        "temperature": getattr(clf, "temperature_", None),
        "summary": history["summary"],
        "head_rows_per_image": history["head"].get("views"),
        "head_cv_log_loss": history["head"].get("cv_log_loss"),
        "cached": clf.cached_,
        # The framing predict sees: crop_fraction="auto" chooses it by cross-validation.
        "crop_fraction": clf.crop_fraction_,
        "n_trainable_weights": clf.n_trainable_weights_,
        "freeze_layer": clf.freeze_layer_,
        # The blocks the head reads, and the cross-validation that chose them.
        "head_layers": getattr(clf, "head_layers_", None),
        "head_blocks_cv_log_loss": history.get("head_blocks", {}).get("cv_log_loss"),
    }


def summarise(runs: list[dict], methods: tuple[str, ...]) -> dict:
    """Means over the seeds, and the margins and targets the ``methods`` run allow."""
    def mean(method: str, key: str) -> float:
        return float(np.mean([run[method][key] for run in runs]))

    accuracy_key = {"hand_recipe": "best_accuracy"}
    accuracies = {method: mean(method, accuracy_key.get(method, "accuracy"))
                  for method in methods}
    summary: dict = {
        "mean_accuracy": {method: round(value, 4) for method, value in accuracies.items()},
        "mean_log_loss": {method: round(mean(method, "log_loss"), 4) for method in methods
                          if method != "hand_recipe"},
        "mean_fit_seconds": {method: round(mean(method, "fit_seconds"), 2)
                             for method in methods},
    }
    if "fine_tuned" not in methods:
        return summary
    tuned = accuracies["fine_tuned"]
    kept_epoch = [run["fine_tuned"]["kept_epochs"] > 0 for run in runs]
    summary["seeds_keeping_a_finetune_epoch"] = int(sum(kept_epoch))
    met: dict = {}
    # A small tolerance absorbs float error only: margins are multiples of 1/n_test.
    if "hand_probe" in methods:
        margin = tuned - accuracies["hand_probe"]
        summary["margin_over_hand_probe"] = round(margin, 4)
        met["hand_probe_plus_0.02"] = margin >= TARGETS["over_hand_probe"] - 1e-9
    if "hand_recipe" in methods:
        margin = tuned - accuracies["hand_recipe"]
        summary["margin_over_hand_recipe"] = round(margin, 4)
        met["hand_recipe_plus_0.05"] = margin >= TARGETS["over_hand_recipe"] - 1e-9
    if "transferkit_probe" in methods:
        time_ratio = mean("fine_tuned", "fit_seconds") / mean("transferkit_probe", "fit_seconds")
        summary["fine_tuned_time_over_transferkit_probe"] = round(time_ratio, 2)
        # The target reads the means, which the first seed's probe lowers: it pays the
        # process's one-time costs and the later probes do not. Each seed's ratio shows it.
        summary["time_over_transferkit_probe_by_seed"] = [
            round(run["fine_tuned"]["fit_seconds"] / run["transferkit_probe"]["fit_seconds"], 2)
            for run in runs]
        met["time_at_most_15x_probe"] = time_ratio <= TARGETS["time_over_probe"]
    met["finetune_epoch_kept_every_seed"] = all(kept_epoch)
    summary["targets_met"] = met
    return summary


def combine(reports: list[tuple[str, dict]]) -> dict:
    """One report from several runs of the suite on the same splits.

    Each seed's methods may come from different runs (the slow hand recipe once, the
    fine-tuned classifier again after a change), so long as every run drew the same
    images with the same backbone and no seed has a method twice. A seed's fine-tuned
    fit and transferkit probe must come from one run: their fit times are compared, and
    times from two processes or two days are not comparable. The summary judges the
    methods that every seed has. Exits with what differs, and where, otherwise.
    """
    first_name, first = reports[0]
    for name, report in reports[1:]:
        for key in ("data", "backbone"):
            if report[key] != first[key]:
                sys.exit(f"error: {name} and {first_name} differ in their {key} "
                         f"({report[key]} against {first[key]}); only runs on the same "
                         f"splits, with the same backbone, can be combined.")
    tuned_params = {json.dumps(report["finetune_params"], sort_keys=True): name
                    for name, report in reports if "fine_tuned" in report["methods"]}
    if len(tuned_params) > 1:
        sys.exit("error: the fine-tuned classifier ran with different --finetune-params "
                 f"in {' and '.join(tuned_params.values())} "
                 f"({' against '.join(tuned_params)}); combine runs of one variant.")
    by_seed: dict[int, dict] = {}
    for name, report in reports:
        for run in report["runs"]:
            merged = by_seed.setdefault(run["seed"], {
                "seed": run["seed"], "train_images": run["train_images"],
                "test_images": run["test_images"], "sources": {}})
            for method in METHODS:
                if method not in run:
                    continue
                if method in merged:
                    sys.exit(f"error: seed {run['seed']} has {method} in both "
                             f"{merged['sources'][method]} and {name}; pass one of them.")
                merged[method] = run[method]
                merged["sources"][method] = name
    runs = [by_seed[seed] for seed in sorted(by_seed)]
    for run in runs:
        sources = run["sources"]
        if "fine_tuned" in run and "transferkit_probe" in run \
                and sources["fine_tuned"] != sources["transferkit_probe"]:
            sys.exit(f"error: seed {run['seed']} has fine_tuned from {sources['fine_tuned']} "
                     f"and transferkit_probe from {sources['transferkit_probe']}; their fit "
                     f"times are compared, so run the two together (--methods "
                     f"transferkit_probe fine_tuned) and combine that run.")
    methods = tuple(method for method in METHODS if all(method in run for run in runs))
    return {
        "benchmark": "transfer_suite",
        "quick": any(report["quick"] for _, report in reports),
        "combined_from": [name for name, _ in reports],
        "data": first["data"],
        "backbone": first["backbone"],
        "methods": list(methods),
        "finetune_params": next((report["finetune_params"] for _, report in reports
                                 if "fine_tuned" in report["methods"]), {}),
        "targets": TARGETS,
        "runs": runs,
        "summary": summarise(runs, methods),
        "machines": {name: report.get("machine") for name, report in reports},
    }


def _read_reports(paths: list[Path]) -> list[tuple[str, dict]]:
    reports = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as error:
            sys.exit(f"error: cannot read the report {str(path)!r}: {error}")
        try:  # what the suite printed on stdout, maybe after lines of its own
            report = json.loads(text[text.find("{"):]) if "{" in text else None
        except ValueError as error:
            sys.exit(f"error: {str(path)!r} is not valid JSON: {error}")
        if not isinstance(report, dict):
            sys.exit(f"error: {str(path)!r} holds no JSON object; --combine takes what the "
                     "suite printed on stdout.")
        if report.get("benchmark") != "transfer_suite":
            sys.exit(f"error: {str(path)!r} is not a transfer_suite report (its "
                     f"\"benchmark\" is {report.get('benchmark')!r}).")
        reports.append((str(path), report))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?",
                        help="FOLDER/<class>/<image files>")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="REPORT",
                        help="instead of running, combine the JSON reports of earlier runs "
                             "on the same splits (other seeds, or other methods of the "
                             "same seeds) into one")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--backbone", default="MobileNet")
    parser.add_argument("--backbone-kwargs", type=json.loads, default={"alpha": 0.25})
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--weights", default="imagenet", help="imagenet or none")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="which of the four to run (default: all, in this order)")
    parser.add_argument("--finetune-params", type=json.loads, default={},
                        help="extra FineTunedClassifier parameters, as a JSON object")
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-weights run for the tests; accuracies mean nothing")
    args = parser.parse_args()
    if args.combine:
        if args.folder is not None:
            parser.error("give either a FOLDER to run on or --combine REPORT ..., not both")
        emit(combine(_read_reports(args.combine)))
        return
    if args.folder is None:
        parser.error("the FOLDER of class sub-folders to run on is required (or --combine "
                     "REPORT ... to combine earlier runs)")
    config = {"backbone": args.backbone, "backbone_kwargs": args.backbone_kwargs or {},
              "weights": None if args.weights == "none" else args.weights,
              "input_size": args.input_size, "recipe_epochs": 10, "finetune_overrides": {}}
    if not isinstance(args.finetune_params, dict):
        sys.exit("error: --finetune-params must be a JSON object of FineTunedClassifier "
                 "parameters, e.g. '{\"label_smoothing\": 0.1}'.")
    methods = tuple(method for method in METHODS if method in args.methods)
    per_class, seeds = args.per_class, args.seeds
    if args.quick:
        config.update(weights=None, input_size=32, recipe_epochs=1,
                      finetune_overrides={"epochs": 1, "head_views": 1, "batch_size": 8})
        per_class, seeds = min(per_class, 10), seeds[:1]
    # The variant's parameters win over the quick mode's.
    config["finetune_overrides"] = {**config["finetune_overrides"], **args.finetune_params}
    if config["weights"] == "imagenet":
        _use_shared_weights()
    if not args.folder.is_dir():
        sys.exit(f"error: {str(args.folder)!r} is not a folder.")

    paths, labels = labelled_images(args.folder)
    runs = []
    for seed in seeds:
        train, test = draw(paths, labels, per_class, seed, args.test_fraction)
        run = {"seed": seed, "train_images": len(train[0]), "test_images": len(test[0])}
        for method in methods:
            if method == "hand_probe":
                run[method] = hand_probe(train, test, config)
            elif method == "hand_recipe":
                run[method] = hand_recipe(train, test, config, seed)
            elif method == "transferkit_probe":
                run[method] = transferkit_probe(train, test, config)
            else:
                run[method] = fine_tuned(train, test, config, seed)
        runs.append(run)
    counts = {label: labels.count(label) for label in sorted(set(labels))}
    emit({
        "benchmark": "transfer_suite",
        "quick": args.quick,
        "data": {"folder": str(args.folder), "images_per_class": counts,
                 "per_class_drawn": per_class, "test_fraction": args.test_fraction},
        "backbone": {key: config[key] for key in ("backbone", "backbone_kwargs", "weights",
                                                   "input_size")},
        "methods": list(methods),
        "finetune_params": args.finetune_params,
        "targets": TARGETS,
        "runs": runs,
        "summary": summarise(runs, methods),
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
