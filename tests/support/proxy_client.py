"""Drive the proxy end to end with the official MCP SDK client over stdio."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client


def proxy_parameters(
    config: Path, env: dict[str, str] | None = None
) -> StdioServerParameters:
    """How to start the proxy as a client would: ``python -m mcp_sandbox_proxy``."""
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_sandbox_proxy", "run", "--config", str(config)],
        env={**os.environ, **(env or {})},
    )


@asynccontextmanager
async def proxy_session(
    config: Path, *, env: dict[str, str] | None = None, **callbacks: Any
) -> AsyncIterator[ClientSession]:
    """An initialised SDK client session talking to a fresh proxy process."""
    async with (
        stdio_client(proxy_parameters(config, env)) as (read, write),
        ClientSession(read, write, **callbacks) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def direct_session(
    command: str, args: list[str] | None = None, **callbacks: Any
) -> AsyncIterator[ClientSession]:
    """An SDK client session talking to a server directly, for comparisons."""
    params = StdioServerParameters(
        command=command, args=args or [], env=dict(os.environ)
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, **callbacks) as session,
    ):
        await session.initialize()
        yield session
