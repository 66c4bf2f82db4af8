"""Sphinx configuration of the transferkit documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors). The
gallery runs every example, with small settings, so that each page shows its output and its
pictures. They use the real MobileNet 0.25 weights and the hymenoptera images of ``../shared``
where it is present; where it is absent the build says so, the examples fall back to random
weights as they do for a user, and the two that need a folder of images are shown without
being run. ``-D plot_gallery=0`` renders the gallery without running anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
# Document the checkout this file lives in, not whichever transferkit is installed.
sys.path.insert(0, str(REPO))

import transferkit  # noqa: E402

sys.path.insert(0, str(DOCS))
from gallery_settings import (  # noqa: E402
    HYMENOPTERA,
    NEEDS_IMAGES,
    use_shared_data,
    write_pictures_include,
)

use_shared_data()

project = "transferkit"
author = "The transferkit developers"
copyright = "The transferkit developers"  # noqa: A001  (Sphinx reads this name)
version = release = transferkit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5"]
default_role = "literal"

autosummary_generate = True
autodoc_default_options = {
    "members": True,
    "inherited-members": False,
    # scikit-learn's own machinery, documented by scikit-learn; its docstrings point into
    # scikit-learn's glossary, which this site does not have.
    "exclude-members": ", ".join([
        "get_metadata_routing", "get_params", "set_params", "set_output", "fit_transform",
        "score", "set_fit_request", "set_predict_proba_request", "set_predict_request",
        "set_score_request", "set_transform_request",
    ]),
}
autodoc_typehints = "none"  # numpydoc's Parameters sections already give the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Return and parameter types are prose ("int or None"); they are not cross-references.
numpydoc_xref_param_type = False

sphinx_gallery_conf = {
    "examples_dirs": str(REPO / "examples"),
    "gallery_dirs": "auto_examples",
    "plot_gallery": "True",
    "filename_pattern": "/" if (HYMENOPTERA / "train").is_dir()
    else rf"/(?!({'|'.join(NEEDS_IMAGES)})\.py$)[^/]+$",
    # A name, not the function: Sphinx caches its configuration only if it pickles.
    "reset_argv": "gallery_settings.gallery_argv",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

html_theme = "pydata_sphinx_theme"
html_title = f"transferkit {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
html_show_sourcelink = False


def setup(app: object) -> None:
    # After sphinx-gallery's own builder-inited handler (priority 500), which runs the examples.
    app.connect("builder-inited", write_pictures_include, priority=900)  # type: ignore[attr-defined]
