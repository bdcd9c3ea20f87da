"""The edge to the Docker engine: the SDK's client, off the event loop.

The SDK blocks, so every call runs in a worker thread. Calls that can last long
(waiting for a container's exit) draw on a limiter of their own, so that they never
hold up the short ones. Connection failures become ``SandboxUnavailable``
here; the engine's refusals are translated by the caller, who knows what was asked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anyio
import docker
import docker.errors
import requests
from docker.utils import kwargs_from_env

from mcp_sandbox_proxy.exceptions import SandboxUnavailable

# Bound on an ordinary engine call (create, start, inspect, kill, remove). Starts
# take a few hundred milliseconds; this only ends a call to a hung engine.
API_TIMEOUT_S = 30
# The oldest engine API with every option the backend sets (private cgroup
# namespaces, seccomp profiles with a default errno): Docker 20.10.
MIN_API_VERSION = (1, 41)
# Connections kept to the engine: one per concurrent call, waits included.
CONNECTION_POOL_SIZE = 64
# Long calls (waits for exit, stats) in flight at once, each holding one thread.
MAX_CONCURRENT_WAITS = 256

_wait_limiter: anyio.CapacityLimiter | None = None

# The SDK has no type information; its objects are ``Any`` from here on.
Engine = Any


def connect() -> Engine:
    """A client of the engine that ``DOCKER_HOST`` names (default: local socket).

    Blocks; raises ``SandboxUnavailable`` when the engine does not answer or is
    too old.
    """
    settings = kwargs_from_env()
    where = settings.get("base_url") or "the default socket"
    try:
        engine = docker.APIClient(
            **settings,
            version="auto",
            timeout=API_TIMEOUT_S,
            max_pool_size=CONNECTION_POOL_SIZE,
        )
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise SandboxUnavailable(
            f"the Docker engine at {where} is not reachable: {exc}"
        ) from exc

    version: str = engine.api_version
    if tuple(int(part) for part in version.split(".")) < MIN_API_VERSION:
        engine.close()
        raise SandboxUnavailable(
            f"the Docker engine at {where} speaks API {version}; the docker backend"
            f" needs {'.'.join(map(str, MIN_API_VERSION))} (Docker 20.10) or newer"
        )

    return engine


async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one blocking engine call in a worker thread."""
    return await anyio.to_thread.run_sync(
        _translated(functools.partial(function, *args, **kwargs))
    )


async def call_cancellable(
    function: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Run an engine call that may last long (a wait for exit, a stats sample).

    On cancellation the thread is left to finish on its own and its result is
    dropped. These calls draw on a limiter of their own.
    """
    global _wait_limiter
    if _wait_limiter is None:
        _wait_limiter = anyio.CapacityLimiter(MAX_CONCURRENT_WAITS)

    return await anyio.to_thread.run_sync(
        _translated(functools.partial(function, *args, **kwargs)),
        abandon_on_cancel=True,
        limiter=_wait_limiter,
    )


def explain(exc: docker.errors.APIError) -> str:
    """The engine's own explanation of a refused call."""
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def _translated(function: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        try:
            return function()
        except docker.errors.APIError:
            # The engine answered; the caller knows what its refusal means.
            raise
        except requests.RequestException as exc:
            raise SandboxUnavailable(
                f"the Docker engine stopped answering: {exc}"
            ) from exc

    return run
