"""What the proxy sets up before its event loop runs, servers started first.

A server's own start (an interpreter and its imports) takes tens of
milliseconds, and so does the rest of the proxy's start once its configuration
is loaded: the gateway's imports and the event loop. The servers are therefore
started first, on the thread that goes on to run the loop, and the two overlap:
the client's ``initialize`` is answered that much sooner. Only a backend that
can start a server at once takes part (``Backend.start_now``: the process and
namespace backends), and only an instance that needs nothing from the loop
before it starts: no egress filter, no package install. Everything else starts
in the loop as before. This module is kept light: the gateway's own modules
are imported after it has done its work.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from mcp_sandbox_proxy.config import ProxyConfig
from mcp_sandbox_proxy.exceptions import SandboxError
from mcp_sandbox_proxy.install.launchers import Launch
from mcp_sandbox_proxy.install.servers import Instance, server_launches
from mcp_sandbox_proxy.policy import PolicySet
from mcp_sandbox_proxy.sandbox.backend import Backend, BackendCheck, SandboxProcess
from mcp_sandbox_proxy.sandbox.registry import Backends
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

log = structlog.get_logger(__name__)

Key = tuple[str, str]


def sandbox_specs(policies: PolicySet, servers: Iterable[str]) -> list[Instance]:
    """Every instance to run: its (server, profile) key, spec and policy.
    Built before anything starts, so that a missing variable or secret stops the
    proxy with its error instead of leaving some servers running."""
    instances: list[Instance] = []
    for name in servers:
        server = policies.expanded_server(name)
        for policy in policies.profiles(name):
            spec = policy.sandbox_spec(name, server, os.environ)
            instances.append(((name, policy.profile), spec, policy))

    return instances


@dataclass
class Startup:
    """One proxy's instances and backends, and the servers started early."""

    instance: str
    backends: Backends
    instances: list[Instance]
    launches: dict[str, Launch]
    head_start: HeadStart

    @classmethod
    def begin(cls, config: ProxyConfig, policies: PolicySet) -> Startup:
        """Check every instance, then start those that can start now."""
        instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        backends = Backends(instance=instance)
        instances = sandbox_specs(policies, config.enabled_servers())
        launches = server_launches(config, instances)
        head_start = HeadStart()
        for key, spec, policy in instances:
            if key[0] not in launches and spec.network.mode != "egress":
                head_start.start(key, spec, backends.get(policy.backend))

        return cls(instance, backends, instances, launches, head_start)


class HeadStart:
    """Servers started before the loop, each handed to its instance's first start.

    Those the pool never takes over, because the proxy stopped first, are stopped
    by ``aclose``; a proxy that dies takes them with it, as both backends that
    start early give their servers the parent-death signal.
    """

    def __init__(self) -> None:
        self._outcomes: dict[Key, SandboxProcess | SandboxError] = {}

    def start(self, key: Key, spec: SandboxSpec, backend: Backend) -> None:
        """Start ``spec`` now if ``backend`` can. A refusal is kept for the
        instance's first start to report, as if it had happened there."""
        try:
            process = backend.start_now(spec)
        except SandboxError as exc:
            self._outcomes[key] = exc
        except Exception:
            # A bug here must not stop the proxy: the loop starts it as usual.
            log.exception("head_start_failed", server=key[0], profile=key[1])
        else:
            if process is not None:
                self._outcomes[key] = process

    def backend_for(self, key: Key, backend: Backend) -> Backend:
        """``backend``, or one whose first start hands over the early start."""
        outcome = self._outcomes.pop(key, None)
        return backend if outcome is None else _Adopting(backend, outcome)

    async def aclose(self) -> None:
        """Stop the servers no instance took over: the proxy stopped first."""
        outcomes, self._outcomes = self._outcomes, {}
        for outcome in outcomes.values():
            if isinstance(outcome, SandboxProcess):
                await outcome.stop()
                outcome.close()


class _Adopting(Backend):
    """A backend whose first start returns what was started early."""

    def __init__(self, backend: Backend, outcome: SandboxProcess | SandboxError):
        self.name = backend.name
        self._backend = backend
        self._outcome: SandboxProcess | SandboxError | None = outcome

    async def start(self, spec: SandboxSpec) -> SandboxProcess:
        outcome, self._outcome = self._outcome, None
        if outcome is None:
            return await self._backend.start(spec)

        if isinstance(outcome, SandboxError):
            raise outcome

        return outcome

    def checks(self) -> list[BackendCheck]:
        return self._backend.checks()
