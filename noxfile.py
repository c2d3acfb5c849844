"""Sessions: tests (core-only and all extras), lint, typing, docs, bench, demo."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typing", "docs", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
TEST_TOOLS = ["pytest>=8", "pytest-asyncio>=0.24", "pytest-cov>=5", "hypothesis>=6.100"]
# Real servers and clients the tests drive; not part of any meshlib install.
TEST_PEERS = [
    "uvicorn>=0.30",
    "httptools>=0.6",
    "hypercorn>=0.16",
    "websockets>=14",
    "opentelemetry-instrumentation-httpx>=0.48b0",
    "opentelemetry-instrumentation-asgi>=0.48b0",
    "opentelemetry-instrumentation-grpc>=0.48b0",
    "starlette>=0.40",
    "fastapi>=0.110",
    "flask>=3",
    "h2>=4",
]
# Modules that the core must never import: the core-only run installs none of them.
EXTRA_MODULES = "grpc,prometheus_client,opentelemetry.sdk,typer,rich,spiffe"


@nox.session(python=PYTHON)
@nox.parametrize("install", ["core", "all"])
def tests(session: nox.Session, install: str) -> None:
    """Run the suite twice: a core-only install proves the core imports no extra."""
    target = "." if install == "core" else ".[all]"
    # Editable, so coverage maps to the sources in this tree.
    session.install("-e", target, *TEST_TOOLS, *TEST_PEERS)
    args = session.posargs or ["tests"]
    session.run(
        "pytest",
        "--cov-report=term-missing:skip-covered",
        "--cov=meshlib",
        "--cov-branch",
        *args,
        env={"MESHLIB_TEST_INSTALL": install, "MESHLIB_EXTRA_MODULES": EXTRA_MODULES},
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6", "import-linter>=2", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    session.install("mypy>=1.11", "types-PyYAML", ".[all]", "hypercorn>=0.16", *TEST_TOOLS)
    session.run("mypy", "meshlib", "tests/typing")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    session.install("mkdocs>=1.6", "mkdocs-material>=9")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", ".nox/site", env={"NO_MKDOCS_2_WARNING": "1"}
    )


OPT_IN_BENCHES = frozenset({"bench_cachegrind"})
"""Benches that take long (valgrind runs each client about 50 times slower): run when named."""


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Speed as ratios against bare httpx/grpc in the same run; never part of the tests."""
    session.install(".[all]", *TEST_PEERS)
    import pathlib

    scripts = sorted(pathlib.Path("bench").glob("bench_*.py"))
    for script in scripts:
        if session.posargs and script.stem not in session.posargs:
            continue
        if script.stem in OPT_IN_BENCHES and script.stem not in session.posargs:
            continue  # only when named: nox -s bench -- bench_cachegrind
        session.run("python", str(script))


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    session.install(".[all]")
    session.run("meshlib", "validate", "examples/")
    session.run("meshlib", "demo")
