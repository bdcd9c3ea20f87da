"""``trim_when_idle``: one trim of the C heap after each burst, none during one."""

from __future__ import annotations

import anyio
import pytest

from mcp_sandbox_proxy import heap

QUIET_S = 0.1


def test_glibc_offers_malloc_trim() -> None:
    """On this Linux the real function is found, and trimming works."""
    trim = heap._malloc_trim()

    assert trim is not None
    assert trim(0) in (0, 1)


@pytest.mark.anyio
async def test_the_heap_is_trimmed_once_after_each_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: trims.append)
    activity = [0]

    async def burst() -> None:
        # Busier than the quiet period: no trim may run while it lasts.
        for _ in range(5):
            activity[0] += 1
            await anyio.sleep(QUIET_S / 10)

    async with anyio.create_task_group() as group:
        group.start_soon(heap.trim_when_idle, lambda: activity[0], QUIET_S)
        await anyio.sleep(QUIET_S * 3)
        assert trims == [], "nothing happened yet: nothing to give back"

        await burst()
        assert trims == []
        await anyio.sleep(QUIET_S * 4)
        assert trims == [0], "one trim once the burst is over"

        await burst()
        await anyio.sleep(QUIET_S * 4)
        assert trims == [0, 0]
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_without_malloc_trim_the_watcher_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)

    with anyio.fail_after(1):
        await heap.trim_when_idle(lambda: 0, QUIET_S)
