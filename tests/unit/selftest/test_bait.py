"""The bait the self-test plants on the host, and the traces it reads back."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import anyio
import pytest

from mcp_sandbox_proxy.selftest.bait import SECRET_VAR, Trace, planted
from mcp_sandbox_proxy.selftest.probes import (
    SHADOW,
    parse_targets,
    proxy_secret_read,
)

pytestmark = pytest.mark.anyio


async def test_the_bait_is_planted_and_removed_again() -> None:
    """Canary, folder and secret exist while planted; none is left afterwards."""
    before = os.environ.get(SECRET_VAR)
    async with planted() as bait:
        assert bait.canary.parent == Path.home().resolve()
        assert bait.token in bait.canary.read_text()
        assert bait.write_dir.is_dir() and not any(bait.write_dir.iterdir())
        assert os.environ[SECRET_VAR] == bait.token

    assert not bait.canary.exists() and not bait.write_dir.exists()
    assert os.environ.get(SECRET_VAR) == before
    assert bait.listener.fileno() == -1


async def test_the_secret_sits_in_a_stand_ins_starting_environment() -> None:
    """``/proc/PID/environ`` of a host process shows the secret, as the proxy's
    environment would show its own; the probe finds it there."""
    async with planted() as bait:
        outcome = proxy_secret_read(parse_targets(bait.probe_args()))

    assert outcome.escaped
    assert "/proc/" in outcome.evidence


async def test_the_probe_arguments_name_every_piece_of_bait() -> None:
    """What the host plants is what the probe script is told to reach for."""
    async with planted() as bait:
        told = parse_targets(bait.probe_args())

    assert (told.token, told.canary) == (bait.token, str(bait.canary))
    assert (told.write_dir, told.port) == (str(bait.write_dir), bait.port)
    assert told.proxy_pid == os.getpid()


async def test_a_file_in_the_folder_is_a_trace_and_is_cleared() -> None:
    """A file that appeared is an escape once; the folder is emptied for the next."""
    async with planted() as bait:
        (bait.write_dir / "escaped.txt").write_text("x")
        first = bait.traces({})["host-folder-write"]
        second = bait.traces({})["host-folder-write"]

    assert first.escaped and "escaped.txt appeared" in first.detail
    assert not second.escaped


async def test_only_a_connection_carrying_the_token_is_a_trace() -> None:
    """A connection without the token (someone else) is no escape of a probe."""
    async with planted() as bait:
        with socket.create_connection(("127.0.0.1", bait.port)) as stranger:
            stranger.sendall(b"hello\n")

        quiet = bait.traces({})["host-loopback-connect"]
        with socket.create_connection(("127.0.0.1", bait.port)) as probe:
            probe.sendall(bait.token.encode() + b"\n")

        reached = bait.traces({})["host-loopback-connect"]

    assert not quiet.escaped and reached.escaped


@pytest.mark.skipif(not os.access(SHADOW, os.R_OK), reason="needs the host's shadow")
async def test_only_the_hosts_own_shadow_file_counts() -> None:
    """An image's /etc/shadow, read inside a container, is not the host's."""
    host = hashlib.sha256(await anyio.Path(SHADOW).read_bytes()).hexdigest()
    own = {"shadow-read": {"escaped": True, "digest": host}}
    image = {"shadow-read": {"escaped": True, "digest": "0" * 64}}
    async with planted() as bait:
        found_own = bait.traces(own)["shadow-read"]
        found_image = bait.traces(image)["shadow-read"]

    assert found_own == Trace(True, f"read the host's {SHADOW}")
    assert not found_image.escaped and "not the host's" in found_image.detail
