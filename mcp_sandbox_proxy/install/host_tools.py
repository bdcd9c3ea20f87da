"""Asking the host's own package tools for their settings.

The install phase needs two answers from outside any sandbox: which registry npm
is set up to use, and where the host's Python interpreter really lives. Both
come from programs the user installed (npm itself, the Python interpreter), run
with fixed arguments that load no package code; every program that comes from a
registry runs sandboxed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from mcp_sandbox_proxy.exceptions import ConfigError

QUERY_TIMEOUT_S = 30.0


def host_program(name: str, environ: Mapping[str, str], why: str) -> Path:
    """The host path of ``name`` on ``environ``'s PATH; ``why`` explains the need."""
    found = shutil.which(name, path=environ.get("PATH", os.defpath))
    if found is None:
        raise ConfigError(f"{why}, and {name} is not on the PATH")

    return Path(found)


def ask(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The standard output of a host tool's settings query; ``ConfigError`` if it
    fails, with the last line it printed on stderr."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT_S,
            env=dict(environ),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {' '.join(argv)}: {exc}") from exc

    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise ConfigError(f"{' '.join(argv)} failed: {said[0]}")

    return done.stdout
