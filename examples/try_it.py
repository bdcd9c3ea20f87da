"""A first look at the proxy: start it as Claude Desktop would, use its tools, and
show what it enforced and recorded.

    python examples/try_it.py examples/quickstart.yaml

It speaks to the proxy with the official MCP Python SDK, over stdio.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client


def show(title: str, text: str) -> None:
    sys.stdout.write(f"\n== {title}\n{text.rstrip()}\n")


def text_of(result: object) -> str:
    blocks = getattr(result, "content", [])
    return "\n".join(getattr(block, "text", "") for block in blocks)


async def tour(config: Path, workspace: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "mcp_sandbox_proxy",
        "run",
        "--config",
        str(config),
    ]
    params = StdioServerParameters(
        command=command[0], args=command[1:], env=dict(os.environ)
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        tools = (await session.list_tools()).tools
        show(
            f"Connected to {init.server_info.name}: {len(tools)} tools",
            "\n".join(f"  {tool.name}" for tool in tools),
        )

        now = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        show("time__get_current_time (no network, no files)", text_of(now))

        note = workspace / "hello.txt"
        await session.call_tool(
            "notes__write_file",
            {"path": str(note), "content": "written in a sandbox\n"},
        )
        listing = await session.call_tool(
            "notes__list_directory", {"path": str(workspace)}
        )
        show(
            f"notes__write_file, then notes__list_directory {workspace}",
            text_of(listing),
        )

        for label, path in (
            ("outside the granted folder", "/etc/shadow"),
            ("through '..'", f"{workspace}/../../etc/passwd"),
        ):
            try:
                await session.call_tool("notes__read_text_file", {"path": path})
            except MCPError as refusal:
                show(f"notes__read_text_file {label}: refused", str(refusal))


def audit_trail(config: Path) -> None:
    from mcp_sandbox_proxy.config import load_config

    audit = load_config(config).proxy.audit.path
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = audit or Path(state) / "mcp-sandbox-proxy" / "audit.jsonl"
    cli = [sys.executable, "-m", "mcp_sandbox_proxy", "audit-log"]
    shown = subprocess.run([*cli, "show", str(path)], capture_output=True, text=True)
    lines = shown.stdout.splitlines()
    show(f"Audit log {path} (last records)", "\n".join(lines[:2] + lines[-12:]))
    verified = subprocess.run(
        [*cli, "verify", str(path)], capture_output=True, text=True
    )
    show("audit-log verify", verified.stdout + verified.stderr)


def main() -> None:
    config = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/quickstart.yaml")
    workspace = Path(os.environ["MCP_SANDBOX_PROXY_DEMO_DIR"])
    anyio.run(tour, config, workspace)
    audit_trail(config)


if __name__ == "__main__":
    main()
