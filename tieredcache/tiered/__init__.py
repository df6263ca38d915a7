"""The composition: :class:`TieredCache` and its collaborators.

- :mod:`.cache`: the composition itself, which owns each operation from start to end;
- :mod:`.ordering`: the per-key ordering of this process's writes;
- :mod:`.l2gate`: the breaker, fail-open, replay and announcements around every L2 call;
- :mod:`.refresh`: ``get_or_set``, stale-while-revalidate and background refresh.
"""

from tieredcache.tiered.cache import TieredCache

__all__ = ["TieredCache"]
