"""Turn a Docker seccomp profile into a libseccomp filter, rule by rule, as runc does.

The unit tests load the result into a child process to check that the Docker profile
refuses exactly what the bubblewrap filter refuses.
"""

from __future__ import annotations

from typing import Any

import pyseccomp

from mcp_sandbox_proxy.sandbox.seccomp import docker_seccomp_profile

OPERATORS = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_LT": pyseccomp.LT,
    "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_GE": pyseccomp.GE,
    "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}


def action_of(rule: dict[str, Any], default_errno: int) -> int:
    if rule["action"] == "SCMP_ACT_ALLOW":
        return pyseccomp.ALLOW

    assert rule["action"] == "SCMP_ACT_ERRNO", rule
    return pyseccomp.ERRNO(rule.get("errnoRet", default_errno))


def make() -> pyseccomp.SyscallFilter:
    """The filter runc would build from ``docker_seccomp_profile()``."""
    profile = docker_seccomp_profile()
    default_errno = profile["defaultErrnoRet"]
    syscall_filter = pyseccomp.SyscallFilter(pyseccomp.ERRNO(default_errno))
    for rule in profile["syscalls"]:
        conditions = [
            pyseccomp.Arg(
                a["index"], OPERATORS[a["op"]], a["value"], a.get("valueTwo", 0)
            )
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) != -1:
                syscall_filter.add_rule(
                    action_of(rule, default_errno), name, *conditions
                )

    return syscall_filter
