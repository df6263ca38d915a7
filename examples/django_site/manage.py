#!/usr/bin/env python
"""The Django example site: ``python examples/django_site/manage.py runserver``.

Then open http://127.0.0.1:8000/. See examples/README.md for what to try.
"""

from __future__ import annotations

import os
import pathlib
import sys


def main() -> None:
    here = pathlib.Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    try:
        import tieredcache  # noqa: F401
    except ImportError:  # run from a source checkout without installing tieredcache
        sys.path.insert(1, str(here.parents[1]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cachedemo.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
