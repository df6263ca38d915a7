"""``python -m tieredcache``: see :mod:`tieredcache.cli`."""

import sys

from tieredcache.cli import main

if __name__ == "__main__":
    sys.exit(main())
