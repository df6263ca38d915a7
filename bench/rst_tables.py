"""Turn a benchmark ``results.json`` (or ``multiprocess.json``) into the reStructuredText
tables of the docs page.

``python bench/rst_tables.py bench/results/results.json`` prints them;
``--update docs/benchmarks.rst`` rewrites the part of that page between the lines
``.. results start`` and ``.. results end`` instead (for ``multiprocess.json``:
``.. multiprocess start`` and ``.. multiprocess end``). The rendering itself is
:func:`tieredcache.bench.report.rst_tables`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Run from a checkout: import the tieredcache next to this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tieredcache.bench.report import rst_tables


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results.json or multiprocess.json of the bench")
    parser.add_argument("--update", metavar="RST", help="rewrite the results part of this page")
    args = parser.parse_args()
    with open(args.results, encoding="utf-8") as fh:
        data = json.load(fh)
    text = rst_tables(data)
    if not args.update:
        print(text)
        return 0
    section = "multiprocess" if data.get("kind") == "multiprocess" else "results"
    start, end = f".. {section} start", f".. {section} end"
    with open(args.update, encoding="utf-8") as fh:
        page = fh.read()
    head, found_start, rest = page.partition(start)
    _, found_end, tail = rest.partition(end)
    if not found_start or not found_end:
        raise SystemExit(f"{args.update} has no {start!r} ... {end!r} section")
    with open(args.update, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{start}\n\n{text}\n{end}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
