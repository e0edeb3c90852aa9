"""What produced a result: package versions, git commit, JAX backend, Python and host.

``experiments.common.write_metrics`` records :func:`provenance` in every ``metrics.json``;
``python -m experiments reproduce`` prints it in the report's header (:func:`describe_commit`).
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import platform
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

#: The packages whose versions ``metrics.json`` records.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "scipy",
    "scikit-image",
)
#: The repository this package lives in (its git commit is recorded).
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (``'not installed'`` when absent)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_state(root: str | pathlib.Path = REPO_ROOT) -> dict[str, Any]:
    """``{'commit': sha, 'dirty': bool}`` of the checkout at ``root``; ``'unknown'`` (and
    ``dirty`` None) outside a git checkout or without git. Never raises.

    Dirty means tracked files differ from the commit (untracked files do not count).
    """

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def backend() -> dict[str, Any]:
    """JAX's default backend and its devices (kinds and count)."""
    import jax

    devices = jax.devices()
    return {
        "name": jax.default_backend(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "device_count": len(devices),
    }


def provenance() -> dict[str, Any]:
    """What produced a result: package versions, git commit, backend, Python and host."""
    return {
        "versions": package_versions(),
        "git": git_state(),
        "backend": backend(),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def describe_commit(git: Mapping[str, Any]) -> str:
    """``'1a2b3c4d5e6f (dirty)'``, ``'1a2b3c4d5e6f'`` or ``'unknown'``."""
    if git.get("commit", "unknown") == "unknown":
        return "unknown"
    return git["commit"][:12] + (" (dirty)" if git.get("dirty") else "")
