"""Read, write and refill policies: the control flow of a composition."""

from tieredcache.policies.base import PolicyContext
from tieredcache.policies.read import ParallelRead
from tieredcache.policies.read import RaceRead
from tieredcache.policies.read import ReadPolicy
from tieredcache.policies.read import SequentialRead
from tieredcache.policies.refill import Refill
from tieredcache.policies.write import LoserPolicy
from tieredcache.policies.write import OptimisticParallelWrite
from tieredcache.policies.write import RaceWrite
from tieredcache.policies.write import SequentialWrite
from tieredcache.policies.write import WritePolicy

__all__ = [
    "LoserPolicy",
    "OptimisticParallelWrite",
    "ParallelRead",
    "PolicyContext",
    "RaceRead",
    "RaceWrite",
    "ReadPolicy",
    "Refill",
    "SequentialRead",
    "SequentialWrite",
    "WritePolicy",
]
