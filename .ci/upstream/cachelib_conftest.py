# Appended by run.py to cachelib's tests/conftest.py: a location on the L2 named by TC_L2.
import pytest as _pytest
from tc_upstream import location as _location

from tieredcache.config import release_shared_caches as _release


@_pytest.fixture
def tc_location(tmp_path):
    return _location(tmp_path)


@_pytest.fixture(autouse=True)
def _tc_release_caches():
    yield
    _release()
