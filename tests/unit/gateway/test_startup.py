"""``HeadStart``: servers started before the event loop, handed over once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.gateway.startup import HeadStart
from mcp_sandbox_proxy.sandbox.backend import Backend, SandboxProcess
from mcp_sandbox_proxy.sandbox.process import ProcessBackend
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

KEY = ("echo", "default")
ECHO_SERVER = Path(__file__).parents[2] / "servers" / "echo_server.py"


def echo_spec(command: str = sys.executable) -> SandboxSpec:
    return SandboxSpec(
        name="echo",
        command=command,
        args=(str(ECHO_SERVER),),
        env={"PATH": os.environ["PATH"]},
    )


class LoopOnly(Backend):
    """A backend that can start servers only inside the loop, as Docker's."""

    name = "loop-only"

    async def start(self, spec: SandboxSpec) -> SandboxProcess:
        raise AssertionError("not started in these tests")


async def stopped(*processes: SandboxProcess) -> None:
    for process in processes:
        await process.stop()
        process.close()


def test_a_server_started_early_is_what_its_first_start_returns() -> None:
    """Started before the loop, the process is handed to the instance's first
    start; a restart after it starts a new one."""
    head_start = HeadStart()
    backend = ProcessBackend()
    head_start.start(KEY, echo_spec(), backend)
    early = head_start._outcomes[KEY]  # pyright: ignore[reportPrivateUsage]
    assert isinstance(early, SandboxProcess) and early.returncode is None

    async def main() -> tuple[SandboxProcess, SandboxProcess]:
        adopting = head_start.backend_for(KEY, backend)
        first = await adopting.start(echo_spec())
        again = await adopting.start(echo_spec())
        await stopped(first, again)
        return first, again

    first, again = anyio.run(main)
    assert first is early
    assert again is not early and again.pid != early.pid
    assert head_start.backend_for(KEY, backend) is backend  # handed over once


def test_an_early_refusal_is_reported_by_the_first_start_only() -> None:
    head_start = HeadStart()
    backend = ProcessBackend()
    missing = echo_spec(command="no-such-command-anywhere")
    head_start.start(KEY, missing, backend)

    async def main() -> list[str]:
        adopting = head_start.backend_for(KEY, backend)
        errors: list[str] = []
        for _ in range(2):  # the second start tries again, and fails on its own
            with pytest.raises(SandboxStartFailed) as caught:
                await adopting.start(missing)
            errors.append(str(caught.value))
        return errors

    errors = anyio.run(main)
    assert all("no-such-command-anywhere" in error for error in errors)


def test_a_backend_that_starts_only_in_the_loop_is_left_alone() -> None:
    head_start = HeadStart()
    backend = LoopOnly()
    head_start.start(KEY, echo_spec(), backend)

    assert head_start.backend_for(KEY, backend) is backend


def test_servers_never_taken_over_are_stopped_on_close() -> None:
    """A proxy that stops before its pool took a server over stops it too."""
    head_start = HeadStart()
    backend = ProcessBackend()
    head_start.start(KEY, echo_spec(), backend)
    adopting = head_start.backend_for(KEY, backend)
    head_start.start(KEY, echo_spec(), backend)  # the one nobody takes over

    async def main() -> tuple[int | None, int | None]:
        taken = await adopting.start(echo_spec())
        left = head_start._outcomes[KEY]  # pyright: ignore[reportPrivateUsage]
        assert isinstance(left, SandboxProcess)
        await head_start.aclose()
        code = left.returncode
        still_running = taken.returncode
        await stopped(taken)
        return code, still_running

    left_code, taken_code = anyio.run(main)
    assert left_code is not None
    assert taken_code is None
