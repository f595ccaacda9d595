"""Developer sessions: nox -s tests | lint | typecheck | docs | openvino_peer."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

# Install torch on its own first: a bare `torch` requirement would pull the CUDA wheels.
TORCH = "torch==2.13.0"


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, exactly as the README and CI run it."""
    _install(session)
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "sdopt", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "sdopt", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package."""
    _install(session)
    session.run("mypy", "sdopt")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (strict: broken links fail)."""
    _install(session, "docs")
    session.run("mkdocs", "build", "--strict")


@nox.session
def openvino_peer(session: nox.Session) -> None:
    """Time the OpenVINO peer on the random-weight SD1.5 architecture (benchmarks/README.md).

    The pipeline is written by sdopt's own environment (same weights as `sdopt bench --arch sd15`);
    optimum-intel, which pins its own diffusers/transformers, runs in this session's virtualenv.
    """
    import tempfile

    directory = tempfile.mkdtemp(prefix="sdopt-sd15-")
    session.run("python", "benchmarks/openvino_peer.py", "save", directory, external=True)
    session.install(TORCH)
    session.install("optimum-intel[openvino,diffusers]")
    session.run("python", "benchmarks/openvino_peer.py", "run", directory, *session.posargs)
