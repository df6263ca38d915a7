# Appended by run.py to Flask-Caching's tests/conftest.py: configuration only.
#
# The app fixture selects tieredcache's backend and a location on the L2 named by TC_L2;
# every test starts on an empty store (SimpleCache, the suite's default, is a new empty
# object per test); and the clock fixture also drives tieredcache's clock, as the original
# drives cachelib's (it replaces ``time`` in cachelib.simple and cachelib.file).
import os as _os
import time as _time
import types as _types

import cachelib.file as _cachelib_file
import cachelib.simple as _cachelib_simple
import flask as _flask
import pytest as _pytest
from tc_upstream import location as _location

import tieredcache.backends.base as _tc_base
from tieredcache.config import build_l2 as _build_l2
from tieredcache.config import release_shared_caches as _release
from tieredcache.testing.clock import FakeClock as _FakeClock

_now = [_time.time]
# Backends read ``time.time`` from this module when they are built: a switchable clock.
_tc_base.time = _types.SimpleNamespace(time=lambda: _now[0]())


@_pytest.fixture
def tc_location(tmp_path):
    return _location(tmp_path)


@_pytest.fixture(autouse=True)
def _tc_fresh_store(tc_location):
    store = _build_l2(tc_location)
    store.clear()
    store.close()
    yield
    _release()
    _now[0] = _time.time


@_pytest.fixture
def app(request, tc_location):
    app = _flask.Flask(request.module.__name__, template_folder=_os.path.dirname(__file__))
    app.testing = True
    app.config["CACHE_TYPE"] = "tieredcache.contrib.flask.TieredCache"
    app.config["CACHE_TIEREDCACHE_LOCATION"] = tc_location
    return app


@_pytest.fixture
def clock(monkeypatch):
    fake = _FakeClock(1_700_000_000.0)
    monkeypatch.setattr(_cachelib_simple, "time", fake)
    monkeypatch.setattr(_cachelib_file, "time", fake)
    _now[0] = fake
    return fake
