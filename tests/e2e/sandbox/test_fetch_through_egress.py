"""mcp-server-fetch through the proxy: it reaches the one host its policy lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import WriteConfig
from tests.e2e.sandbox.test_real_servers_in_namespace import text_of
from tests.integration.sandbox.test_egress_netns import NetHost, test_hosts
from tests.support.proxy_client import proxy_session

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio]
__all__ = ["test_hosts"]  # the fixture, used by its name


async def test_fetch_reaches_the_allowed_host_and_is_refused_another(
    write_config: WriteConfig,
    fetch_server: Path,
    test_hosts: dict[str, NetHost],
    tmp_path: Path,
) -> None:
    """With ``web.test:8080`` allowed, a fetch from web.test returns its page; a
    fetch from other.test fails, other.test never sees a request, and both
    attempts are audited with the call that made them."""
    web, other = test_hosts["web.test"], test_hosts["other.test"]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "fetch-web-test.yaml").write_text(
        yaml.safe_dump(
            {
                "extends": "strict",
                "isolation": {
                    # The test hosts live on a private range of this machine.
                    "network": {"allow": ["web.test:8080"], "allowPrivate": True},
                    "limits": {"memory": "512MiB"},
                },
            }
        )
    )
    config = write_config(
        {"fetch": {"command": str(fetch_server), "policy": "fetch-web-test"}},
        policyPaths=[str(policies)],
        egressHosts={web.name: [web.address], other.name: [other.address]},
    )
    before = len(other.requests())
    async with proxy_session(config) as session:
        allowed = await session.call_tool(
            "fetch__fetch", {"url": "http://web.test:8080/page", "raw": True}
        )
        refused = await session.call_tool(
            "fetch__fetch", {"url": "http://other.test:8080/page", "raw": True}
        )

    assert "hello from web.test" in text_of(allowed)
    assert refused.is_error
    assert "/page" in web.requests()
    assert len(other.requests()) == before

    records: list[dict[str, Any]] = [
        json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
    ]
    attempts = [r for r in records if r["event"] == "egress_attempt"]
    by_host = {(a["host"], a["decision"]) for a in attempts}
    assert ("web.test", "allow") in by_host and ("other.test", "deny") in by_host
    web_attempt = next(a for a in attempts if a["host"] == "web.test")
    assert web_attempt["bytes_down"] > 0
    assert [c["tool"] for c in web_attempt["calls"]] == ["fetch"]
