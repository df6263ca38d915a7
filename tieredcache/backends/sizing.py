"""How many bytes a value really holds in the process: a bounded deep ``sys.getsizeof``.

:class:`~tieredcache.MemoryBackend` bounds what it holds by bytes (``max_bytes``). The size
of a value is what the process would free if the cache dropped it: the object and
everything it references, each object counted once, with what CPython shares between all
users left out (``None``, ``True``/``False``, the small ints, the empty and one-character
strings and bytes, the empty tuple, classes, modules and functions).

- ``bytes``, ``bytearray``, ``str``, ``int``, ``float``, ``complex``: ``sys.getsizeof``
  (an int as CPython allocates it, 4 bytes more), exact.
- ``list``, ``tuple``, ``dict``, ``set``, ``frozenset`` and ``collections.deque`` (and their
  subclasses, such as named tuples): the container (``sys.getsizeof``, which includes its
  over-allocated table) plus its items, nested to any depth; an object reachable twice is
  counted once.
- any other object (an instance of a user class, a ``datetime``, a ``Decimal``...):
  ``sys.getsizeof`` of the object (which includes the buffer of objects that report it, as
  NumPy arrays do), plus its instance ``__dict__`` and ``__slots__`` values, walked the same
  way. What it holds through C-level pointers that ``__sizeof__`` does not report is not
  counted.

The walk is bounded: after :data:`MAX_OBJECTS` objects, the containers left are counted at
the average size of the objects already counted, so sizing a huge value costs a few
milliseconds at most. Flat runs of numbers and strings are sized in C-level passes.
"""

from __future__ import annotations

import collections
import itertools
import sys
import types
import typing as t

from tieredcache.entry import Entry
from tieredcache.entry import next_version

__all__ = ["MAX_OBJECTS", "deep_sizeof", "entry_bytes"]

#: The most objects one call visits; the rest of a larger value is extrapolated.
MAX_OBJECTS = 10_000

_getsizeof = sys.getsizeof
# CPython allocates an int 4 bytes larger than getsizeof() reports (a whole digit of
# padding; measured with tracemalloc on 3.11, and on 3.12 for the one-digit ints).
_INT_PADDING = 4
_DIGIT = 2**30  # CPython's int digit: below it in magnitude, an int has one digit
_ONE_DIGIT_INT_BYTES = _getsizeof(_DIGIT - 1) + _INT_PADDING
_FLOAT_BYTES = _getsizeof(0.5)
_EMPTY_STR_BYTES = _getsizeof("")  # an ASCII str holds one byte per character beyond this
_EMPTY_BYTES_BYTES = _getsizeof(b"")
_ATOMS = frozenset({int, bytes, bytearray, str, float, complex})
_LEAVES = _ATOMS | {bool, type(None)}
_CONTAINERS = (list, tuple, set, frozenset, collections.deque)
_EXACT_CONTAINERS = frozenset(_CONTAINERS)
_SAMPLE_OVER = 1000  # more containers than this in one container: size a sample of them
_SAMPLE = 100
_BULK = 8  # containers with at least this many items are scanned in C-level passes
# Objects that belong to the program, not to a cached value.
_SHARED_TYPES = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
)


def _shared_objects() -> tuple[t.Any, ...]:
    """The objects CPython keeps one copy of for everyone (only those that really are).

    A one-character string can come from more than one cache (``chr(97)`` and ``"abc"[0]``
    are not always the same object), so each way of making one is tried.
    """
    latin1 = "".join(map(chr, range(256)))
    found: list[t.Any] = [None, True, False, (), "", b"", Ellipsis, NotImplemented]
    for i in range(-5, 257):  # the small ints; the chars and bytes up to 255
        pairs: list[tuple[t.Any, t.Any]] = [(int(str(i)), int(str(i)))]
        if 0 <= i < 256:
            pairs += [
                (chr(i), chr(i)),
                (latin1[i], latin1[i]),
                (sys.intern(latin1[i]), sys.intern(latin1[i])),
                (bytes([i]), bytes([i])),
                (b"".join([bytes([i])]), b"".join([bytes([i])])),
            ]
        found += [first for first, second in pairs if first is second]
    return tuple(found)


# Held here so that their ids are never reused.
_SHARED = _shared_objects()
_SHARED_IDS = frozenset(map(id, _SHARED))
_slot_names: dict[type, tuple[str, ...]] = {}


def deep_sizeof(value: t.Any, max_objects: int = MAX_OBJECTS) -> int:
    """The bytes ``value`` holds: itself and what it references, each object once.

    See the module documentation for what is counted.

    :param value: any object.
    :param max_objects: visit about this many objects at most, then extrapolate.
    """
    cls = type(value)
    if cls is str or cls is bytes or cls is float or cls is int:  # the common values, at once
        if id(value) in _SHARED_IDS:
            return 0
        return _getsizeof(value) + _INT_PADDING if cls is int else _getsizeof(value)
    return _Walk(max(1, max_objects)).size(value)


class _Walk:
    """One sizing: the objects seen so far and the budget left. Not thread-safe."""

    def __init__(self, max_objects: int) -> None:
        self.max_objects = max_objects
        self.visited = 0
        self.seen: set[int] = set()

    def size(self, value: t.Any) -> int:
        """The bytes of ``value`` not counted yet by this walk."""
        total = 0
        seen = self.seen
        shared = _SHARED_IDS
        stack = [value]
        pop, push, extend = stack.pop, stack.append, stack.extend
        while stack:
            if self.visited >= self.max_objects:
                return total + self._estimate(stack, total)
            obj = pop()
            ident = id(obj)
            if ident in seen or ident in shared:
                continue
            seen.add(ident)
            cls = type(obj)
            if cls in _ATOMS:
                total += _getsizeof(obj) + _INT_PADDING if cls is int else _getsizeof(obj)
                self.visited += 1
                continue
            if isinstance(obj, _SHARED_TYPES):
                continue
            total += _getsizeof(obj)
            self.visited += 1
            if cls in _EXACT_CONTAINERS or cls is dict:
                groups: tuple[t.Any, ...] = (obj.keys(), obj.values()) if cls is dict else (obj,)
            else:
                if isinstance(obj, dict):
                    groups = (obj.keys(), obj.values())
                elif isinstance(obj, _CONTAINERS):
                    groups = (obj,)
                elif cls is memoryview:
                    groups = ((obj.obj,),)
                else:
                    groups = ()
                attrs = getattr(obj, "__dict__", None)
                if type(attrs) is dict:
                    push(attrs)
                for name in _slots_of(cls):
                    try:
                        push(getattr(obj, name))
                    except AttributeError:  # an unset slot
                        pass
            for group in groups:
                if len(group) < _BULK:
                    extend(group)
                    continue
                # A huge group is judged by its first max_objects items.
                probe = itertools.islice(group, self.max_objects)
                kinds = set(map(type, probe))
                if kinds <= _LEAVES:
                    total += self._flat(group, kinds)
                elif len(group) > _SAMPLE_OVER:
                    total += self._sampled(group)
                else:
                    extend(group)
        return total

    def _flat(self, group: t.Any, kinds: set[type]) -> int:
        """Numbers, strings and bytes: C-level passes instead of one step per item."""
        scale = 1.0
        if len(group) > self.max_objects:  # a huge flat run: size a sample of it
            scale = len(group) / self.max_objects
            group = list(itertools.islice(group, self.max_objects))
        seen = self.seen
        ids = set(map(id, group))
        if len(ids) == len(group) and ids.isdisjoint(seen) and ids.isdisjoint(_SHARED_IDS):
            fresh = group  # the common case: every item is new and is its own object
        else:
            by_id = dict(zip(map(id, group), group))
            # set - set walks the left side, so this costs the group's length.
            fresh = list(map(by_id.__getitem__, ids - seen - _SHARED_IDS))
        seen |= ids
        self.visited += len(fresh)
        return int(_flat_bytes(fresh, kinds) * scale)

    def _sampled(self, group: t.Any) -> int:
        """Many containers or objects (a list of records): size a sample of them, scaled."""
        items = group if isinstance(group, (list, tuple)) else list(group)
        step = len(items) / _SAMPLE
        sample = [items[int(i * step)] for i in range(_SAMPLE)]
        return int(sum(map(self.size, sample)) * step)

    def _estimate(self, rest: list[t.Any], total: int) -> int:
        """Out of budget: the objects left, their items at this walk's average so far."""
        average = total // max(self.visited, 1)
        scale = 1.0
        if len(rest) > _SAMPLE:
            scale = len(rest) / _SAMPLE
            rest = [rest[int(i * scale)] for i in range(_SAMPLE)]
        size = 0
        for obj in rest:
            if id(obj) in self.seen or id(obj) in _SHARED_IDS:
                continue
            size += _getsizeof(obj)
            if isinstance(obj, (dict, *_CONTAINERS)):
                size += len(obj) * (2 if isinstance(obj, dict) else 1) * average
        return int(size * scale)


def _flat_bytes(items: t.Any, kinds: set[type]) -> int:
    """The bytes of ``items``: distinct numbers, strings and bytes (no shared ones)."""
    count = len(items)
    if not count:
        return 0
    if len(kinds) == 1:
        kind = next(iter(kinds))
        # Sizes that follow from the type and the length, without a call per item.
        if kind is float:
            return count * _FLOAT_BYTES
        if kind is int and min(items) > -_DIGIT and max(items) < _DIGIT:
            return count * _ONE_DIGIT_INT_BYTES
        if kind is str and all(map(str.isascii, items)):
            return count * _EMPTY_STR_BYTES + sum(map(len, items))
        if kind is bytes:
            return count * _EMPTY_BYTES_BYTES + sum(map(len, items))
    size = sum(map(_getsizeof, items))
    if int in kinds:
        size += _INT_PADDING * list(map(type, items)).count(int)
    return size


def _slots_of(cls: type) -> tuple[str, ...]:
    """The ``__slots__`` names of ``cls`` and its bases (cached per class)."""
    names = _slot_names.get(cls)
    if names is None:
        found: list[str] = []
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            found += [s for s in slots if s not in ("__dict__", "__weakref__")]
        names = _slot_names[cls] = tuple(found)
    return names


def entry_bytes(entry: Entry, value_bytes: int) -> int:
    """What one stored entry holds beyond its key: its value (``value_bytes``), the
    :class:`~tieredcache.entry.Entry` and its version (an int that is never shared), and
    its expiry and stale time (floats) when it has them."""
    size = _ENTRY_BYTES + value_bytes
    if entry.expires_at is not None:
        size += _FLOAT_BYTES
    if entry.stale_at is not None:
        size += _FLOAT_BYTES
    return size


_ENTRY_BYTES = sys.getsizeof(Entry(None)) + deep_sizeof(next_version())
