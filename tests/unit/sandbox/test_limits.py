"""Choosing how each limit is enforced, and the cgroups that enforce them."""

from __future__ import annotations

import os
import resource
import uuid

import anyio
import pytest

from mcp_sandbox_proxy.exceptions import SandboxUnavailable
from mcp_sandbox_proxy.sandbox.limits import CgroupHost, detect_cgroups, plan_limits
from mcp_sandbox_proxy.sandbox.spec import MIB, Limits

NO_CPU_QUOTA = Limits(cpu_cores=None)


def test_a_cpu_quota_without_a_cpu_cgroup_fails_closed() -> None:
    """No cgroup and a CPU quota: the sandbox is refused, with the way to fix it."""
    with pytest.raises(SandboxUnavailable, match="CPU quota") as raised:
        plan_limits(Limits(cpu_cores=1.0), "t", None)

    assert "Delegate=yes" in str(raised.value)


def test_without_cgroups_memory_and_pids_fall_back_to_rlimits() -> None:
    """No cgroup: memory and processes become rlimits, marked as weaker."""
    plan = plan_limits(Limits(memory_bytes=64 * MIB, pids=8, cpu_cores=None), "t", None)
    rlimits = dict(plan.rlimits)
    assert plan.cgroup is None
    assert (
        rlimits[resource.RLIMIT_AS] == 64 * MIB and rlimits[resource.RLIMIT_NPROC] == 8
    )
    assert "weaker" in plan.mechanisms["memory"] and "weaker" in plan.mechanisms["pids"]


def test_file_limits_are_rlimits_everywhere() -> None:
    """Open files, file size and core dumps are rlimits with or without cgroups."""
    limits = Limits(open_files=32, file_size_bytes=MIB, cpu_cores=None)
    rlimits = dict(plan_limits(limits, "t", None).rlimits)
    assert rlimits[resource.RLIMIT_NOFILE] == 32
    assert rlimits[resource.RLIMIT_FSIZE] == MIB
    assert rlimits[resource.RLIMIT_CORE] == 0


@pytest.fixture
def cgroup_host() -> CgroupHost:
    host, why = detect_cgroups()
    if host is None:
        pytest.skip(f"this host offers no cgroup to this user: {why}")

    return host


@pytest.mark.anyio
async def test_a_sandbox_cgroup_carries_the_limits_and_goes_away(
    cgroup_host: CgroupHost,
) -> None:
    """The cgroup gets memory, pids and CPU values, and is deleted once empty."""
    limits = Limits(memory_bytes=96 * MIB, pids=12, cpu_cores=0.5)
    plan = plan_limits(limits, f"test-{uuid.uuid4().hex[:8]}", cgroup_host)
    assert plan.cgroup is not None
    folders = plan.cgroup.dirs
    if cgroup_host.version == 1:
        assert (folders["memory"] / "memory.limit_in_bytes").read_text().strip() == str(
            96 * MIB
        )
        assert (folders["pids"] / "pids.max").read_text().strip() == "12"
        assert (folders["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    else:
        assert (folders["memory"] / "memory.max").read_text().strip() == str(96 * MIB)

    with anyio.fail_after(5):
        await plan.cgroup.remove_when_empty()

    assert not any(folder.exists() for folder in folders.values())


def test_cgroups_are_found_for_root_on_a_cgroup_host() -> None:
    """Running as root where /sys/fs/cgroup is mounted, some controller is offered."""
    if os.geteuid() != 0 or not os.path.ismount("/sys/fs/cgroup"):
        pytest.skip("needs root and a mounted cgroup hierarchy")

    host, why = detect_cgroups()
    assert host is not None, why
    assert why.startswith(f"cgroup v{host.version}")
