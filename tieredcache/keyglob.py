"""Glob patterns over cache keys, with Redis's ``KEYS``/``SCAN MATCH`` syntax.

Every backend matches :meth:`~tieredcache.backends.base.Backend.iter_keys` patterns with
these rules, so one pattern selects the same keys in memory, SQLite and Redis:

- ``*`` any run of characters (also none), ``?`` one character;
- ``[abc]`` one of the listed characters, ``[a-z]`` a range, ``[^abc]`` (or ``[!abc]``)
  any character but those;
- ``\\`` makes the next character literal (``\\*`` matches a star).
"""

from __future__ import annotations

import functools
import re

from tieredcache.errors import InvalidKeyError

__all__ = ["compile_glob", "escape_glob", "literal_prefix"]

_SPECIAL = "*?[\\"


@functools.lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The compiled regular expression that matches whole keys as ``pattern`` does.

    :raises InvalidKeyError: ``pattern`` is not a str.
    """
    if not isinstance(pattern, str):
        raise InvalidKeyError(f"a key pattern must be a str, not {type(pattern).__name__}")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 1 if i < n and pattern[i] in "^!" else i)
            if end < 0:  # no closing bracket: a literal "["
                out.append(re.escape(char))
                continue
            body = pattern[i:end]
            i = end + 1
            negate = body[:1] in ("^", "!")
            if negate:
                body = body[1:]
            members = "".join("\\" + c if c in "\\^[]" else c for c in body.replace("\\", ""))
            out.append(f"[{'^' if negate else ''}{members}]" if members else "(?!)")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def literal_prefix(pattern: str) -> str:
    """The characters every match of ``pattern`` starts with (before its first wildcard)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if char in _SPECIAL:
            break
        out.append(char)
        i += 1
    return "".join(out)


def escape_glob(text: str) -> str:
    """``text`` with every glob metacharacter escaped, so that it matches only itself."""
    return "".join("\\" + c if c in "*?[]^-\\" else c for c in text)
