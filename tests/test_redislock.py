"""RedisLock on a real Redis: ownership, expiry, waiting, and single flight across processes.

Nothing fakes Redis: the locks live on the session's server (or on a server the test owns and
kills). The cross-process tests run fresh Python interpreters that race for the same locks.

Sections: helpers, acquire/release/extend, expiry and waiting, hold and single_flight,
failures, other processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import typing as t

import pytest
import redis

from tieredcache import BackendUnavailableError
from tieredcache import ConfigurationError
from tieredcache import Entry
from tieredcache import LockTimeoutError
from tieredcache.redis.lock import RedisLock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.servers import RedisServer

#: Seconds any bounded wait in this module may take before the test fails instead of hanging.
PATIENCE = 10.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# == helpers ===================================================================================


@pytest.fixture
def client(redis_url: str) -> t.Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


@pytest.fixture
def lock(client: redis.Redis) -> RedisLock:
    return RedisLock(client, ttl=5.0, wait_timeout=2.0)


def run_in_thread(target: t.Callable[[], t.Any]) -> tuple[threading.Thread, list[t.Any]]:
    """Start ``target`` on a thread; the list receives its result or its exception."""
    outcome: list[t.Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="test-lock-waiter")
    thread.start()
    return thread, outcome


def joined(thread: threading.Thread) -> bool:
    thread.join(PATIENCE)
    return not thread.is_alive()


# == acquire / release / extend ================================================================


def test_acquire_is_exclusive_and_release_frees(lock: RedisLock, client: redis.Redis) -> None:
    token = lock.acquire("k")
    assert isinstance(token, str) and token
    assert lock.acquire("k") is None
    assert lock.locked("k")
    assert client.get(b"tieredcache:lock:k") == token.encode()
    assert 0 < client.pttl(b"tieredcache:lock:k") <= 5000

    assert lock.release("k", token) is True
    assert not lock.locked("k")
    assert lock.release("k", token) is False  # already free
    again = lock.acquire("k")
    assert again is not None and again != token  # a fresh token each time
    assert lock.acquire("other") is not None  # locks are per key


def test_release_with_a_wrong_token_does_nothing(lock: RedisLock) -> None:
    token = lock.acquire("k")
    assert token is not None
    assert lock.release("k", "not-the-token") is False
    assert lock.locked("k")
    assert lock.release("k", token) is True


def test_extend_only_while_owned(lock: RedisLock, client: redis.Redis) -> None:
    token = lock.acquire("k", ttl=1.0)
    assert token is not None
    assert client.pttl(b"tieredcache:lock:k") <= 1000
    assert lock.extend("k", token, 30.0) is True
    assert 1000 < client.pttl(b"tieredcache:lock:k") <= 30000
    assert lock.extend("k", "not-the-token", 60.0) is False
    assert client.pttl(b"tieredcache:lock:k") <= 30000
    assert lock.release("k", token)
    assert lock.extend("k", token) is False
    assert not lock.locked("k")  # extending a free lock does not create it


def test_a_token_may_be_released_from_another_thread(lock: RedisLock) -> None:
    token = lock.acquire("k")
    assert token is not None
    thread, outcome = run_in_thread(lambda: lock.release("k", token))
    assert joined(thread) and outcome == [True]
    assert not lock.locked("k")


def test_prefix_and_unicode_keys(client: redis.Redis) -> None:
    lock = RedisLock(client, prefix="app:locks:")
    token = lock.acquire("ключ \udcff")
    assert token is not None
    assert client.exists("app:locks:ключ \udcff".encode("utf-8", "surrogatepass"))
    assert lock.release("ключ \udcff", token)


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": float("nan")},
        {"wait_timeout": -1},
        {"poll": (0.1, 0.01)},
        {"poll": 0.1},
        {"poll": (0, 0.1)},
        {"prefix": b"bytes"},
    ],
    ids=repr,
)
def test_bad_options_are_refused(client: redis.Redis, options: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisLock(client, **options)


def test_bad_arguments_are_refused(lock: RedisLock) -> None:
    with pytest.raises(ConfigurationError):
        lock.acquire(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        lock.acquire("k", ttl=0)
    with pytest.raises(ConfigurationError):
        RedisLock(None)


# == expiry and waiting ========================================================================


def test_a_lock_expires_after_its_ttl(client: redis.Redis) -> None:
    lock = RedisLock(client, ttl=0.2)
    token = lock.acquire("k")
    assert token is not None
    assert wait_until(lambda: not lock.locked("k"), PATIENCE)
    successor = lock.acquire("k")
    assert successor is not None
    # The first holder's late release must not free the successor's lock.
    assert lock.release("k", token) is False
    assert lock.extend("k", token) is False
    assert lock.locked("k")
    assert lock.release("k", successor)


def test_wait_returns_at_once_when_free_and_false_on_timeout(lock: RedisLock) -> None:
    assert lock.wait("k", 0) is True
    token = lock.acquire("k")
    assert token is not None
    started = time.monotonic()
    assert lock.wait("k", 0.15) is False
    assert 0.15 <= time.monotonic() - started < 2.0
    assert lock.wait("k", 0) is False


def test_wait_returns_when_another_thread_releases(lock: RedisLock) -> None:
    token = lock.acquire("k")
    assert token is not None
    thread, outcome = run_in_thread(lambda: lock.wait("k", PATIENCE))
    assert lock.release("k", token)
    assert joined(thread) and outcome == [True]


def test_wait_wakes_up_when_the_lock_expires(client: redis.Redis) -> None:
    # poll's ceiling is long, but a wait never sleeps past the lock's own expiry.
    lock = RedisLock(client, ttl=0.2, poll=(0.05, 5.0))
    assert lock.acquire("k") is not None
    started = time.monotonic()
    assert lock.wait("k", PATIENCE) is True
    assert time.monotonic() - started < 2.0


# == hold and single_flight ====================================================================


def test_hold_releases_on_exit_and_on_error(lock: RedisLock, client: redis.Redis) -> None:
    with lock.hold("k") as token:
        assert client.get(b"tieredcache:lock:k") == token.encode()
    assert not lock.locked("k")
    with pytest.raises(RuntimeError, match="boom"), lock.hold("k"):
        raise RuntimeError("boom")
    assert not lock.locked("k")


def test_hold_times_out_cleanly_when_the_holder_never_releases(lock: RedisLock) -> None:
    assert lock.acquire("stuck", ttl=30.0) is not None
    outcomes = []
    threads = []
    for _ in range(3):

        def waiter() -> None:
            with lock.hold("stuck", wait_timeout=0.2):
                pass

        thread, outcome = run_in_thread(waiter)
        threads.append(thread)
        outcomes.append(outcome)
    assert all(joined(thread) for thread in threads)
    for outcome in outcomes:
        assert len(outcome) == 1 and isinstance(outcome[0], LockTimeoutError)
    assert lock.locked("stuck")  # the waiters took nothing and freed nothing


def test_hold_waits_for_the_holder_then_takes_over(lock: RedisLock, client: redis.Redis) -> None:
    token = lock.acquire("k")
    assert token is not None

    def waiter() -> tuple[str, t.Any]:
        with lock.hold("k", wait_timeout=PATIENCE) as mine:
            return mine, client.get(b"tieredcache:lock:k")

    thread, outcome = run_in_thread(waiter)
    assert lock.release("k", token)
    assert joined(thread)
    mine, held = outcome[0]
    assert mine != token and held == mine.encode()
    assert not lock.locked("k")


def test_hold_logs_a_lock_that_expired_under_it(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    lock = RedisLock(client, ttl=0.1)
    with caplog.at_level(logging.WARNING, logger="tieredcache.redislock"), lock.hold("k"):
        assert wait_until(lambda: not lock.locked("k"), PATIENCE)
    assert any("expired" in r.getMessage() for r in caplog.records)


def test_single_flight_leader_loads_and_waiters_read(lock: RedisLock, client: redis.Redis) -> None:
    stored: dict[str, Entry] = {}
    loads = []
    release_loader = threading.Event()
    loading = threading.Event()

    def lookup() -> Entry | None:
        return stored.get("k")

    def load() -> str:
        loading.set()
        assert release_loader.wait(PATIENCE)
        loads.append(1)
        stored["k"] = Entry("value")
        return "value"

    leader, leader_outcome = run_in_thread(lambda: lock.single_flight("k", lookup, load))
    assert loading.wait(PATIENCE)
    waiters = [run_in_thread(lambda: lock.single_flight("k", lookup, load)) for _ in range(3)]
    release_loader.set()
    assert joined(leader) and all(joined(thread) for thread, _ in waiters)
    assert leader_outcome == ["value"]
    assert [outcome for _, outcome in waiters] == [["value"]] * 3
    assert loads == [1]
    assert not lock.locked("k")


def test_single_flight_rechecks_the_cache_under_the_lock(lock: RedisLock) -> None:
    # The caller missed just before; by the time it holds the lock, a leader elsewhere has
    # stored the value.
    def load() -> str:
        raise AssertionError("the loader must not run: the value is there")

    assert lock.single_flight("k", lambda: Entry("stored meanwhile"), load) == "stored meanwhile"
    assert not lock.locked("k")


def test_single_flight_a_failed_leader_hands_over(lock: RedisLock) -> None:
    def failing() -> str:
        raise RuntimeError("loader failed")

    with pytest.raises(RuntimeError, match="loader failed"):
        lock.single_flight("k", lambda: None, failing)
    assert not lock.locked("k")  # released: the next caller leads
    assert lock.single_flight("k", lambda: None, lambda: "second try") == "second try"


def test_single_flight_timeout_raises_or_loads(lock: RedisLock) -> None:
    assert lock.acquire("stuck", ttl=30.0) is not None
    with pytest.raises(LockTimeoutError):
        lock.single_flight("stuck", lambda: None, lambda: "loaded", wait_timeout=0.1)
    value = lock.single_flight(
        "stuck", lambda: None, lambda: "loaded", wait_timeout=0.1, load_on_timeout=True
    )
    assert value == "loaded"


# == failures ==================================================================================


def test_redis_errors_become_backend_errors(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisLock.from_url(fresh_redis_server.url, ttl=5.0) as lock:
        with caplog.at_level(logging.WARNING, logger="tieredcache.redislock"), lock.hold("k"):
            fresh_redis_server.kill()
        # Releasing failed; it was logged, not raised: the lock expires by itself.
        assert any("could not release" in r.getMessage() for r in caplog.records)
        for call in (
            lambda: lock.acquire("k"),
            lambda: lock.release("k", "token"),
            lambda: lock.extend("k", "token"),
            lambda: lock.wait("k", 0),
            lambda: lock.locked("k"),
        ):
            with pytest.raises(BackendUnavailableError) as caught:
                call()
            assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(BackendUnavailableError), lock.hold("k"):
            pass


# == other processes ===========================================================================

CHILD = textwrap.dedent(
    """
    import json, sys
    import redis
    from tieredcache import Entry, LockTimeoutError
    from tieredcache.redis.lock import RedisLock
    from tieredcache.testing.clock import wait_until

    url, rounds, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = redis.Redis.from_url(url)
    lock = RedisLock(client, ttl=10.0, wait_timeout=10.0)
    report = {"hold_loads": 0, "flight_loads": 0, "timeouts": 0}

    def loader(kind, r):
        # Keep the lock until every process has tried to take it, so they all contend.
        assert wait_until(lambda: int(client.get(f"tried:{kind}:{r}") or 0) >= processes, 10)
        client.rpush(f"loads:{kind}", r)
        client.set(f"value:{kind}:{r}", f"v{r}")
        return f"v{r}"

    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    assert sys.stdin.readline().strip() == "go"
    for r in range(rounds):
        client.incr(f"tried:hold:{r}")
        with lock.hold(f"hold:{r}"):
            if client.get(f"value:hold:{r}") is None:  # re-check inside the lock
                loader("hold", r)
                report["hold_loads"] += 1
        assert client.get(f"value:hold:{r}") == f"v{r}".encode()

        def lookup(r=r):
            data = client.get(f"value:flight:{r}")
            return None if data is None else Entry(data.decode())

        def load(r=r):
            report["flight_loads"] += 1
            return loader("flight", r)

        client.incr(f"tried:flight:{r}")
        assert lock.single_flight(f"flight:{r}", lookup, load) == f"v{r}"
    try:
        with lock.hold("stuck", wait_timeout=0.2):
            pass
    except LockTimeoutError:
        report["timeouts"] += 1
    sys.stdout.write(json.dumps(report) + "\\n")
    client.close()
    """
)


def test_processes_race_and_exactly_one_loads_per_round(
    redis_url: str, client: redis.Redis, tmp_path: t.Any
) -> None:
    rounds, processes = 5, 4
    holder = RedisLock(client)
    assert holder.acquire("stuck", ttl=60.0) is not None  # never released: waiters time out
    env = dict(os.environ, PYTHONPATH=REPO)
    children: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        for i in range(processes):
            log = stack.enter_context(open(tmp_path / f"child{i}.log", "wb"))
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, redis_url, str(rounds), str(processes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=REPO,
            )
            children.append(child)
            stack.callback(_reap, child)
        for child in children:  # every interpreter is up before any of them starts
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n", _log(tmp_path)
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            out, _ = child.communicate(timeout=30.0)
            assert child.returncode == 0, _log(tmp_path)
            reports.append(json.loads(out))

    for kind in ("hold", "flight"):
        loads = sorted(int(r) for r in client.lrange(f"loads:{kind}", 0, -1))
        assert loads == list(range(rounds)), kind  # one loader run per round, no more
    assert sum(r["hold_loads"] for r in reports) == rounds
    assert sum(r["flight_loads"] for r in reports) == rounds
    assert [r["timeouts"] for r in reports] == [1] * processes
    assert holder.locked("stuck")


def _reap(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()


def _log(tmp_path: t.Any) -> str:
    parts = []
    for name in sorted(os.listdir(tmp_path)):
        with open(os.path.join(tmp_path, name), "rb") as fh:
            parts.append(f"--- {name}\n" + fh.read().decode("utf-8", "replace")[-2000:])
    return "\n".join(parts)
