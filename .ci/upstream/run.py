"""Run an upstream project's own test suite against tieredcache's integrations.

Usage (from the repository root, in an environment with tieredcache[test] installed)::

    python .ci/upstream/run.py flask-caching --l2 redis
    python .ci/upstream/run.py cachelib --l2 memcached
    python .ci/upstream/run.py django-redis --variant sqlite --variant sqlite_json

The suite runs in a virtualenv made for it in a temporary directory, which sees this
environment's packages (tieredcache among them) and adds the few test plugins the suite
needs, so that those plugins never enter this environment. The sdist of the installed
version is downloaded with ``pip download --no-binary :all:``
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
import sysconfig
import tarfile
import tempfile
import venv

HERE = pathlib.Path(__file__).resolve().parent

#: Versions of the projects that tieredcache[test] does not install.
DEFAULT_VERSIONS = {"django-redis": "7.0.0"}

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


def version_of(distribution: str) -> str:
    """The installed version, or the default for a project tieredcache[test] lacks."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return DEFAULT_VERSIONS[distribution]


def unpack(distribution: str, version: str, workdir: pathlib.Path) -> pathlib.Path:
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


def make_venv(workdir: pathlib.Path, extras: tuple[str, ...]) -> str:
    """A virtualenv that sees this environment's packages, plus ``extras``; its python."""
    home = workdir / "venv"
    venv.create(home, with_pip=True)
    python = str(home / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # addsitedir also runs this environment's .pth files (an editable tieredcache's, too).
    parent = sysconfig.get_paths()["purelib"]
    pathlib.Path(purelib, "zz-parent-env.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n"
    )
    subprocess.run([python, "-m", "pip", "install", "-q", *extras], check=True)
    return python


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
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"tc-{args.suite}-"))
    try:
        version = version_of(distribution)
        python = make_venv(workdir, (*extras, f"{distribution}=={version}"))
        root = unpack(distribution, version, workdir / "src")
        adapt(args.suite, root)
        env = {**os.environ, "TC_L2": args.l2}
        command = [python, "-m", "pytest", *pytest_args, *extra]
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
