"""The ``process`` backend: no isolation at all, a named opt-out.

It runs the server as a plain child of the proxy with the host's full rights. It
exists for development and tests, is chosen only by name, and warns at every start.
"""

from __future__ import annotations

import ctypes
import itertools
import shutil
import signal

import structlog

from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.sandbox._pipes import PipedProcess, spawn_piped
from mcp_sandbox_proxy.sandbox.backend import Backend, BackendCheck
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1
# The proxy's own symbols include libc's: ``find_library`` would run ldconfig
# in a child process at every start to find the same library.
_libc = ctypes.CDLL(None, use_errno=True)
_ids = itertools.count(1)


def die_with_parent() -> None:
    """In the forked child: be killed when the proxy dies, even by SIGKILL."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcessBackend(Backend):
    """Runs the command as a plain host process: no sandbox, full host rights."""

    name = "process"

    async def start(self, spec: SandboxSpec) -> PipedProcess:
        return self.start_now(spec)

    def start_now(self, spec: SandboxSpec) -> PipedProcess:
        log.warning(
            "unsandboxed_server_started",
            server=spec.name,
            risk="the process backend runs the server with all of your user's rights",
        )
        command = shutil.which(spec.command, path=spec.env.get("PATH"))
        if command is None:
            raise SandboxStartFailed(
                f"command {spec.command!r} of server {spec.name!r} was not found"
                " on the PATH given to the server"
            )

        popen = spawn_piped(
            [command, *spec.args], env=spec.env, cwd=spec.cwd, preexec=die_with_parent
        )
        return PipedProcess(
            popen, backend=self.name, sandbox_id=f"process-{popen.pid}-{next(_ids)}"
        )

    def checks(self) -> list[BackendCheck]:
        return [
            BackendCheck(
                "process backend",
                True,
                "always available; gives no isolation",
                required=False,
            )
        ]
