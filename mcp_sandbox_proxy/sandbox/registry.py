"""Backends by name, each created once and on first use."""

from __future__ import annotations

from mcp_sandbox_proxy.sandbox.backend import Backend

BACKEND_NAMES = ("namespace", "docker", "process")


class Backends:
    """The backends one proxy uses, created lazily so unused ones cost nothing."""

    def __init__(self, *, instance: str) -> None:
        self._instance = instance
        self._made: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        backend = self._made.get(name)
        if backend is None:
            backend = self._made[name] = self._make(name)

        return backend

    def _make(self, name: str) -> Backend:
        if name == "namespace":
            from mcp_sandbox_proxy.sandbox.namespace import NamespaceBackend

            return NamespaceBackend()

        if name == "docker":
            from mcp_sandbox_proxy.sandbox.docker import DockerBackend

            return DockerBackend(instance=self._instance)

        if name == "process":
            from mcp_sandbox_proxy.sandbox.process import ProcessBackend

            return ProcessBackend()

        raise ValueError(f"unknown backend {name!r}; expected one of {BACKEND_NAMES}")

    async def aclose(self) -> None:
        for backend in self._made.values():
            await backend.aclose()
