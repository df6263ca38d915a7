"""The README's examples run as written.

A Python block that follows a ``<!-- runnable ... -->`` comment in README.md runs here, in a
fresh interpreter whose cache directory is the test's own. The quick start keeps its two
commands, which ``.ci/run`` runs as written in a new virtualenv.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

RUNNABLE = re.compile(r"<!-- runnable\b[^>]*-->\n```python\n(.*?)\n```", re.DOTALL)


def runnable_blocks() -> list[str]:
    return RUNNABLE.findall(README)


def test_the_readme_has_runnable_blocks() -> None:
    assert runnable_blocks()


@pytest.mark.parametrize("code", runnable_blocks(), ids=lambda code: code.splitlines()[0][:40])
def test_readme_block_runs(code: str, tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for attempt in ("first run", "second run"):  # the cache file is there the second time
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{attempt}:\n{result.stderr}"


def test_the_quick_start_is_two_commands() -> None:
    section = README.split("## Quick start", 1)[1]
    block = section.split("```", 2)[1]
    commands = [line for line in block.splitlines() if line.strip()]
    assert commands == [
        'pip install -e ".[test]" && python -m tieredcache demo',
        "python -m pytest",
    ]
