"""What ``doctor`` says of an engine, and usage figures read from engine stats."""

from __future__ import annotations

from typing import Any

from mcp_sandbox_proxy.sandbox._docker_process import usage_from_stats
from mcp_sandbox_proxy.sandbox.docker import engine_checks

VERSION = {"Version": "20.10.24", "ApiVersion": "1.41"}


def info(**changes: Any) -> dict[str, Any]:
    """An engine ``info`` answer, in the fields the checks read."""
    return {
        "Runtimes": {"runc": {}, "crun": {}},
        "DefaultRuntime": "runc",
        "SecurityOptions": ["name=seccomp,profile=default"],
        "SwapLimit": True,
        **changes,
    }


def by_name(answer: dict[str, Any]) -> dict[str, Any]:
    return {check.name: check for check in engine_checks(VERSION, answer)}


def test_a_capable_engine_passes_every_required_check() -> None:
    """Version, seccomp and runtimes are reported; required checks all pass."""
    checks = by_name(info())

    assert checks["docker engine"].detail == "Docker 20.10.24 (API 1.41)"
    assert checks["docker runtimes"].detail == "crun, runc (default runc)"
    assert all(check.ok for check in checks.values() if check.required)


def test_an_engine_without_seccomp_fails_a_required_check() -> None:
    """Without seccomp the backend cannot confine syscalls: fail closed."""
    check = by_name(info(SecurityOptions=["name=apparmor"]))["docker seccomp"]

    assert not check.ok and check.required


def test_runsc_and_swap_accounting_are_reported_but_optional() -> None:
    """gVisor missing and swap not accounted are shown, and block nothing."""
    checks = by_name(info(SwapLimit=False))

    assert not checks["docker runtime runsc (gVisor)"].ok
    assert not checks["docker swap limit"].ok
    assert not checks["docker runtime runsc (gVisor)"].required
    assert not checks["docker swap limit"].required


def test_usage_comes_from_cpu_nanoseconds_and_the_memory_peak() -> None:
    """CPU time in seconds from nanoseconds; peak memory from cgroup v1's max."""
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000}},
        "memory_stats": {"usage": 10, "max_usage": 52_428_800},
    }

    usage = usage_from_stats(stats)

    assert usage.cpu_seconds == 1.5 and usage.peak_memory_bytes == 52_428_800


def test_stats_of_a_stopped_container_give_no_figures() -> None:
    """An empty sample (the container already gone) is no usage, not zero usage."""
    usage = usage_from_stats({"cpu_stats": {}, "memory_stats": {}})

    assert usage.cpu_seconds is None and usage.peak_memory_bytes is None
