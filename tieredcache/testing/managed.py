"""The process handling shared by the throwaway servers of :mod:`tieredcache.testing.servers`:
:class:`ManagedServer` (start on a free loopback port, probe, stop, kill, pause, resume, all
by PID), its errors, :func:`free_port`, and the :mod:`atexit` hook that stops whatever is
still running. Only the standard library is imported.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import typing as t

__all__ = [
    "LOOPBACK",
    "ManagedServer",
    "PortInUseError",
    "ServerNotInstalledError",
    "ServerStartError",
    "free_port",
    "resp_command",
]

log = logging.getLogger("tieredcache.testing.servers")

LOOPBACK = "127.0.0.1"

_MAX_REPLY = 64 * 1024
_LOG_TAIL_CHARS = 2000
_PORT_IN_USE_MARKERS = ("address already in use", "eaddrinuse")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the caller binds it; :meth:`ManagedServer.start`
    retries with a new port when a port it chose itself turns out to be taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerStartError(RuntimeError):
    """A server process exited or stayed silent before it answered its first request."""


class ServerNotInstalledError(ServerStartError):
    """The server binary is not on ``PATH``; the message names the Debian package to install."""

    def __init__(self, binary: str, package: str) -> None:
        self.binary = binary
        self.package = package
        super().__init__(
            f"{binary!r} was not found on PATH; install it with "
            f"`apt-get install {package}` (Debian/Ubuntu)"
        )

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (type(self), (self.binary, self.package))


class PortInUseError(ServerStartError):
    """The chosen port was taken between :func:`free_port` and the server's bind."""


# -- registry of live servers, for the atexit hook -------------------------------------------

_registry_lock = threading.Lock()
_registry: dict[int, ManagedServer] = {}


def _register(server: ManagedServer) -> None:
    with _registry_lock:
        _registry[id(server)] = server


def _unregister(server: ManagedServer) -> None:
    with _registry_lock:
        _registry.pop(id(server), None)


def _stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    with _registry_lock:
        servers = list(_registry.values())
    pid = os.getpid()
    for server in servers:
        # A forked child inherits the registry but not the children: leave them to the parent.
        if server._owner_pid != pid:
            continue
        try:
            server.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            log.exception("could not stop %r at exit", server)


atexit.register(_stop_all)


# -- the common process handling -------------------------------------------------------------

_ServerT = t.TypeVar("_ServerT", bound="ManagedServer")


class ManagedServer:
    """A server process on a loopback port, driven by PID; subclasses say how to run and probe it.

    Not thread-safe: drive a server's life cycle from one thread, though the read-only
    properties and :meth:`ping` may be used from any thread.
    """

    #: Short name, used in temporary directory names and messages.
    kind: t.ClassVar[str] = "server"
    #: Debian package that provides :attr:`binary`.
    package: t.ClassVar[str] = ""
    #: Signal :meth:`stop` and :meth:`restart` send first; SIGKILL follows after the timeout.
    stop_signal: t.ClassVar[int] = signal.SIGTERM

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str,
        extra_args: t.Sequence[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.start_timeout = start_timeout
        self._port_chosen = port is None
        self._port = free_port() if port is None else port
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: str | None = None
        self._log_offset = 0
        self._paused = False
        self._started_once = False
        self._owner_pid = os.getpid()

    # -- what subclasses provide --

    def _command(self, executable: str, workdir: str) -> list[str]:
        raise NotImplementedError

    def _probe_request(self) -> bytes:
        raise NotImplementedError

    def _probe_ok(self, reply: bytes) -> bool:
        raise NotImplementedError

    #: A request whose reply names the server's PID, and the pattern that finds it.
    _pid_request: t.ClassVar[bytes] = b""
    _pid_pattern: t.ClassVar[re.Pattern[bytes]] = re.compile(rb"(?!)")

    # -- properties --

    @property
    def host(self) -> str:
        """Always ``"127.0.0.1"``."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The TCP port; it survives :meth:`restart`, and :meth:`kill` followed by :meth:`start`."""
        return self._port

    @property
    def pid(self) -> int:
        """PID of the current process.

        :raises RuntimeError: if the server was never started or has been stopped or killed.
        """
        if self._proc is None:
            raise RuntimeError(f"{self!r} has no process")
        return self._proc.pid

    @property
    def workdir(self) -> str | None:
        """Temporary directory with the log and Redis's working files; :meth:`stop` removes it."""
        return self._workdir

    @property
    def log_path(self) -> str | None:
        """Path of the file that receives the server's stdout and stderr."""
        return None if self._workdir is None else os.path.join(self._workdir, "server.log")

    # -- life cycle --

    def start(self) -> None:
        """Spawn the server and return once it answers a request.

        :raises ServerNotInstalledError: if :attr:`binary` is not on ``PATH``.
        :raises ServerStartError: if the process exits or does not answer within
            :attr:`start_timeout` seconds; the message ends with the tail of its log.
        :raises RuntimeError: if the server is already running.
        """
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        executable = shutil.which(self.binary)
        if executable is None:
            raise ServerNotInstalledError(self.binary, self.package)
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix=f"tieredcache-{self.kind}-")
        self._owner_pid = os.getpid()
        _register(self)
        # Only a port we picked ourselves may change, and only before the first start: a
        # restart must come back on the same port.
        attempts = 3 if self._port_chosen and not self._started_once else 1
        for attempt in range(attempts):
            try:
                self._spawn(executable, self._workdir)
                self._wait_ready()
            except PortInUseError:
                self._terminate()
                if attempt + 1 < attempts:
                    self._port = free_port()
                    continue
                self._after_failed_start()
                raise
            except BaseException:
                self._terminate()
                self._after_failed_start()
                raise
            break
        self._started_once = True
        log.debug("started %r", self)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (:attr:`stop_signal`, SIGKILL after *timeout* s) and remove its files.

        Idempotent. A paused server is resumed so that it can handle the SIGTERM.
        """
        self._terminate(timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        _unregister(self)

    def kill(self) -> None:
        """SIGKILL the server and reap it; the port and the files stay for :meth:`start`."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
        proc.wait()
        self._proc = None
        self._paused = False
        log.debug("killed %r", self)

    def restart(self, timeout: float = 5.0) -> None:
        """Stop the process gracefully and start a new one on the same port."""
        self._terminate(timeout)
        self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections are still accepted by the kernel but never answered.

        Returns once the process is stopped (a signal is delivered when the process is next
        scheduled, and until then it may still answer)."""
        proc = self._require_running()
        self._signal(proc, signal.SIGSTOP)
        _wait_for_state(proc.pid, stopped=True)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server; requests sent meanwhile are then answered."""
        proc = self._require_running()
        self._signal(proc, signal.SIGCONT)
        _wait_for_state(proc.pid, stopped=False)
        self._paused = False

    def is_running(self) -> bool:
        """Whether the process is alive (a paused server is running)."""
        return self._proc is not None and self._proc.poll() is None

    def is_paused(self) -> bool:
        """Whether :meth:`pause` was called without a :meth:`resume` since."""
        return self._paused and self.is_running()

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers its probe request within *timeout* seconds."""
        try:
            reply = self._request(self._probe_request(), timeout)
        except OSError:
            return False
        return self._probe_ok(reply)

    def answering_pid(self, timeout: float = 1.0) -> int | None:
        """PID of whatever server answers on :attr:`port`, or ``None`` if none answers."""

        def done(buf: bytes) -> bool:
            return self._pid_pattern.search(buf) is not None or any(
                marker in buf for marker in (b"END\r\n", b"ERROR", b"-ERR")
            )

        try:
            with socket.create_connection((self.host, self._port), timeout=timeout) as sock:
                sock.sendall(self._pid_request)
                reply = _recv_until(sock, done)
        except OSError:
            return None
        match = self._pid_pattern.search(reply)
        return int(match.group(1)) if match else None

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The last *chars* characters the current (or last) process wrote."""
        path = self.log_path
        if path is None:
            return ""
        try:
            with open(path, "rb") as fh:
                fh.seek(self._log_offset)
                data = fh.read()
        except OSError:
            return ""
        return data.decode("utf-8", "replace")[-chars:]

    def __enter__(self: _ServerT) -> _ServerT:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._proc is None:
            state = "stopped"
        elif not self.is_running():
            state = f"exited({self._proc.returncode})"
        else:
            state = f"pid={self._proc.pid}" + (" paused" if self._paused else "")
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    # -- internals --

    def _spawn(self, executable: str, workdir: str) -> None:
        log_path = os.path.join(workdir, "server.log")
        with open(log_path, "ab") as log_file:
            self._log_offset = log_file.tell()
            try:
                self._proc = subprocess.Popen(
                    self._command(executable, workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServerStartError(f"could not run {executable!r}: {exc}") from exc
        self._paused = False

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            returncode = proc.poll()
            if returncode is not None:
                tail = self.log_tail()
                cls = (
                    PortInUseError
                    if any(m in tail.lower() for m in _PORT_IN_USE_MARKERS)
                    else ServerStartError
                )
                raise cls(
                    f"{self.binary} on {self.host}:{self.port} exited with code {returncode} "
                    f"before answering; log tail:\n{tail}"
                )
            remaining = deadline - time.monotonic()
            # Ask for the PID, not just a PONG: if another server holds the port, ours is
            # about to fail its bind, and that server must not pass for ours.
            if self.answering_pid(timeout=max(0.05, min(0.5, remaining))) == proc.pid:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerStartError(
                    f"{self.binary} on {self.host}:{self.port} did not answer within "
                    f"{self.start_timeout:g}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    def _after_failed_start(self) -> None:
        # A first start that fails leaves nothing behind; a failed restart keeps the files so
        # that the log can be read, and stop() (or the atexit hook) removes them.
        if not self._started_once:
            self.stop()

    def _terminate(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, self.stop_signal)
            if self._paused:
                # A stopped process keeps SIGTERM pending until it runs again.
                self._signal(proc, signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%r still running %gs after SIGTERM; sending SIGKILL", self, timeout)
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        else:
            proc.wait()
        self._proc = None
        self._paused = False
        log.debug("stopped %s on port %d", self.kind, self._port)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
        # Popen has reaped nothing yet (returncode is None), so the PID is still ours even if
        # the process just exited: an unreaped child keeps its PID.
        if proc.returncode is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    def _require_running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        return proc

    def _request(self, payload: bytes, timeout: float) -> bytes:
        """Send *payload* on a new connection and return the first reply line."""
        with socket.create_connection((self.host, self._port), timeout=timeout) as sock:
            sock.sendall(payload)
            return _read_line(sock)


def _recv_until(sock: socket.socket, done: t.Callable[[bytes], bool]) -> bytes:
    buf = b""
    while not done(buf) and len(buf) <= _MAX_REPLY:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _read_line(sock: socket.socket) -> bytes:
    return _recv_until(sock, lambda buf: b"\n" in buf).split(b"\r\n", 1)[0]


def resp_command(*args: str) -> bytes:
    """One command in the Redis protocol (RESP), as a client sends it."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _wait_for_state(pid: int, *, stopped: bool, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` is stopped (or running again), as ``/proc`` reports it;
    where there is no ``/proc``, return at once."""
    path = f"/proc/{pid}/stat"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # gone, or no /proc: nothing to wait for
        if (state in ("T", "t")) == stopped:
            return
        time.sleep(0.001)  # polling the kernel's view; no event tells this process
    raise RuntimeError(f"process {pid} did not {'stop' if stopped else 'resume'} in {timeout}s")
