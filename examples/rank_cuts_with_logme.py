"""
Rank cuts with LogME, then search, then fine-tune
=================================================

Which depth of MobileNet transfers best to these images? :func:`~transferkit.rank_transferability`
scores every cut point with LogME (the evidence of a Bayesian linear model on the features,
no training), a ``GridSearchCV`` then searches only the best few with a classifier, and
:class:`~transferkit.FineTunedClassifier` fine-tunes the winner. The picture puts LogME beside
a linear probe's validation accuracy at every cut.

Takes a folder with ``train/`` and ``val/`` sub-folders, each with one sub-folder per class,
such as the hymenoptera data set (ants and bees).

.. code-block:: bash

   python examples/rank_cuts_with_logme.py hymenoptera_data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferkit import (
    FineTunedClassifier,
    KerasFeatureExtractor,
    WeightsUnavailableError,
    list_cut_points,
    rank_transferability,
)

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
        print(f"ImageNet weights unavailable, RANDOM weights are used.\n  Reason: {exc}")
        return None


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="Rank cuts with LogME, search, fine-tune.")
    parser.add_argument("folder", type=Path, help="a folder with train/ and val/ sub-folders")
    parser.add_argument("--n-per-class", type=int, default=None,
                        help="use at most N images per class and split (fast smoke run)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--top", type=int, default=3, help="cuts the grid search tries")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--picture", type=Path, default=None,
                        help="save the LogME / probe accuracy picture here")
    args = parser.parse_args(argv)

    train = read_split(args.folder / "train", args.n_per_class)
    val = read_split(args.folder / "val", args.n_per_class)
    weights = pretrained_weights(args.input_size)
    extractor = KerasFeatureExtractor(**MOBILENET, weights=weights, input_size=args.input_size)

    # %%
    # Rank every cut: one feature pass per cut, the score itself takes milliseconds.
    ranking = rank_transferability(extractor, *train,
                                   param_grid={"cut": list_cut_points("MobileNet")})
    print(ranking[["cut", "n_features", "logme", "features_seconds", "score_seconds"]]
          .to_string(index=False))

    # %%
    # A linear probe at every cut, for the picture: what LogME predicts without training.
    accuracy = {}
    for cut in ranking["cut"]:
        features = KerasFeatureExtractor(**{**extractor.get_params(), "cut": cut})
        probe = LogisticRegression(max_iter=5000).fit(features.fit_transform(train[0]),
                                                      train[1])
        accuracy[cut] = probe.score(features.transform(val[0]), val[1])
    by_depth = list_cut_points("MobileNet")
    logme_by_cut = dict(zip(ranking["cut"], ranking["logme"], strict=True))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
    # LogME is negative: bars rise from just below the lowest score, so higher is taller.
    floor = min(logme_by_cut.values()) - 0.02
    left.bar(range(len(by_depth)), [logme_by_cut[cut] - floor for cut in by_depth],
             bottom=floor)
    left.set_title("LogME on the training images")
    right.bar(range(len(by_depth)), [accuracy[cut] for cut in by_depth], color="tab:orange")
    right.set_ylim(min(accuracy.values()) - 0.05, 1.0)
    right.set_title("linear probe: validation accuracy")
    for axis in (left, right):
        axis.set_xticks(range(len(by_depth)), [c.removeprefix("conv_") for c in by_depth],
                        rotation=60)
    figure.tight_layout()
    if args.picture:
        figure.savefig(args.picture)

    # %%
    # Search only the best few cuts, with the classifier's regularisation.
    best_cuts = list(ranking["cut"].head(args.top))
    pipe = Pipeline([("features", extractor), ("scale", StandardScaler()),
                     ("clf", LogisticRegression(max_iter=2000))])
    search = GridSearchCV(pipe, {"features__cut": best_cuts, "clf__C": [0.1, 1.0]}, cv=2)
    search.fit(*train)
    winner = search.best_params_["features__cut"]
    print(f"grid search over {best_cuts}: best {search.best_params_}, "
          f"validation accuracy {search.score(*val):.3f}")

    # %%
    # Fine-tune the winner.
    tuned = FineTunedClassifier(**MOBILENET, weights=weights, cut=winner, random_state=0,
                                input_size=args.input_size, epochs=args.epochs).fit(*train)
    print(f"fine-tuned at {winner}: validation accuracy {tuned.score(*val):.3f}")
    return {"ranking": ranking, "winner": winner, "probe_accuracy": accuracy}


if __name__ == "__main__":
    main()
