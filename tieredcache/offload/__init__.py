"""Background tasks: deduplicated, bounded, counted, and drained before the interpreter exits.

An *offload* runs zero-argument callables that nobody waits for: a racing write's losing leg, a
stale-while-revalidate refresh, a refill. Each task carries an :class:`OffloadKey`; keyed and
explicit keys are deduplicated while a task with the same identity is in flight.

The offloads:

- :class:`ThreadPoolOffload` runs tasks on its own bounded pool of worker threads;
- :class:`InlineOffload` runs each task at once on the caller's thread;
- :class:`DisabledOffload` runs nothing and drops what it is given.

:func:`default_offload` returns a process-wide :class:`ThreadPoolOffload`. Before the interpreter
exits, every live :class:`ThreadPoolOffload` is drained, so no accepted task is lost.

Every offload keeps counters that always add up (see :class:`OffloadStats`)::

    submitted == completed + failed + cancelled + deduplicated + rejected + active
"""

from tieredcache.offload.base import Offload
from tieredcache.offload.inline import DisabledOffload
from tieredcache.offload.inline import InlineOffload
from tieredcache.offload.keys import OffloadKey
from tieredcache.offload.keys import OffloadStats
from tieredcache.offload.pool import ThreadPoolOffload
from tieredcache.offload.pool import default_offload
from tieredcache.offload.pool import set_default_offload

__all__ = [
    "DisabledOffload",
    "InlineOffload",
    "Offload",
    "OffloadKey",
    "OffloadStats",
    "ThreadPoolOffload",
    "default_offload",
    "set_default_offload",
]
