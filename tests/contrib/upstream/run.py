"""Run an upstream project's own test suite against tieredcache's integrations.

Usage (from the repository root, in an environment with tieredcache[test] installed)::

    python tests/contrib/upstream/run.py flask-caching --l2 redis
    python tests/contrib/upstream/run.py cachelib --l2 memcached
    python tests/contrib/upstream/run.py django-redis --variant sqlite --variant sqlite_json

The sdist of the installed version is downloaded with ``pip download --no-binary :all:``
and unpacked in a temporary directory. Only the configuration is adapted, by the fragments
next to this file: a conftest addition choosing tieredcache's backend and location (and,
for django-redis, each settings module's BACKEND and LOCATION), plus, for Flask-Caching and
cachelib, a test module that runs their shared test classes on tieredcache's backend, as
their own modules run them on each of their backends. Their assertions are untouched.
django-redis's settings modules (``tests/settings/sqlite*.py``) are its variants: Django reads
its settings once per process, so each variant runs in a pytest process of its own (upstream
runs them in separate xdist workers); all of them by default. Arguments after ``--`` go to
pytest. The exit status is pytest's (the worst of them, for several variants).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = pathlib.Path(__file__).resolve().parent

#: name -> (distribution, extra packages the suite imports, pytest arguments)
SUITES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "flask-caching": (
        "flask-caching",
        ("pytest-xprocess", "pytest-asyncio", "asgiref"),
        ("tests", "-o", "asyncio_default_fixture_loop_scope=function"),
    ),
    "cachelib": (
        "cachelib",
        ("pytest-xprocess",),
        ("tests/test_tieredcache_cachelib.py", "-p", "no:asyncio"),
    ),
    "django-redis": (
        "django-redis",
        ("pytest-mock", "pytest-xdist", "msgpack"),
        (
            "tests/test_backend.py",
            "tests/test_backend_sorted_sets.py",
            "-o",
            "addopts=",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",
        ),
    ),
}


def unpack(distribution: str, workdir: pathlib.Path) -> pathlib.Path:
    version = importlib.metadata.version(distribution)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
         "-d", str(workdir), f"{distribution}=={version}"],
        check=True,
    )  # fmt: skip
    (archive,) = workdir.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    (root,) = (p for p in workdir.iterdir() if p.is_dir())
    return root


def append(target: pathlib.Path, fragment: str) -> None:
    with target.open("a") as out:
        out.write("\n\n" + (HERE / fragment).read_text())


def adapt(name: str, root: pathlib.Path) -> None:
    tests = root / "tests"
    shutil.copy(HERE / "tc_upstream.py", tests / "tc_upstream.py")
    if name == "flask-caching":
        append(tests / "conftest.py", "flask_caching_conftest.py")
        shutil.copy(HERE / "flask_caching_suite.py", tests / "test_tieredcache_backend.py")
    elif name == "cachelib":
        append(tests / "conftest.py", "cachelib_conftest.py")
        shutil.copy(HERE / "cachelib_suite.py", tests / "test_tieredcache_cachelib.py")
    else:
        append(tests / "conftest.py", "django_redis_conftest.py")
        for settings in sorted((tests / "settings").glob("sqlite*.py")):
            append(settings, "django_redis_settings.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Arguments after -- go to pytest."
    )
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument(
        "--l2",
        choices=["redis", "memcached", "sqlite"],
        default="redis",
        help="the L2 of the backend under test (django-redis: always Redis)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="django-redis: a settings module to run (repeatable; default: all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the unpacked sdist")
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    distribution, extras, pytest_args = SUITES[args.suite]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extras], check=True)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"tc-{args.suite}-"))
    try:
        root = unpack(distribution, workdir)
        adapt(args.suite, root)
        env = {**os.environ, "TC_L2": args.l2}
        command = [sys.executable, "-m", "pytest", *pytest_args, *extra]
        if args.suite != "django-redis":
            return subprocess.run(command, cwd=root, env=env).returncode
        variants = args.variant or sorted(
            p.stem for p in (root / "tests/settings").glob("sqlite*.py")
        )
        worst = 0
        for variant in variants:
            print(f"== {variant}", flush=True)
            run = subprocess.run([*command, "-k", f"{variant}]"], cwd=root, env=env)
            worst = max(worst, run.returncode)
        return worst
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
