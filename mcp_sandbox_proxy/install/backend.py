"""A backend that installs a server's package before starting the server.

It wraps the backend the server's policy names, so that the pool, the relay and
the restart logic see an ordinary backend: each start first asks the installer
for the recorded installation (installing it the first time), then starts the
installed program with the server's own arguments in the server's own sandbox.
"""

from __future__ import annotations

import dataclasses

from mcp_sandbox_proxy.install.installer import Installer
from mcp_sandbox_proxy.install.launchers import Launch
from mcp_sandbox_proxy.sandbox.backend import Backend, BackendCheck, SandboxProcess
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec


class InstallingBackend(Backend):
    """``inner``, starting the program that ``launch`` installs instead of the
    package runner."""

    def __init__(
        self, inner: Backend, installer: Installer, server: str, launch: Launch
    ) -> None:
        self.name = inner.name
        self._inner = inner
        self._installer = installer
        self._server = server
        self._launch = launch

    async def start(self, spec: SandboxSpec) -> SandboxProcess:
        installed = await self._installer.ensure(self._server, self._launch)
        program = dataclasses.replace(
            spec, command=installed.program, args=self._launch.args
        )
        return await self._inner.start(program)

    def checks(self) -> list[BackendCheck]:
        return self._inner.checks()
