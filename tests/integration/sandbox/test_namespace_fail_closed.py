"""When the host cannot sandbox, the namespace backend refuses to start the server.

Each test builds a real host without some piece, in namespaces of its own (the
machine itself is not changed), and starts the escape server there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bwrap

REPO = Path(__file__).resolve().parents[3]

ATTEMPT = """
import anyio
from mcp_sandbox_proxy.exceptions import SandboxUnavailable
from mcp_sandbox_proxy.sandbox.namespace import NamespaceBackend
from tests.support.sandbox_client import escape_spec

async def main():
    try:
        process = await NamespaceBackend().start(escape_spec())
    except SandboxUnavailable as exc:
        print("UNAVAILABLE:", exc)
        return

    print("STARTED")
    await process.stop()

anyio.run(main)
"""


def attempt_in(wrapper: str) -> str:
    """Start the escape server inside ``wrapper`` (a shell line ending in ``"$@"``)."""
    done = subprocess.run(
        ["sh", "-c", wrapper, "sh", sys.executable, "-c", ATTEMPT],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.decode().splitlines() if line.strip()]
    assert lines, done.stderr.decode()
    return lines[-1]


def test_without_bubblewrap_the_server_is_not_started() -> None:
    """bwrap hidden (a non-executable file in its place): SandboxUnavailable."""
    hide = " ".join(
        f"mount --bind /dev/null {p} &&"
        for p in ("/usr/bin/bwrap", "/bin/bwrap")
        if Path(p).exists() and not Path(p).is_symlink()
    )
    wrapper = (
        f'unshare --user --map-root-user --mount -- sh -c \'{hide} exec "$@"\' sh "$@"'
    )
    outcome = attempt_in(wrapper)

    assert outcome.startswith("UNAVAILABLE:") and "bubblewrap" in outcome
    assert "apt install bubblewrap" in outcome


def test_without_user_namespaces_the_server_is_not_started() -> None:
    """No user namespace may be created: SandboxUnavailable, saying how to fix it."""
    inner = 'exec unshare --user --map-user=1000 --map-group=1000 -- "$@"'
    wrapper = (
        "unshare --user --map-root-user -- sh -c "
        f"'echo 1 > /proc/sys/user/max_user_namespaces && {inner}' sh \"$@\""
    )
    outcome = attempt_in(wrapper)

    assert outcome.startswith("UNAVAILABLE:") and "user namespaces" in outcome
    assert "max_user_namespaces" in outcome
