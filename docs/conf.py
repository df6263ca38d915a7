"""Sphinx configuration for the tieredcache documentation."""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.abspath(".."))


def _read_version() -> str:
    # Read the version without importing the package, so the docs build never depends on
    # the package's runtime dependencies being importable.
    here = os.path.dirname(os.path.abspath(__file__))
    init = os.path.join(here, "..", "tieredcache", "__init__.py")
    try:
        with open(init, encoding="utf-8") as f:
            match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read(), re.MULTILINE)
    except OSError:
        return "unknown"
    return match.group(1) if match else "unknown"


project = "tieredcache"
author = "the tieredcache contributors"
copyright = "tieredcache contributors"
release = _read_version()
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
]

# No intersphinx: the docs must build without network access.

autodoc_member_order = "bysource"
autodoc_typehints = "description"

exclude_patterns = ["_build"]
nitpicky = False
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"tieredcache {release}"
