"""Developer sessions: nox -s tests | lint | typecheck | docs | openvino_peer."""

from __future__ import annotations

from pathlib import Path

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
    """The quick test selection, as the README's first command runs it (`nox -s tests -- -m "slow or not slow"`:
    everything, as CI runs it)."""
    _install(session)
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "sdopt", "tests", "examples", "benchmarks", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "sdopt", "tests", "examples", "benchmarks", "tools", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package."""
    _install(session)
    session.run("mypy", "sdopt")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (strict: broken links fail)."""
    _install(session, "docs")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def openvino_peer(session: nox.Session) -> None:
    """sdopt's tiers and the OpenVINO peer on the random-weight SD1.5 architecture, interleaved in
    one bench run (benchmarks/README.md).

    optimum-intel pins its own diffusers/transformers, so it lives in this session's virtualenv,
    where `benchmarks/openvino_peer.py` runs its workers; the bench itself runs in the environment
    nox runs in, which must have sdopt installed (`pip install -e ".[bench]"`).
    """
    import sys

    # optimum-intel requires torchvision; left free it pulls the newest (CUDA) torch into this env,
    # and PyPI's build for torch 2.13 is a CUDA one that breaks on the CPU torch ("torchvision::nms
    # does not exist"). Pin it so the resolver keeps torch, then remove it: transformers' image
    # processors fall back to PIL, and an SD pipeline does not use them.
    session.install(TORCH, "torchvision==0.28.0", "optimum-intel[openvino,diffusers]")
    session.run("python", "-m", "pip", "uninstall", "--yes", "torchvision")
    peer_python = str(Path(session.virtualenv.location) / "bin" / "python")
    script = "benchmarks/openvino_peer.py"
    session.run(sys.executable, script, "compare", "--peer-python", peer_python, *session.posargs, external=True)
