"""Which blocks a linear head should read: the last one alone, or several, standardised.

On any folder with one sub-folder of images per class, on the splits of
``transfer_suite.py`` (up to ``--per-class`` images a class, 80/20 stratified, per seed):
the pooled features of every block end of the backbone are computed in one pass
(``KerasFeatureExtractor(cut="blocks")``, the whole image at the input size), and a
logistic regression is fitted on sets of blocks and scored on the test images:

* ``hand_probe``: the last block, ``LogisticRegression()``, as the hand-written probe;
* every other row: the cross-validated logistic regression of ``FineTunedClassifier``'s
  head (``LogisticRegressionCV`` over ``training.HEAD_CS``, 3-fold log-loss) on the blocks
  named, as they are (``raw``), each column standardised on the training images (``std``),
  or each block divided by its root mean square (``block_rms``).

It is what chose ``head_blocks=3`` (the cut and every second block end below it) and the
standardisation of ``FineTunedClassifier``'s head. Prints one JSON object: per-seed and
mean accuracies of each row.

    python benchmarks/head_blocks.py FOLDER [--per-class 150] [--seeds 0 1 2]
        [--backbone MobileNet] [--backbone-kwargs '{"alpha": 0.25}'] [--input-size 224]

``--quick`` runs a tiny random-weights configuration for the tests; its accuracies mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import emit, machine  # noqa: E402
from transfer_suite import _use_shared_weights, draw, labelled_images  # noqa: E402


def block_sets(n_blocks: int) -> dict[str, list[int]]:
    """Sets of block indices (0-based, the last is ``n_blocks - 1``) to compare."""
    last = n_blocks - 1
    sets = {"last": [last], "last two apart": [last - 2, last],
            "every second, three": [last - 4, last - 2, last],
            "thirds": [last // 3, 2 * last // 3, last]}
    return {name: sorted({i for i in blocks if i >= 0}) for name, blocks in sets.items()}


def scaled(train: np.ndarray, test: np.ndarray, how: str,
           widths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    if how == "std":
        mean, spread = train.mean(axis=0), train.std(axis=0)
        spread[spread == 0] = 1.0
        return (train - mean) / spread, (test - mean) / spread
    if how == "block_rms":
        starts = np.cumsum([0, *widths])
        train, test = train.copy(), test.copy()
        for start, stop in zip(starts[:-1], starts[1:], strict=True):
            rms = np.sqrt((train[:, start:stop] ** 2).mean()) or 1.0
            train[:, start:stop] /= rms
            test[:, start:stop] /= rms
        return train, test
    return train, test


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="FOLDER/<class>/<image files>")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbone", default="MobileNet")
    parser.add_argument("--backbone-kwargs", type=json.loads, default={"alpha": 0.25})
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-weights run for the tests; accuracies mean nothing")
    args = parser.parse_args(argv)
    weights, size, per_class, seeds = "imagenet", args.input_size, args.per_class, args.seeds
    if args.quick:
        weights, size, per_class, seeds = None, 32, min(per_class, 10), seeds[:1]
    if weights == "imagenet":
        _use_shared_weights()
    if not args.folder.is_dir():
        sys.exit(f"error: {str(args.folder)!r} is not a folder.")

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    from transferkit import KerasFeatureExtractor
    from transferkit.training import HEAD_CS

    paths, labels = labelled_images(args.folder)
    splits = [draw(paths, labels, per_class, seed, args.test_fraction) for seed in seeds]
    used = sorted({path for (train, _), (test, _) in splits for path in train + test})
    extractor = KerasFeatureExtractor(args.backbone, backbone_kwargs=args.backbone_kwargs or None,
                                      weights=weights, input_size=size, cut="blocks",
                                      cache=None, random_state=0)
    features = extractor.fit_transform(np.asarray(used, dtype=object))
    # Each block's columns, from the names KerasFeatureExtractor gives them
    # (``<block>_<pooling>_<i>``), in the order of the blocks.
    prefixes = [str(name).rsplit("_", 1)[0] for name in extractor.get_feature_names_out()]
    blocks_in_order = list(dict.fromkeys(prefixes))
    columns = [np.flatnonzero(np.asarray(prefixes) == block) for block in blocks_in_order]
    row = {path: i for i, path in enumerate(used)}

    rows = {"hand_probe": ("last", "raw", "hand")}
    for set_name in block_sets(len(columns)):
        for how in ("raw", "std", "block_rms"):
            if set_name == "last" and how == "block_rms":
                continue  # one block: the same as raw up to the penalty's scale
            rows[f"{set_name}, {how}"] = (set_name, how, "head")
    sets = block_sets(len(columns))
    results: dict[str, dict] = {}
    for name, (set_name, how, kind) in rows.items():
        blocks = sets[set_name]
        accuracies = []
        for (train_paths, train_labels), (test_paths, test_labels) in splits:
            chosen = np.concatenate([columns[b] for b in blocks])
            train = features[[row[p] for p in train_paths]][:, chosen]
            test = features[[row[p] for p in test_paths]][:, chosen]
            train, test = scaled(train, test, how, [len(columns[b]) for b in blocks])
            if kind == "hand":
                model = LogisticRegression(max_iter=2000)
            else:
                n_splits = int(min(3, np.unique(train_labels, return_counts=True)[1].min()))
                model = LogisticRegressionCV(
                    Cs=HEAD_CS, l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=2000,
                    tol=1e-3, use_legacy_attributes=False,
                    cv=StratifiedKFold(max(n_splits, 2), shuffle=True, random_state=0))
            model.fit(train, train_labels)
            accuracies.append(float(np.mean(model.predict(test) == np.asarray(test_labels))))
        results[name] = {"blocks": [blocks_in_order[b].rsplit("_", 1)[0] for b in blocks],
                         "accuracy": [round(a, 4) for a in accuracies],
                         "mean_accuracy": round(float(np.mean(accuracies)), 4)}
    report = {
        "benchmark": "head_blocks",
        "quick": args.quick,
        "backbone": args.backbone,
        "backbone_kwargs": args.backbone_kwargs,
        "input_size": size,
        "data": {"folder": str(args.folder), "per_class_drawn": per_class,
                 "test_fraction": args.test_fraction},
        "seeds": seeds,
        "results": results,
        "machine": machine(),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
