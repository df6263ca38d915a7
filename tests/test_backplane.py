"""RedisBackplane on a real Redis: delivery, origins, failures, reconnection, processes.

Every backplane here talks to a redis-server the test session (or the test itself) started;
nothing fakes Redis. Each test uses a channel of its own, so no message leaks between tests.

Sections: helpers, delivery, messages from elsewhere, failures and reconnection, life cycle,
latency, other processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import select
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
import uuid
import warnings

import pytest
import redis

from tieredcache import ConfigurationError
from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import TieredCache
from tieredcache.backplane import Backplane
from tieredcache.entry import next_version
from tieredcache.redis.backplane import RedisBackplane
from tieredcache.testing.clock import wait_until
from tieredcache.testing.servers import RedisServer

#: Seconds any bounded wait in this module may take before the test fails instead of hanging.
PATIENCE = 10.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# == helpers ===================================================================================


class Recorder:
    """Callbacks for :meth:`Backplane.subscribe` that record what they are given."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[str, list[str]]] = queue.Queue()
        self._lock = threading.Lock()
        self.resets = 0
        self.threads: set[str] = set()

    def on_invalidate(self, kind: str, keys: list[str]) -> None:
        self.threads.add(threading.current_thread().name)
        self.messages.put((kind, keys))

    def on_reset(self) -> None:
        with self._lock:
            self.resets += 1

    def next(self, timeout: float = PATIENCE) -> tuple[str, list[str]]:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s") from None

    def reset_count(self) -> int:
        with self._lock:
            return self.resets


@pytest.fixture
def stack() -> t.Iterator[contextlib.ExitStack]:
    """Everything a test opens goes on this stack and is closed in reverse order."""
    with contextlib.ExitStack() as resources:
        yield resources


@pytest.fixture
def channel() -> str:
    return f"tieredcache:test:{uuid.uuid4().hex}"


def open_backplane(
    stack: contextlib.ExitStack, url: str, channel: str, **options: t.Any
) -> RedisBackplane:
    return stack.enter_context(RedisBackplane.from_url(url, channel=channel, **options))


def subscribed(
    stack: contextlib.ExitStack, url: str, channel: str, **options: t.Any
) -> tuple[RedisBackplane, Recorder]:
    """A backplane whose subscription is active, and what it records."""
    backplane = open_backplane(stack, url, channel, **options)
    recorder = Recorder()
    backplane.subscribe(recorder.on_invalidate, recorder.on_reset)
    assert backplane.wait_connected(PATIENCE)
    return backplane, recorder


# == delivery ==================================================================================


def test_messages_reach_the_other_backplane_and_not_their_own(
    redis_url: str, stack: contextlib.ExitStack, channel: str
) -> None:
    a, seen_by_a = subscribed(stack, redis_url, channel, origin="a")
    b, seen_by_b = subscribed(stack, redis_url, channel, origin="b")

    a.publish("set", ["k1", "k2"], next_version())
    assert seen_by_b.next() == ("set", ["k1", "k2"])
    # Redis delivers in publish order, so once b's message reaches a, a has read its own.
    b.publish("delete", ["k3"], next_version())
    assert seen_by_a.next() == ("delete", ["k3"])
    assert seen_by_a.messages.empty() and seen_by_b.messages.empty()

    stats_a = a.stats()
    assert stats_a["origin"] == "a" and stats_a["channel"] == channel
    assert stats_a["published"] == 1 and stats_a["ignored_own"] == 1
    assert stats_a["delivered"] == 1 and stats_a["received"] == 2
    assert stats_a["connected"] and stats_a["subscribed"] and stats_a["errors"] == 0
    assert stats_a["last_message_at"] is not None
    assert seen_by_a.threads and all(
        n.startswith("tieredcache-backplane") for n in seen_by_a.threads
    )
    # The first subscription resets too: anything published before it took effect is missed.
    assert seen_by_a.reset_count() == 1 and seen_by_b.reset_count() == 1


def test_default_origins_differ_per_backplane(redis_url: str, stack: contextlib.ExitStack) -> None:
    a = open_backplane(stack, redis_url, "c")
    b = open_backplane(stack, redis_url, "c")
    assert a.origin != b.origin and len(a.origin) == 16


def test_every_kind_and_a_whole_batch_travel_as_one_message(
    redis_url: str, stack: contextlib.ExitStack, channel: str
) -> None:
    sender = open_backplane(stack, redis_url, channel)
    receiver, seen = subscribed(stack, redis_url, channel)
    batch = [f"key:{i}" for i in range(200)] + ["ünïcødé", "sp ace", "\udcff", ""]

    sender.publish("set", batch, 1)
    sender.publish("delete", ["d"], 2)
    sender.publish("touch", ("t1", "t2"), 3)
    sender.publish("clear", ["ignored"], 4)

    assert seen.next() == ("set", batch)
    assert seen.next() == ("delete", ["d"])
    assert seen.next() == ("touch", ["t1", "t2"])
    assert seen.next() == ("clear", [])
    assert receiver.stats()["received"] == 4  # one message per publish, however many keys


def test_publish_refuses_unknown_kinds_and_a_bare_string() -> None:
    # No server needed: the arguments are checked before anything is sent.
    with RedisBackplane.from_url("redis://127.0.0.1:1/0") as backplane:
        with pytest.raises(ConfigurationError):
            backplane.publish("expire", ["k"], 1)
        with pytest.raises(ConfigurationError):
            backplane.publish("set", "key", 1)


@pytest.mark.parametrize(
    "options",
    [
        {"channel": ""},
        {"reconnect_backoff": (0, 1)},
        {"reconnect_backoff": (2, 1)},
        {"reconnect_backoff": 1},
        {"health_interval": 0},
        {"close_timeout": -1},
        {"origin": ""},
    ],
    ids=repr,
)
def test_bad_options_are_refused(options: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisBackplane.from_url("redis://127.0.0.1:1/0", **options)


def test_the_base_class_is_the_documented_protocol() -> None:
    base = Backplane()
    with pytest.raises(NotImplementedError):
        base.publish("set", ["k"], 1)
    with pytest.raises(NotImplementedError):
        base.subscribe(lambda kind, keys: None, lambda: None)
    assert base.connected is False and base.wait_connected(0) is False
    with base:
        pass


# == messages from elsewhere ===================================================================


def test_malformed_messages_are_counted_and_unknown_kinds_evict_conservatively(
    redis_url: str, stack: contextlib.ExitStack, channel: str
) -> None:
    receiver, seen = subscribed(stack, redis_url, channel)
    with redis.Redis.from_url(redis_url) as client:
        for junk in (b"\xff\xfe", b"not json", b"[1, 2]", b'{"o": 1, "k": "set"}',
                     b'{"o": "x", "k": "set", "keys": [1]}'):  # fmt: skip
            client.publish(channel, junk)
        client.publish(channel, b'{"o":"x","k":"expire","v":1,"keys":["a"]}')
        client.publish(channel, b'{"o":"x","k":"flush","v":1,"keys":[]}')
        client.publish(channel, b'{"o":"x","k":"clear","v":1,"keys":["dropped"]}')

    assert seen.next() == ("delete", ["a"])
    assert seen.next() == ("clear", [])
    assert seen.next() == ("clear", [])
    stats = receiver.stats()
    assert stats["malformed"] == 5 and stats["delivered"] == 3 and stats["received"] == 8
    assert stats["errors"] == 5


def test_a_failing_callback_resets_instead(
    redis_url: str, stack: contextlib.ExitStack, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    sender = open_backplane(stack, redis_url, channel)
    receiver = open_backplane(stack, redis_url, channel)
    recorder = Recorder()
    calls = []

    def on_invalidate(kind: str, keys: list[str]) -> None:
        calls.append(keys)
        if keys == ["boom"]:
            raise RuntimeError("eviction failed")
        recorder.on_invalidate(kind, keys)

    receiver.subscribe(on_invalidate, recorder.on_reset)
    assert receiver.wait_connected(PATIENCE)
    with caplog.at_level(logging.WARNING, logger="tieredcache.backplane"):
        sender.publish("set", ["boom"], 1)
        sender.publish("set", ["fine"], 2)
        assert recorder.next() == ("set", ["fine"])
    assert calls == [["boom"], ["fine"]]
    assert recorder.reset_count() == 2  # the first subscription, then the failed eviction
    assert receiver.stats()["callback_errors"] == 1
    assert any("on_invalidate" in r.getMessage() for r in caplog.records)


def test_subscribe_twice_or_after_close_is_refused(redis_url: str, channel: str) -> None:
    recorder = Recorder()
    with RedisBackplane.from_url(redis_url, channel=channel) as backplane:
        with pytest.raises(ConfigurationError):
            backplane.subscribe("not callable", recorder.on_reset)  # type: ignore[arg-type]
        backplane.subscribe(recorder.on_invalidate, recorder.on_reset)
        with pytest.raises(ConfigurationError):
            backplane.subscribe(recorder.on_invalidate, recorder.on_reset)
    closed = RedisBackplane.from_url(redis_url, channel=channel)
    closed.close()
    with pytest.raises(ConfigurationError):
        closed.subscribe(recorder.on_invalidate, recorder.on_reset)


# == failures and reconnection =================================================================


def test_publish_while_redis_is_down_is_counted_not_raised(
    fresh_redis_server: RedisServer,
    stack: contextlib.ExitStack,
    channel: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backplane, seen = subscribed(stack, fresh_redis_server.url, channel)
    fresh_redis_server.kill()

    with caplog.at_level(logging.WARNING, logger="tieredcache.backplane"):
        for i in range(5):
            backplane.publish("set", [f"k{i}"], i)  # must not raise

    stats = backplane.stats()
    assert stats["publish_errors"] == 5 and stats["published"] == 0
    assert stats["errors"] >= 5
    # Logged once, not once per failure.
    published = [r for r in caplog.records if "publishing" in r.getMessage()]
    assert len(published) == 1
    # The subscriber saw the connection go and flushed at once.
    assert wait_until(lambda: seen.reset_count() >= 2, PATIENCE)
    assert not backplane.connected


def test_subscriber_reconnects_after_a_restart_and_resets_twice(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack, channel: str
) -> None:
    url = fresh_redis_server.url
    receiver, seen = subscribed(stack, url, channel, reconnect_backoff=(0.02, 0.2))
    sender = open_backplane(stack, url, channel)
    sender.publish("set", ["before"], 1)
    assert seen.next() == ("set", ["before"])
    assert seen.reset_count() == 1

    fresh_redis_server.restart()

    # One reset when the connection broke, one once subscribed again.
    assert wait_until(lambda: seen.reset_count() >= 3 and receiver.connected, PATIENCE)
    assert receiver.stats()["reconnects"] == 1
    assert receiver.stats()["connection_errors"] >= 1
    sender.publish("delete", ["after"], 2)  # the sender's pool reconnects by itself
    assert seen.next() == ("delete", ["after"])


def test_a_silent_connection_is_detected_by_the_health_check(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack, channel: str
) -> None:
    receiver, seen = subscribed(
        stack,
        fresh_redis_server.url,
        channel,
        health_interval=0.1,
        reconnect_backoff=(0.02, 0.1),
        socket_timeout=0.5,
    )
    fresh_redis_server.pause()  # the connection stays open; nothing is answered
    try:
        assert wait_until(lambda: seen.reset_count() >= 2, PATIENCE)
        assert not receiver.connected
    finally:
        fresh_redis_server.resume()
    assert wait_until(lambda: receiver.connected, PATIENCE)
    assert seen.reset_count() >= 3


# == life cycle ================================================================================


def test_close_joins_promptly_while_disconnected(
    fresh_redis_server: RedisServer, channel: str
) -> None:
    backplane = RedisBackplane.from_url(
        fresh_redis_server.url, channel=channel, reconnect_backoff=(5.0, 5.0)
    )
    recorder = Recorder()
    backplane.subscribe(recorder.on_invalidate, recorder.on_reset)
    assert backplane.wait_connected(PATIENCE)
    thread = backplane._thread
    assert thread is not None and thread.name.startswith("tieredcache-backplane")
    assert not thread.daemon

    fresh_redis_server.kill()
    assert wait_until(lambda: not backplane.connected, PATIENCE)  # now in a 5 s backoff
    started = time.monotonic()
    backplane.close()
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()

    backplane.close()  # idempotent
    backplane.publish("set", ["k"], 1)  # dropped, not raised
    assert backplane.stats()["dropped"] == 1 and backplane.stats()["closed"]


def test_close_joins_promptly_when_never_connected(channel: str) -> None:
    from tieredcache.testing.servers import free_port

    backplane = RedisBackplane.from_url(f"redis://127.0.0.1:{free_port()}/0", channel=channel)
    recorder = Recorder()
    backplane.subscribe(recorder.on_invalidate, recorder.on_reset)
    assert wait_until(lambda: backplane.stats()["connection_errors"] >= 1, PATIENCE)
    started = time.monotonic()
    backplane.close()
    assert time.monotonic() - started < 1.0
    assert recorder.reset_count() == 0  # never subscribed, so nothing was ever missed


EXITS_WITHOUT_CLOSE = textwrap.dedent(
    """
    import sys
    from tieredcache.redis.backplane import RedisBackplane

    url, dead_url = sys.argv[1], sys.argv[2]
    live = RedisBackplane.from_url(url)
    live.subscribe(lambda kind, keys: None, lambda: None)
    assert live.wait_connected(10)
    # Never connects, and sleeps 30 s between attempts: exit must not wait for it.
    dead = RedisBackplane.from_url(dead_url, reconnect_backoff=(30.0, 30.0))
    dead.subscribe(lambda kind, keys: None, lambda: None)
    print("subscribed", flush=True)
    """
)


def test_the_interpreter_exits_without_close(redis_url: str) -> None:
    from tieredcache.testing.servers import free_port

    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXITS_WITHOUT_CLOSE, redis_url, dead_url],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=REPO),
        cwd=REPO,
        timeout=PATIENCE * 2,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"subscribed\n"
    assert time.monotonic() - started < PATIENCE


# == latency ===================================================================================


def measure_latency(url: str, channel: str, rounds: int = 500) -> tuple[float, float]:
    """p50 and p99, in ms, from ``publish()`` to the end of ``on_invalidate`` elsewhere."""
    done = threading.Event()
    arrived: list[float] = []

    def on_invalidate(kind: str, keys: list[str]) -> None:
        arrived.append(time.perf_counter())
        done.set()

    with (
        RedisBackplane.from_url(url, channel=channel) as sender,
        RedisBackplane.from_url(url, channel=channel) as receiver,
    ):
        receiver.subscribe(on_invalidate, lambda: None)
        assert receiver.wait_connected(PATIENCE)
        latencies = []
        for i in range(rounds):
            done.clear()
            started = time.perf_counter()
            sender.publish("set", [f"k{i}"], i)
            assert done.wait(PATIENCE)
            latencies.append((arrived[-1] - started) * 1000.0)
    cuts = statistics.quantiles(latencies, n=100)
    return statistics.median(latencies), cuts[98]


def test_invalidation_latency_on_loopback(redis_url: str, channel: str) -> None:
    p50, p99 = measure_latency(redis_url, channel)
    print(f"\nbackplane latency, one process: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    assert p50 < 50.0 and p99 < 500.0  # loose: a loaded CI machine must not fail this


# == other processes ===========================================================================

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from tieredcache import MemoryBackend, RedisBackend, TieredCache
    from tieredcache.redis.backplane import RedisBackplane
    from tieredcache.testing.clock import wait_until

    url, channel = sys.argv[1], sys.argv[2]
    cache = TieredCache(MemoryBackend(), RedisBackend.from_url(url, prefix="bp:"))
    evicted_at = {}

    def on_invalidate(kind, keys):
        if kind == "clear":
            cache.l1.clear()
        else:
            cache.l1.delete_many(keys)
        now = time.time()
        for key in keys or ["*"]:
            evicted_at[key] = now

    backplane = RedisBackplane.from_url(url, channel=channel)
    backplane.subscribe(on_invalidate, cache.l1.clear)
    assert backplane.wait_connected(10)

    def reply(**fields):
        sys.stdout.write(json.dumps(fields) + "\\n")
        sys.stdout.flush()

    reply(ready=True, origin=backplane.origin)
    for line in sys.stdin:
        request = json.loads(line)
        op, key = request["op"], request.get("key")
        if op == "get":
            reply(value=cache.get(key))
        elif op == "l1":
            reply(value=cache.l1.get(key), evicted_at=evicted_at.get(key))
        elif op == "wait":
            wait_until(lambda: key in evicted_at, 5.0)
            reply(evicted_at=evicted_at.get(key))
        elif op == "quit":
            break
    reply(stats=backplane.stats())
    backplane.close()
    cache.close()
    """
)


class Child:
    """A Python process running :data:`CHILD`, driven by JSON lines with bounded waits."""

    def __init__(self, url: str, channel: str, log_path: str) -> None:
        env = dict(os.environ, PYTHONPATH=REPO)
        self.log_path = log_path
        with open(log_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, url, channel],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=REPO,
            )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="test-child-reader")
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def receive(self, timeout: float = PATIENCE) -> dict[str, t.Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"the child said nothing within {timeout} s; its log:\n{self.log()}"
            ) from None
        assert line, f"the child exited; its log:\n{self.log()}"
        reply: dict[str, t.Any] = json.loads(line)
        return reply

    def ask(self, op: str, key: str | None = None) -> dict[str, t.Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "key": key}).encode() + b"\n")
        self.proc.stdin.flush()
        return self.receive()

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")[-3000:]

    def quit(self) -> dict[str, t.Any]:
        """Stop the child; its backplane's stats."""
        stats: dict[str, t.Any] = self.ask("quit")["stats"]
        self.close()
        return stats

    def close(self) -> None:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()  # EOF ends the child's loop if it is still reading
            try:
                self.proc.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            self.reader.join(PATIENCE)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()


def test_other_processes_stop_serving_old_values(
    redis_url: str, stack: contextlib.ExitStack, channel: str, tmp_path: t.Any
) -> None:
    children = [Child(redis_url, channel, str(tmp_path / f"child{i}.log")) for i in range(2)]
    for child in children:
        stack.callback(child.close)
    origins = {child.receive(30.0)["origin"] for child in children}
    cache = stack.enter_context(
        TieredCache(MemoryBackend(), RedisBackend.from_url(redis_url, prefix="bp:"))
    )
    backplane = open_backplane(stack, redis_url, channel)
    assert len(origins | {backplane.origin}) == 3

    def publish_after(write: t.Callable[[], object], kind: str, keys: list[str]) -> float:
        started = time.time()
        write()
        backplane.publish(kind, keys, next_version())
        return started

    def assert_evicted(key: str, old: t.Any, started: float) -> list[float]:
        latencies = []
        for child in children:
            assert wait_until(
                functools.partial(lambda c, k: c.ask("l1", k)["value"] != old, child, key), 5.0
            )
            evicted_at = child.ask("l1", key)["evicted_at"]
            latencies.append((evicted_at - started) * 1000.0)
        return latencies

    latencies: list[float] = []
    cache.set("k", "v1", ttl=60)
    for child in children:
        assert child.ask("get", "k")["value"] == "v1"
        assert child.ask("l1", "k")["value"] == "v1"  # now served from the child's L1

    started = publish_after(lambda: cache.set("k", "v2", ttl=60), "set", ["k"])
    latencies += assert_evicted("k", "v1", started)
    for child in children:
        assert child.ask("get", "k")["value"] == "v2"

    started = publish_after(lambda: cache.delete("k"), "delete", ["k"])
    latencies += assert_evicted("k", "v2", started)
    for child in children:
        assert child.ask("get", "k")["value"] is None

    cache.set_many({"a": 1, "b": 2}, ttl=60)
    for child in children:
        assert child.ask("get", "a")["value"] == 1 and child.ask("get", "b")["value"] == 2
    started = publish_after(cache.clear, "clear", [])
    for child in children:
        assert wait_until(
            functools.partial(lambda c: c.ask("l1", "a")["value"] is None, child), 5.0
        )
        assert child.ask("l1", "b")["value"] is None

    # Publish-to-eviction latency in the other processes, one message at a time.
    samples = []
    for i in range(150):
        started = time.time()
        backplane.publish("set", [f"lat{i}"], next_version())
        for child in children:
            samples.append((child.ask("wait", f"lat{i}")["evicted_at"] - started) * 1000.0)
    cuts = statistics.quantiles(samples, n=100)
    print(
        f"\nbackplane across processes: write start to eviction, max {max(latencies):.2f} ms; "
        f"publish to eviction ({len(samples)} samples) p50 {statistics.median(samples):.3f} ms, "
        f"p99 {cuts[98]:.3f} ms"
    )
    assert max(latencies) < 5000.0 and max(samples) < 5000.0
    for child in children:
        stats = child.quit()
        assert stats["delivered"] == 3 + 150 and stats["ignored_own"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_new_origin_and_its_own_subscriber(
    redis_url: str, stack: contextlib.ExitStack, channel: str
) -> None:
    parent, seen = subscribed(stack, redis_url, channel)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks; that is the case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            connected = parent.wait_connected(PATIENCE)
            thread = parent._thread
            parent.publish("set", ["from-child"], 1)
            report = {
                "origin": parent.origin,
                "connected": connected,
                "own_thread": thread is not None and thread.is_alive(),
                "published": parent.stats()["published"],
            }
            os.write(write_end, json.dumps(report).encode())
            parent.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 30.0)
        assert ready, "the forked child did not report"
        report = json.loads(os.read(read_end, 65536))
    finally:
        os.close(read_end)
        assert wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, PATIENCE)

    assert report == {
        "origin": report["origin"],
        "connected": True,
        "own_thread": True,
        "published": 1,
    }
    assert report["origin"] != parent.origin
    # The parent's subscriber hears the child: a different origin, so not its own.
    assert seen.next() == ("set", ["from-child"])


def test_the_old_import_paths_still_give_the_redis_backplane() -> None:
    import tieredcache
    from tieredcache import backplane
    from tieredcache.backplane import RedisBackplane as old
    from tieredcache.cluster_tracking import TrackingConnectionPool
    from tieredcache.redis.pubsub import PrivateConnectionPool

    assert old is RedisBackplane is backplane.RedisBackplane is tieredcache.RedisBackplane
    assert TrackingConnectionPool is PrivateConnectionPool
    with pytest.raises(AttributeError):
        backplane.NoSuchName  # noqa: B018
