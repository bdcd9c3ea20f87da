"""Which configured servers start through a package runner, and their installer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mcp_sandbox_proxy.config import ProxyConfig
from mcp_sandbox_proxy.install.launchers import Launch, LaunchError, parse_launch
from mcp_sandbox_proxy.policy import ResolvedPolicy
from mcp_sandbox_proxy.policy.policyset import config_error
from mcp_sandbox_proxy.sandbox.backend import Backend
from mcp_sandbox_proxy.sandbox.registry import Backends
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

if TYPE_CHECKING:
    from mcp_sandbox_proxy.install.installer import Record

Instance = tuple[tuple[str, str], SandboxSpec, ResolvedPolicy]


def server_launches(
    config: ProxyConfig, instances: Iterable[Instance]
) -> dict[str, Launch]:
    """The servers started through a package runner, and what each installs.
    A runner option the install cannot honour stops the proxy, naming it."""
    launches: dict[str, Launch] = {}
    for (server, _), spec, policy in instances:
        try:
            launch = parse_launch(spec.command, spec.args)
        except LaunchError as exc:
            key = ("mcpServers", server, "args")
            raise config_error(config, key, str(exc)) from exc

        if launch is None:
            continue

        if policy.backend == "docker":
            # TODO(docker-install): install into a volume the container mounts; until
            # then an image with the server in it runs it under docker.
            raise config_error(
                config,
                ("mcpServers", server, "command"),
                f"{launch.runner} servers are installed on the host, and the docker"
                " backend runs an image's own files; name an image with the server"
                " installed, or use the namespace backend",
            )

        launches[server] = launch

    return launches


def installing(
    config: ProxyConfig, backends: Backends, record: Record
) -> Callable[[Backend, str, Launch], Backend]:
    """Wraps a server's backend so that its package is installed before it starts.
    One installer serves every server of the proxy, in namespace sandboxes."""
    from mcp_sandbox_proxy.install.backend import InstallingBackend
    from mcp_sandbox_proxy.install.installer import Installer

    installer = Installer(
        config.proxy.install,
        backend=backends.get("namespace"),
        record=record,
        egress_hosts=config.proxy.egress_hosts,
    )

    def wrap(inner: Backend, server: str, launch: Launch) -> Backend:
        return InstallingBackend(inner, installer, server, launch)

    return wrap
