"""The audit log as real calls through the proxy write it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from mcp_sandbox_proxy.audit import verify_files
from tests.conftest import REPO, WriteConfig
from tests.support.proxy_client import proxy_session
from tests.support.raw_proxy import raw_proxy

pytestmark = pytest.mark.anyio
ECHO_SERVER = REPO / "tests" / "servers" / "echo_server.py"
SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def echo_config(write_config: WriteConfig, tmp_path: Path, **audit: Any) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "audited.yaml").write_text(
        yaml.safe_dump(
            {
                "extends": "strict",
                "isolation": {"backend": "process"},
                "rate": {"perMinute": None},
                "redact": ["note"],
            }
        )
    )
    server = {"command": sys.executable, "args": [str(ECHO_SERVER)]}
    return write_config(
        {"echo": {**server, "policy": "audited"}},
        policyPaths=[str(folder)],
        audit={"path": str(tmp_path / "audit.jsonl"), **audit},
    )


# A call waits for its fsync; in batch mode it is relayed and recorded where it
# is read, without a wait: both ways must leave the same records.
@pytest.mark.parametrize("durability", ["fsync", "batch"])
async def test_every_call_leaves_intent_and_outcome_with_secrets_redacted(
    write_config: WriteConfig, tmp_path: Path, durability: str
) -> None:
    """Each field a reviewer needs is on the records of a real call; a token, a
    secret-looking value and a name the policy lists never reach the file."""
    config = echo_config(write_config, tmp_path, durability=durability)
    arguments = {"text": "hello", "api_key": "abc", "pad": 0, "note": "private"}
    async with proxy_session(config) as session:
        await session.call_tool("echo__echo", arguments)
        await session.call_tool("echo__echo", {"text": f"Bearer {SECRET}"})

    path = tmp_path / "audit.jsonl"
    text = path.read_text()
    assert SECRET not in text and "private" not in text and '"abc"' not in text
    log = records(path)
    intent = next(r for r in log if r["event"] == "call_intent")
    outcome = next(r for r in log if r["event"] == "call_outcome")
    envelope = {"v", "seq", "ts", "instance", "prev", "hash"}
    assert envelope <= intent.keys() and envelope <= outcome.keys()
    assert intent["v"] == 1 and intent["ts"].endswith("Z")
    for record in (intent, outcome):
        assert record["server"] == "echo" and record["tool"] == "echo"
        assert record["policy"] == "audited" and len(record["policy_digest"]) == 64
        assert record["session"] and record["client"].startswith("mcp")
        assert record["rule"] == "tools.default"
        assert record["request_id"] == intent["request_id"]

    assert intent["decision"] == "allow"
    assert intent["arguments"]["text"] == "hello" and intent["arguments"]["pad"] == 0
    assert intent["arguments"]["api_key"] != "abc"
    assert intent["arguments"]["note"] != "private"
    assert outcome["is_error"] is False and outcome["result_bytes"] > 0
    assert len(outcome["result_digest"]) == 64
    for duration in ("queued_ms", "sandbox_ms", "total_ms"):
        assert outcome[duration] >= 0

    started = next(r for r in log if r["event"] == "sandbox_started")
    exited = next(r for r in log if r["event"] == "sandbox_exited")
    assert started["backend"] == "process" and started["sandbox_id"]
    assert exited["exit_status"] == 0 and exited["cpu_seconds"] > 0
    assert exited["peak_memory_bytes"] > 0
    assert log[1]["event"] == "config_loaded" and log[-1]["event"] == "audit_closed"
    assert verify_files([path]).ok


async def test_a_killed_proxy_keeps_the_outcome_of_every_answered_call(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """SIGKILL in the middle of a burst: every call whose answer the client saw
    has its outcome on record, and the chain verifies up to the last whole line."""
    config = echo_config(write_config, tmp_path, durability="batch")
    answered: list[int] = []
    async with raw_proxy(config) as proxy:
        for request_id in range(1, 401):
            await proxy.send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "method": "tools/call",
                    "params": {"name": "echo__echo", "arguments": {"text": "x"}},
                }
            )

        while len(answered) < 150:
            message = await proxy.receive()
            if "result" in message:
                answered.append(message["id"])

        os.kill(proxy.process.pid, signal.SIGKILL)
        # What the proxy wrote before it died still reaches the client.
        with anyio.move_on_after(5), contextlib.suppress(anyio.EndOfStream):
            while True:
                message = await proxy.receive()
                if "result" in message:
                    answered.append(message["id"])

    path = tmp_path / "audit.jsonl"
    complete = [line for line in path.read_text().split("\n")[:-1] if line]
    outcomes = {
        json.loads(line)["request_id"] for line in complete if '"call_outcome"' in line
    }
    assert set(answered) <= outcomes
    report = verify_files([path])
    assert [p.kind for p in report.problems] in ([], ["truncated"])
    assert report.valid_through is not None
    assert report.valid_through.line == len(complete)
