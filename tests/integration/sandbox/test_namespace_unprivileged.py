"""The namespace backend started by an unprivileged user, not root.

The proxy runs in a user namespace of the test's own where it is uid 1000, so it
takes the path of an ordinary user: no dropping of privileges, bubblewrap mapping
the sandbox onto the caller, and rlimits wherever no cgroup is writable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bwrap

REPO = Path(__file__).resolve().parents[3]
AS_USER_1000 = ["unshare", "--user", "--map-user=1000", "--map-group=1000", "--"]

PROXY_AS_USER = """
import anyio, json, os
from mcp_sandbox_proxy.sandbox.spec import Limits
from tests.support.sandbox_client import call, escape_session

async def main():
    limits = Limits(cpu_cores=None)
    async with escape_session("namespace", limits=limits) as (session, _):
        seen = await call(session, "identity")
        userns = await call(session, "unshare_userns")

    print("RESULT", json.dumps({"proxy_uid": os.geteuid(), **seen, "userns": userns}))

anyio.run(main)
"""


def test_an_unprivileged_proxy_gets_the_same_confinement() -> None:
    """Started by uid 1000: uid 65534 inside, no capabilities, seccomp, no userns."""
    done = subprocess.run(
        [*AS_USER_1000, sys.executable, "-c", PROXY_AS_USER],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
        check=True,
    )
    lines = [ln for ln in done.stdout.decode().splitlines() if ln.startswith("RESULT")]
    seen = json.loads(lines[-1].removeprefix("RESULT"))

    assert seen["proxy_uid"] == 1000 and seen["uid"] == 65534
    assert seen["CapEff"] == "0000000000000000" and seen["NoNewPrivs"] == "1"
    assert seen["Seccomp"] == "2" and seen["userns"]["error"] == "EPERM"
