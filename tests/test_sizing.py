"""deep_sizeof: what a value really holds, checked against tracemalloc."""

from __future__ import annotations

import collections
import gc
import sys
import time
import tracemalloc
import typing as t

import pytest

from tieredcache.backends.sizing import deep_sizeof


class Plain:
    def __init__(self, i: int) -> None:
        self.name = f"plain {i}"
        self.items = [i * 1000 + j for j in range(10)]


class Slotted:
    __slots__ = ("name", "unset", "values")

    def __init__(self, i: int) -> None:
        self.name = f"slotted {i}"
        self.values = (float(i), float(i + 1))


Point = collections.namedtuple("Point", "x y")

MAKERS: dict[str, t.Callable[[int], t.Any]] = {
    "bytes": lambda i: b"b" * 200 + str(i).encode(),
    "str": lambda i: f"ascii {i} " * 10,
    "str-unicode": lambda i: f"ünïcødé {i} ✓" * 5,
    "int": lambda i: 10_000 + i,
    "bigint": lambda i: 10**40 + i,
    "float": lambda i: i + 0.5,
    "list": lambda i: [i * 1000 + j for j in range(40)],
    "tuple": lambda i: tuple(f"s{i}-{j}" for j in range(12)),
    "dict": lambda i: {f"k{i}-{j}": [j + 1000, str(j)] for j in range(6)},
    "set": lambda i: {i * 100 + j for j in range(300, 320)},
    "nested": lambda i: {"a": [(i + 500, (str(i),)) for _ in range(4)], "b": {i + 500}},
    "instance": Plain,
    "slots": Slotted,
    "namedtuple": lambda i: Point(i + 1000, [i + 2000]),
    "shared": lambda i: [f"same {i}"] * 50,
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_size_matches_what_tracemalloc_sees(kind: str) -> None:
    make = MAKERS[kind]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        values = [make(i) for i in range(1000, 1200)]
        held = tracemalloc.get_traced_memory()[0] - before - sys.getsizeof(values)
    finally:
        tracemalloc.stop()
    estimated = sum(map(deep_sizeof, values))
    if kind == "instance":
        # A CPython 3.11+ instance keeps its attributes inline until its __dict__ is asked
        # for, and sizing asks: the estimate is above the truth, never below.
        assert held <= estimated <= 1.3 * held, (estimated, held)
    else:  # exact but for one-off allocations of the interpreter
        assert abs(estimated - held) <= 0.03 * held + 2048, (estimated, held)


def test_shared_objects_and_cycles_count_once() -> None:
    item = "x" * 1000
    assert deep_sizeof([item] * 100) == sys.getsizeof([item] * 100) + sys.getsizeof(item)
    loop: list[t.Any] = []
    loop.append(loop)
    assert deep_sizeof(loop) == sys.getsizeof(loop)
    assert deep_sizeof([None, True, 1, "a", b"", ()] * 2) == sys.getsizeof([0] * 12)


def test_huge_values_are_sized_in_bounded_time() -> None:
    records = [[i, str(i)] for i in range(300_000)]
    exact = sys.getsizeof(records) + sum(
        sys.getsizeof(r) + sys.getsizeof(r[1]) + 32 for r in records
    )
    started = time.perf_counter()
    estimated = deep_sizeof(records)
    assert time.perf_counter() - started < 1.0  # an exact walk takes far longer
    assert abs(estimated - exact) <= 0.05 * exact
    deep: list[t.Any] = []
    for _ in range(50_000):  # nesting deeper than any recursion limit
        deep = [deep, 1000]
    assert deep_sizeof(deep) > 0
