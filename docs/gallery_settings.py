"""How the documentation's gallery runs the examples: the data it uses and the command lines.

A module of its own because sphinx-gallery takes ``reset_argv`` by its importable name (a
function in conf.py would make Sphinx's configuration unpicklable, which ``-W`` fails on).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "keras_home" / "models"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
# Examples that need a folder of classes; without hymenoptera they are shown, not run.
NEEDS_IMAGES = ("classify_folder", "finetune_vs_features", "rank_cuts_with_logme")
PICTURES = Path(tempfile.mkdtemp(prefix="transferkit-docs-pictures-"))


def _note(message: str) -> None:
    # stderr: a note on what the gallery shows must survive sphinx -q.
    print(f"docs/gallery_settings.py: {message}", file=sys.stderr)


def use_shared_data() -> None:
    """Point Keras at ../shared's weights, as tests/conftest.py does, and say what is absent.

    Must run before Keras is imported. Keras uses ``$KERAS_HOME`` only if it is writable and
    ../shared is read-only in CI, so the files are linked into a temporary home.
    """
    if SHARED_MODELS.is_dir():
        home = Path(tempfile.mkdtemp(prefix="transferkit-docs-keras-home-"))
        (home / "models").mkdir()
        for weights_file in SHARED_MODELS.iterdir():
            (home / "models" / weights_file.name).symlink_to(weights_file)
        os.environ["KERAS_HOME"] = str(home)
    else:
        _note(f"{SHARED_MODELS} is absent: the gallery's examples run on random weights "
              "(or on weights Keras downloads, where it can), as they would for a user.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not (HYMENOPTERA / "train").is_dir():
        _note(f"{HYMENOPTERA} is absent: {', '.join(NEEDS_IMAGES)} are shown without being "
              "run, and plot_activations without its Grad-CAM part.")


# Small settings: the gallery runs in CI, whose time budget is tight. Each line is what a
# reader could type; --out-dir keeps the pictures out of the checkout. MobileNet input sizes
# avoid 128, 160 and 192, for which Keras wants weight files ../shared does not have.
_ARGS = {
    "quickstart": ["--n-images", "400", "--input-size", "64"],
    "classify_folder": [str(HYMENOPTERA / "train"), "--val", str(HYMENOPTERA / "val"),
                        "--n-per-class", "30", "--input-size", "96",
                        "--confusion-matrix", str(PICTURES / "confusion_matrix.png")],
    # Enough epochs and images for the training history to be a curve, not two dots.
    "finetune_vs_features": [str(HYMENOPTERA), "--n-per-class", "30", "--epochs", "4",
                             "--input-size", "96"],
    # Without weights the example stops and asks for --weights none; the gallery does that.
    "grid_search_backbone_cut": ["--backbones", "MobileNet", "--n-images", "150",
                                 "--input-size", "32", "--cv", "2"]
    + ([] if SHARED_MODELS.is_dir() else ["--weights", "none"]),
    "mixed_tabular_images": ["--n-images", "400", "--input-size", "96"],
    "plot_activations": ["--out-dir", str(PICTURES), "--input-size", "224"]
    + (["--folder", str(HYMENOPTERA / "train"), "--n-per-class", "12", "--epochs", "3"]
       if (HYMENOPTERA / "train").is_dir() else []),
    "rank_cuts_with_logme": [str(HYMENOPTERA), "--n-per-class", "20", "--input-size", "96",
                             "--top", "2", "--epochs", "1"],
    "save_and_load": ["--n-images", "150", "--input-size", "32"],
}


def gallery_argv(gallery_conf: dict, script_vars: dict) -> list[str]:
    """The command line an example runs with in the gallery."""
    return _ARGS.get(Path(script_vars["src_file"]).stem, [])


# The pictures plot_activations draws, for docs/visualisation.rst, with what each shows.
PICTURES_PAGE_IMAGES = (
    ("sphx_glr_plot_activations_001.png",
     "The flower photograph as MobileNet sees it, beside the six most active channels of "
     "three layers, early to late."),
    ("sphx_glr_plot_activations_002.png",
     "Grad-CAM of a FineTunedClassifier trained on a few hymenoptera images: the evidence "
     "for its prediction, within the part of the image it sees."),
    ("sphx_glr_plot_activations_003.png",
     "The training history of that classifier (plot_history): loss and accuracy per epoch, "
     "the epoch it kept ringed, and in the title which weights it kept and why."),
)


def write_pictures_include(app: object) -> None:
    """Write auto_examples/pictures.txt, which docs/visualisation.rst includes.

    Runs after the gallery is generated: it shows the pictures the examples drew in this
    build, or says why there are none, so the page builds either way.
    """
    gallery = Path(app.srcdir) / "auto_examples"  # type: ignore[attr-defined]
    lines = []
    for name, caption in PICTURES_PAGE_IMAGES:
        if (gallery / "images" / name).is_file():
            lines += [f".. figure:: /auto_examples/images/{name}", "   :width: 100%", "",
                      f"   {caption}", ""]
    if not lines:
        lines = ["The pictures appear here when the build runs the gallery's examples "
                 "(this one did not: ``plot_gallery`` was off).", ""]
    gallery.mkdir(parents=True, exist_ok=True)
    (gallery / "pictures.txt").write_text("\n".join(lines))
