"""Policies enforced through the proxy: denials never reach the server, are
audited, and results are cleaned before the client sees them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp import MCPError

from tests.conftest import REPO, WriteConfig
from tests.support.proxy_client import proxy_session

pytestmark = pytest.mark.anyio
ECHO_SERVER = REPO / "tests" / "servers" / "echo_server.py"


def write_policy(folder: Path, name: str, policy: dict[str, Any]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(policy))


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def calls_seen(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []

    messages = [json.loads(line) for line in record.read_text().splitlines()]
    return [m["params"] for m in messages if m.get("method") == "tools/call"]


@pytest.fixture
def guarded(write_config: WriteConfig, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The echo server behind a policy with a tool denial, a path grant and a
    rate of three calls a minute; returns the config, the server's record of what
    it received, and the granted folder."""
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "inside.txt").write_text("ok")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (granted / "escape").symlink_to(outside)
    write_policy(
        tmp_path / "policies",
        "guarded",
        {
            "extends": "strict",
            "isolation": {
                "backend": "process",
                "filesystem": {"read": [str(granted)]},
                "env": {"pass": ["PATH"]},
            },
            "tools": {"deny": ["crash", "wait"]},
            "arguments": {"echo": {"text": {"grant": "read"}}},
            "rate": {"perMinute": 3},
        },
    )
    record = tmp_path / "record.jsonl"
    config = write_config(
        {
            "echo": {
                "command": sys.executable,
                "args": [str(ECHO_SERVER)],
                "env": {"ECHO_SERVER_RECORD": str(record)},
                "policy": "guarded",
            }
        },
        policyPaths=[str(tmp_path / "policies")],
    )
    return config, record, granted


async def test_denied_tools_arguments_and_rates_never_reach_the_server(
    guarded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A denied tool, a path outside the grant (plain, through ``..`` and through
    a symlink) and a call past the rate each get an error naming the rule; the
    server sees only the allowed calls, and each denial is audited."""
    config, record, granted = guarded
    refused: dict[str, str] = {}
    async with proxy_session(config) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        for label, name, text in (
            ("tool", "echo__crash", None),
            ("outside", "echo__echo", str(tmp_path / "outside.txt")),
            ("dotdot", "echo__echo", f"{granted}/../outside.txt"),
            ("symlink", "echo__echo", str(granted / "escape")),
        ):
            with pytest.raises(MCPError) as caught:
                await session.call_tool(name, {"text": text} if text else {})
            refused[label] = str(caught.value)

        for _ in range(3):
            await session.call_tool("echo__echo", {"text": str(granted / "inside.txt")})

        with pytest.raises(MCPError) as caught:
            await session.call_tool("echo__echo", {"text": str(granted / "inside.txt")})
        refused["rate"] = str(caught.value)

    assert "echo__crash" not in names and "echo__echo" in names
    assert "tools.deny" in refused["tool"]
    assert all("arguments.text" in refused[k] for k in ("outside", "dotdot", "symlink"))
    assert "rate.perMinute" in refused["rate"]
    assert [c["arguments"]["text"] for c in calls_seen(record)] == [
        str(granted / "inside.txt")
    ] * 3
    denials = [r for r in audit_records(tmp_path) if r["event"] == "call_denied"]
    assert [d["rule"].split(".")[0] for d in denials] == [
        "tools", "arguments", "arguments", "arguments", "rate"
    ]  # fmt: skip


async def test_results_are_cleaned_and_cut_before_the_client_sees_them(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """Terminal escapes and invisible characters are removed; an oversized result
    is cut with a marker."""
    write_policy(
        tmp_path / "policies",
        "small-results",
        {
            "extends": "strict",
            "isolation": {"backend": "process", "env": {"pass": ["PATH"]}},
            "results": {"maxBytes": "1KiB"},
        },
    )
    config = write_config(
        {
            "echo": {
                "command": sys.executable,
                "args": [str(ECHO_SERVER)],
                "policy": "small-results",
            }
        },
        policyPaths=[str(tmp_path / "policies")],
    )
    hostile = "safe\x1b]0;owned\x07 text\u200b with\U000e0041 tags\x1b[2J"
    async with proxy_session(config) as session:
        cleaned = await session.call_tool("echo__echo", {"text": hostile})
        cut = await session.call_tool("echo__echo", {"text": "", "pad": 5000})

    assert cleaned.content[0].text == "safe text with tags"  # type: ignore[union-attr]
    text = cut.content[0].text  # type: ignore[union-attr]
    assert len(text.encode()) < 1200
    assert "[mcp-sandbox-proxy: result cut at 1024 bytes of 5000]" in text


async def test_a_changed_tool_description_hides_the_tool_until_accepted(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """A rug pull: the second listing describes ``echo`` anew; the tool is hidden
    and refused until ``pins accept`` takes the new description."""
    write_policy(
        tmp_path / "policies",
        "plain",
        {"extends": "strict", "isolation": {"backend": "process"}},
    )
    config = write_config(
        {
            "rug": {
                "command": sys.executable,
                "args": [str(ECHO_SERVER)],
                "env": {"ECHO_SERVER_RUG_PULL": "1"},
                "policy": "plain",
            }
        },
        policyPaths=[str(tmp_path / "policies")],
    )
    async with proxy_session(config) as session:
        first = {t.name for t in (await session.list_tools()).tools}
        second = {t.name for t in (await session.list_tools()).tools}
        with pytest.raises(MCPError, match=r"pins\.changed"):
            await session.call_tool("rug__echo", {"text": "x"})

        accept = [sys.executable, "-m", "mcp_sandbox_proxy", "pins", "accept"]
        await anyio.run_process(
            [*accept, "--config", str(config), "rug", "echo"], env=dict(os.environ)
        )
        third = {t.name for t in (await session.list_tools()).tools}
        result = await session.call_tool("rug__echo", {"text": "back"})

    assert "rug__echo" in first and "rug__echo" not in second
    assert "rug__echo" in third
    assert result.content[0].text == "back"  # type: ignore[union-attr]
    events = [r["event"] for r in audit_records(tmp_path)]
    assert "tool_pin_changed" in events
