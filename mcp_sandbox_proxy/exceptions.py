"""The one exception tree of the proxy.

    ProxyError
    ├── ConfigError            a configuration or policy file is invalid
    ├── SandboxError           a sandbox could not be built or started
    │   ├── SandboxUnavailable the host cannot give the sandbox; fail closed
    │   └── SandboxStartFailed the server exited or broke during start
    ├── DownstreamError        a tool server misbehaved or went away
    └── AuditError             an audit record could not be written durably

Foreign errors (OS, Docker, JSON, pydantic) are translated once, at the edge where
they arise, and chained with ``from``.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error the proxy raises on purpose."""


class ConfigError(ProxyError):
    """A configuration or policy file is invalid.

    The message names the file, the key path (or line) and what was expected.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class SandboxError(ProxyError):
    """A sandbox could not be built or started."""


class SandboxUnavailable(SandboxError):
    """The host lacks something the backend needs; the server is not started."""


class SandboxStartFailed(SandboxError):
    """The sandboxed server exited or broke while starting."""


class DownstreamError(ProxyError):
    """A tool server misbehaved, timed out or went away."""


class AuditError(ProxyError):
    """An audit record could not be written durably."""
