"""A policy resolved for one server: variables, overrides, hashes, sandbox spec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy.loader import SHIPPED_POLICIES
from mcp_sandbox_proxy.sandbox.spec import MIB, Mount
from tests.unit.policy.conftest import LoadPolicies, WritePolicy, server


def test_folder_variables_come_from_the_environment_and_are_resolved(
    load_policies: LoadPolicies, tmp_path: Path
) -> None:
    """``${WORKSPACE}`` is filled and the path resolved through its symlinks."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    environ = {"WORKSPACE": str(tmp_path / "link"), "HOME": str(tmp_path)}

    policies = load_policies({"files": server("read-only-folder")}, environ=environ)

    policy = policies.for_server("files")
    assert policy.read_paths == (str(real),)
    assert policy.write_paths == ()


def test_a_tilde_in_a_grant_stands_for_home(
    write_policy: WritePolicy, load_policies: LoadPolicies, home: Path
) -> None:
    """``~/notes`` is the environment's HOME, then ``/notes``."""
    write_policy("notes", "isolation: {filesystem: {write: ['~/notes']}}\n")

    policy = load_policies({"n": server("notes")}).for_server("n")

    assert policy.write_paths == (str(home / "notes"),)


def test_an_unset_variable_names_the_file_key_server_and_remedy(
    load_policies: LoadPolicies,
) -> None:
    """A folder variable nobody set stops loading, with where to set it."""
    with pytest.raises(ConfigError) as caught:
        load_policies({"files": server("read-write-folder")})

    assert str(caught.value) == (
        f"{SHIPPED_POLICIES / 'read-write-folder.yaml'}: isolation.filesystem.write[0]:"
        " variable ${WORKSPACE} is not set (needed by server 'files': set it under"
        " mcpServers.files.vars or in the proxy's environment)"
    )


def test_a_relative_grant_is_refused(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """Grants are absolute paths once variables are filled."""
    path = write_policy("rel", "isolation: {filesystem: {read: [data]}}\n")

    with pytest.raises(ConfigError) as caught:
        load_policies({"r": server("rel")})

    assert str(caught.value) == (
        f"{path}: isolation.filesystem.read[0]: expected an absolute path, got 'data'"
    )


def test_a_malformed_variable_is_refused(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """``${1X}`` is not a variable name."""
    path = write_policy("bad", "isolation: {filesystem: {read: ['/${1X}']}}\n")

    with pytest.raises(ConfigError) as caught:
        load_policies({"b": server("bad")})

    assert str(caught.value) == (
        f"{path}: isolation.filesystem.read[0]: '${{1X}}' is not a valid variable name"
    )


def test_the_servers_backend_and_image_override_the_policys(
    load_policies: LoadPolicies,
) -> None:
    """``backend`` and ``image`` in the configuration win over the policy."""
    policies = load_policies(
        {"t": server("compute-only", backend="docker", image="example/time:1")}
    )

    policy = policies.for_server("t")
    assert policy.backend == "docker"
    assert policy.policy.isolation.docker.image == "example/time:1"


def test_call_rules_alone_share_a_profile_and_isolation_does_not(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """Policies differing only in call rules or per-call limits share one sandbox."""
    write_policy("fewer-calls", "extends: strict\nrate: {perMinute: 1}\n")
    write_policy("slower", "extends: strict\nisolation: {limits: {callTimeout: 2m}}\n")
    write_policy("bigger", "extends: strict\nisolation: {limits: {memory: 1GiB}}\n")
    tools = {"a": "fewer-calls", "b": "slower", "c": "bigger"}

    policies = load_policies({"s": server("strict", tools=tools)})

    strict, fewer, slower, bigger = (
        policies.for_tool("s", tool) for tool in ("z", "a", "b", "c")
    )
    assert strict.profile == fewer.profile == slower.profile != bigger.profile
    assert len({strict.digest, fewer.digest, slower.digest, bigger.digest}) == 4
    assert [p.name for p in policies.profiles("s")] == ["strict", "bigger"]


def test_digests_are_stable_across_loads(load_policies: LoadPolicies) -> None:
    """The same files and configuration give the same digest and profile."""
    first = load_policies({"t": server("compute-only")}).for_server("t")
    second = load_policies({"t": server("compute-only")}).for_server("t")

    assert (first.digest, first.profile) == (second.digest, second.profile)
    assert len(first.digest) == 64
    assert len(first.profile) == 12


def test_the_sandbox_spec_carries_grants_limits_and_network(
    load_policies: LoadPolicies, tmp_path: Path
) -> None:
    """Mounts at the same path, limits in bytes, and egress when hosts are listed."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    environ = {"WORKSPACE": str(workspace), "HOME": str(tmp_path)}
    servers = {
        "files": server("read-write-folder"),
        "web": server("web-fetch-allow-list"),
    }
    policies = load_policies(servers, environ=environ)

    files = policies.for_server("files")
    spec = files.sandbox_spec("files", policies.server("files"), environ)
    web = policies.for_server("web").sandbox_spec(
        "web", policies.server("web"), environ
    )

    assert spec.name == f"files:{files.profile}"
    assert spec.mounts == (Mount(workspace, workspace, writable=True),)
    assert spec.limits.memory_bytes == 512 * MIB
    assert spec.limits.file_size_bytes == 64 * MIB
    assert spec.limits.cpu_cores == 0.5
    assert spec.network.mode == "none"
    assert web.network.mode == "egress"
    assert web.network.egress_socket is None
    assert spec.labels["io.mcp-sandbox-proxy.policy"] == "read-write-folder"


def test_the_environment_holds_only_what_the_policy_and_config_name(
    write_policy: WritePolicy, load_policies: LoadPolicies, tmp_path: Path
) -> None:
    """Passed names, set values, secrets and the server's own env; nothing else."""
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    write_policy(
        "env",
        f"""\
        isolation:
          env:
            pass: [LANG, ABSENT]
            set: {{MODE: quiet}}
            secrets:
              API_TOKEN: {{fromEnv: HOST_TOKEN}}
              DB_PASSWORD: {{fromFile: {key_file}}}
        """,
    )
    environ = {"LANG": "C.UTF-8", "HOST_TOKEN": "t0k", "AWS_SECRET": "no", "HOME": "/h"}
    policies = load_policies({"e": server("env", env={"PASTED": "1"})}, environ=environ)

    policy = policies.for_server("e")
    spec = policy.sandbox_spec("e", policies.server("e"), environ)

    assert dict(spec.env) == {
        "HOME": "/tmp",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "MODE": "quiet",
        "API_TOKEN": "t0k",
        "DB_PASSWORD": "file-secret",
        "PASTED": "1",
    }
    assert policy.redact_names == ("API_TOKEN", "DB_PASSWORD")


def test_a_bare_command_keeps_its_folder_on_the_sandbox_path(
    load_policies: LoadPolicies, tmp_path: Path
) -> None:
    """A command found on the proxy's PATH stays findable inside the sandbox."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "my-server").write_text("#!/bin/sh\n")
    (tools / "my-server").chmod(0o755)
    environ = {"PATH": f"{tools}:/usr/bin", "HOME": str(tmp_path)}
    config = {"command": "my-server", "policy": "strict"}
    policies = load_policies({"m": config}, environ=environ)

    spec = policies.for_server("m").sandbox_spec("m", policies.server("m"), environ)

    assert spec.env["PATH"] == f"{tools}:/usr/local/bin:/usr/bin:/bin"


def test_a_missing_secret_stops_the_spec_with_its_name(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """A secret whose variable is not set is an error, never an empty value."""
    path = write_policy("s", "isolation: {env: {secrets: {TOKEN: {fromEnv: NOPE}}}}\n")
    policies = load_policies({"s": server("s")})

    with pytest.raises(ConfigError) as caught:
        policies.for_server("s").sandbox_spec("s", policies.server("s"), {})

    assert str(caught.value) == (
        f"{path}: isolation.env.secrets.TOKEN: the proxy's environment has no NOPE"
    )


def test_a_granted_folder_that_does_not_exist_stops_the_spec(
    load_policies: LoadPolicies, tmp_path: Path
) -> None:
    """Mounting a missing folder would fail later and less clearly."""
    environ = {"WORKSPACE": str(tmp_path / "gone"), "HOME": str(tmp_path)}
    policies = load_policies({"f": server("read-only-folder")}, environ=environ)

    with pytest.raises(ConfigError) as caught:
        policies.for_server("f").sandbox_spec("f", policies.server("f"), environ)

    assert str(caught.value) == (
        f"{SHIPPED_POLICIES / 'read-only-folder.yaml'}: policy 'read-only-folder'"
        f" grants '{tmp_path / 'gone'}', which does not exist"
    )


def test_the_process_backend_is_described_as_having_the_hosts_network(
    load_policies: LoadPolicies,
) -> None:
    """The spec is honest: a plain process shares the host's network."""
    policies = load_policies({"p": server("strict", backend="process")})

    spec = policies.for_server("p").sandbox_spec("p", policies.server("p"), os.environ)

    assert spec.network.mode == "host"
