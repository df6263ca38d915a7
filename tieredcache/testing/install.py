"""Install ``redis-server`` and ``memcached`` with apt-get when they are missing.

The test suite starts its own servers (:mod:`tieredcache.testing.servers`), so it needs the two
binaries, not running services. On a Debian or Ubuntu machine where the session runs as root,
:func:`ensure_installed` installs the missing packages once (``apt-get update`` first), under a
file lock so that parallel sessions do not run apt-get together, and stops the system services
the packages start. Anywhere else it installs nothing and says why::

    result = ensure_installed(["redis-server", "memcached"])
    if result.missing:
        print(f"not installed: {', '.join(result.missing)} ({result.reason})")

Setting ``TIEREDCACHE_NO_INSTALL=1`` turns the installer off. Only the standard library is
imported; the installer needs a POSIX system (``fcntl``, ``os.geteuid``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import typing as t

__all__ = [
    "NO_INSTALL_ENV",
    "PACKAGES",
    "InstallResult",
    "cannot_install_reason",
    "ensure_installed",
    "missing_binaries",
]

#: Set to a non-empty value other than ``0`` to never install anything.
NO_INSTALL_ENV = "TIEREDCACHE_NO_INSTALL"

#: The Debian package that provides each binary, and the service it starts once installed.
PACKAGES: t.Mapping[str, str] = {"redis-server": "redis-server", "memcached": "memcached"}

#: Seconds apt-get may wait for the dpkg lock another program holds, and may run.
_APT_LOCK_TIMEOUT = 600
_APT_TIMEOUT = 1200


@dataclasses.dataclass(frozen=True)
class InstallResult:
    """What :func:`ensure_installed` found and did.

    :ivar missing: the binaries still not on ``PATH``.
    :ivar installed: the packages this call installed.
    :ivar reason: why the missing binaries were not installed; empty when nothing is missing.
    """

    missing: tuple[str, ...]
    installed: tuple[str, ...] = ()
    reason: str = ""


def missing_binaries(binaries: t.Iterable[str]) -> list[str]:
    """The *binaries* that are not on ``PATH``, in order."""
    return [binary for binary in binaries if shutil.which(binary) is None]


def _disabled(env: t.Mapping[str, str]) -> bool:
    return env.get(NO_INSTALL_ENV, "").strip() not in ("", "0")


def cannot_install_reason(env: t.Mapping[str, str] | None = None) -> str:
    """Why :func:`ensure_installed` would install nothing here, or ``""`` if it would install.

    :param env: the environment to read; :data:`os.environ` by default.
    """
    env = os.environ if env is None else env
    if _disabled(env):
        return f"{NO_INSTALL_ENV} is set"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "installing them needs root"
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    return ""


@contextlib.contextmanager
def _file_lock(path: str) -> t.Iterator[None]:
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apt_get(apt_get: str, args: list[str], log: t.IO[str]) -> int:
    command = [apt_get, "-q", "-o", f"DPkg::Lock::Timeout={_APT_LOCK_TIMEOUT}", *args]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    try:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            timeout=_APT_TIMEOUT,
            check=False,
        ).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.write(f"{exc}\n")
        return -1


def _stop_services(services: t.Iterable[str], log: t.IO[str]) -> None:
    # The packages start their system services; the tests start servers of their own on free
    # ports, so the services would only hold the default ports and memory.
    systemctl = shutil.which("systemctl") if os.path.isdir("/run/systemd/system") else None
    service_tool = shutil.which("service")
    for service in services:
        if systemctl:
            command = [systemctl, "stop", service]
        elif service_tool:
            command = [service_tool, service, "stop"]
        else:
            continue
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.write(f"{exc}\n")


def ensure_installed(
    binaries: t.Iterable[str] = tuple(PACKAGES),
    *,
    log_path: str | None = None,
    lock_path: str | None = None,
    env: t.Mapping[str, str] | None = None,
) -> InstallResult:
    """Install the packages of whichever *binaries* are missing, if this process can.

    It can when it runs as root, ``apt-get`` is on ``PATH`` and ``TIEREDCACHE_NO_INSTALL``
    is not set. It then holds an exclusive lock on *lock_path* while it looks again (another
    process may have installed them meanwhile), runs ``apt-get update`` and ``apt-get install
    -y``, and stops the services the packages started.

    :param binaries: names from :data:`PACKAGES`.
    :param log_path: where apt-get's output goes; a file in the temporary directory by default.
    :param lock_path: the lock file; one in the temporary directory by default.
    :param env: the environment to read ``TIEREDCACHE_NO_INSTALL`` from; :data:`os.environ` by
        default. The tools are looked up on, and run with, this process's ``PATH``.
    :raises KeyError: for a binary :data:`PACKAGES` does not know.
    """
    env = os.environ if env is None else env
    wanted = list(binaries)
    packages = {binary: PACKAGES[binary] for binary in wanted}
    missing = missing_binaries(wanted)
    if not missing:
        return InstallResult(())
    reason = cannot_install_reason(env)
    if reason:
        return InstallResult(tuple(missing), reason=reason)
    tmp = tempfile.gettempdir()
    log_path = log_path or os.path.join(tmp, "tieredcache-apt.log")
    with _file_lock(lock_path or os.path.join(tmp, "tieredcache-install.lock")):
        missing = missing_binaries(wanted)
        if not missing:
            return InstallResult(())
        to_install = sorted({packages[binary] for binary in missing})
        with open(log_path, "a", encoding="utf-8") as log:
            apt_get = shutil.which("apt-get") or "apt-get"
            code = _apt_get(apt_get, ["update"], log)
            if code == 0:
                install = ["install", "-y", "--no-install-recommends", *to_install]
                code = _apt_get(apt_get, install, log)
            if code == 0:
                _stop_services(to_install, log)
    missing = missing_binaries(wanted)
    if not missing:
        return InstallResult((), installed=tuple(to_install))
    step = "apt-get failed" if code != 0 else "apt-get did not provide them"
    return InstallResult(tuple(missing), reason=f"{step}; see {log_path}")
