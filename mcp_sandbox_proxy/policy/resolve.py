"""A policy resolved for one server, and the ``SandboxSpec`` it becomes.

The server's overrides are applied, variables filled, and the result hashed.
Variables (``${WORKSPACE}``, ``${HOME}``) come from the server's ``vars`` map in
the configuration, then from the proxy's environment; ``~`` at the start of a
granted path stands for ``${HOME}``. Granted paths are resolved on the host
(symlinks followed) and mounted at the same path inside the sandbox, so paths in
tool arguments mean the same thing on both sides.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

from mcp_sandbox_proxy.config import BackendName, ServerConfig
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy.loader import LoadedPolicy
from mcp_sandbox_proxy.policy.models import Policy
from mcp_sandbox_proxy.policy.rules import resolve_glob_root
from mcp_sandbox_proxy.sandbox.spec import Limits, Mount, NetworkSpec, SandboxSpec

# Inside the sandbox HOME is the private tmpfs: the host's home is never there.
SANDBOX_HOME = "/tmp"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Twelve hex digits keep instance names short; a collision needs ~16 million
# distinct isolation profiles on one server.
PROFILE_HEX_CHARS = 12
LABEL_PREFIX = "io.mcp-sandbox-proxy."
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Per-call bounds enforced by the relay; they do not shape the sandbox.
_PER_CALL_LIMITS = ("callTimeout", "output")


def canonical_json(data: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept: equal content gives equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ResolvedPolicy:
    """The effective policy of one server's tools, ready to enforce.

    ``profile`` hashes only what shapes the sandbox: tools with the same profile
    share one sandbox instance. ``digest`` hashes the whole resolved content.
    """

    name: str
    digest: str
    profile: str
    backend: BackendName
    call_timeout_s: float
    max_result_bytes: int
    max_message_bytes: int
    allow_sampling: bool
    allow_elicitation: bool
    allow_roots: bool
    redact_names: tuple[str, ...]
    policy: Policy
    files: tuple[Path, ...]
    read_paths: tuple[str, ...]
    write_paths: tuple[str, ...]

    def sandbox_spec(
        self, server_name: str, server: ServerConfig, environ: Mapping[str, str]
    ) -> SandboxSpec:
        """The spec of this policy's sandbox instance for ``server``."""
        isolation = self.policy.isolation
        network = "egress" if isolation.network.allow else "none"
        return SandboxSpec(
            name=f"{server_name}:{self.profile}",
            command=server.command,
            args=server.args,
            env=self._environment(server, environ),
            cwd=server.cwd,
            mounts=self._mounts(),
            network=NetworkSpec("host" if self.backend == "process" else network),
            limits=self._limits(),
            image=isolation.docker.image,
            runtime=isolation.docker.runtime,
            labels={
                f"{LABEL_PREFIX}server": server_name,
                f"{LABEL_PREFIX}policy": self.name,
                f"{LABEL_PREFIX}profile": self.profile,
            },
        )

    def _environment(
        self, server: ServerConfig, environ: Mapping[str, str]
    ) -> dict[str, str]:
        env_policy = self.policy.isolation.env
        env = {"HOME": SANDBOX_HOME}
        if self.backend != "docker":
            # An image brings its own PATH (its ENV); a host sandbox needs one
            # that leads to the command as the host found it.
            env["PATH"] = sandbox_path(server.command, environ)

        env.update({n: environ[n] for n in env_policy.pass_ if n in environ})
        env.update(env_policy.set_)
        for name, ref in env_policy.secrets.items():
            env[name] = self._secret(name, ref.from_env, ref.from_file, environ)

        env.update(server.env)
        return env

    def _secret(
        self,
        name: str,
        from_env: str | None,
        from_file: str | None,
        environ: Mapping[str, str],
    ) -> str:
        where = f"isolation.env.secrets.{name}"
        if from_env is not None:
            if from_env not in environ:
                raise ConfigError(
                    f"{where}: the proxy's environment has no {from_env}",
                    source=str(self.files[0]),
                )

            return environ[from_env]

        try:
            return Path(cast(str, from_file)).read_text(encoding="utf-8").rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{where}: cannot read the secret file {from_file!r}: {exc}",
                source=str(self.files[0]),
            ) from exc

    def _mounts(self) -> tuple[Mount, ...]:
        mounts: list[Mount] = []
        for writable, paths in ((False, self.read_paths), (True, self.write_paths)):
            for path in paths:
                if not Path(path).exists():
                    raise ConfigError(
                        f"policy {self.name!r} grants {path!r}, which does not exist",
                        source=str(self.files[0]),
                    )

                mounts.append(Mount(Path(path), Path(path), writable=writable))

        return tuple(mounts)

    def _limits(self) -> Limits:
        limits = self.policy.isolation.limits
        return Limits(
            memory_bytes=limits.memory,
            pids=limits.pids,
            cpu_cores=limits.cpu,
            cpu_seconds=None if limits.cpu_time is None else int(limits.cpu_time),
            open_files=limits.open_files,
            file_size_bytes=limits.file_size,
            tmpfs_bytes=limits.tmpfs,
        )


def sandbox_path(command: str, environ: Mapping[str, str]) -> str:
    """The sandbox's PATH, led by the folder of a bare command found on the host."""
    if "/" in command:
        return SANDBOX_PATH

    found = shutil.which(command, path=environ.get("PATH", SANDBOX_PATH))
    folder = str(Path(found).parent) if found else None
    if folder is None or folder in SANDBOX_PATH.split(":"):
        return SANDBOX_PATH

    return f"{folder}:{SANDBOX_PATH}"


def resolve_policy(
    loaded: LoadedPolicy,
    server_name: str,
    server: ServerConfig,
    variables: Mapping[str, str],
) -> ResolvedPolicy:
    """``loaded`` as it applies to ``server``: overrides, variables, hashes."""
    data = loaded.policy.model_dump(mode="json", by_alias=True)
    isolation = data["isolation"]
    if server.backend is not None:
        isolation["backend"] = server.backend

    if server.image is not None:
        isolation["docker"]["image"] = server.image

    hint = (
        f"needed by server '{server_name}': set it under"
        f" mcpServers.{server_name}.vars or in the proxy's environment"
    )
    _fill_variables(data, Expander(variables, loaded.files[0], hint))
    policy = Policy.model_validate(data)
    return _resolved(loaded, policy, data)


def _resolved(loaded: LoadedPolicy, policy: Policy, data: Any) -> ResolvedPolicy:
    shape = json.loads(canonical_json(data["isolation"]))
    for key in _PER_CALL_LIMITS:
        del shape["limits"][key]

    secrets = policy.isolation.env.secrets
    write = policy.isolation.filesystem.write
    return ResolvedPolicy(
        name=loaded.name,
        digest=_sha256(canonical_json({"name": loaded.name, "policy": data})),
        profile=_sha256(canonical_json(shape))[:PROFILE_HEX_CHARS],
        backend=policy.isolation.backend,
        call_timeout_s=policy.isolation.limits.call_timeout,
        max_result_bytes=policy.results.max_bytes,
        max_message_bytes=policy.isolation.limits.output,
        allow_sampling=policy.server_requests.sampling,
        allow_elicitation=policy.server_requests.elicitation,
        allow_roots=policy.server_requests.roots,
        redact_names=tuple(dict.fromkeys([*secrets, *policy.redact])),
        policy=policy,
        files=loaded.files,
        read_paths=tuple(p for p in policy.isolation.filesystem.read if p not in write),
        write_paths=write,
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Expander:
    """Fills ``${NAME}`` from the variables; errors name the file and key."""

    def __init__(self, variables: Mapping[str, str], source: Path, hint: str) -> None:
        self.variables = variables
        self.source = source
        self.hint = hint

    def text(self, value: str, where: str) -> str:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if not _VARIABLE_NAME.match(name):
                self.fail(where, f"'${{{name}}}' is not a valid variable name")

            if name not in self.variables:
                self.fail(where, f"variable ${{{name}}} is not set")

            return self.variables[name]

        return _VARIABLE.sub(fill, value)

    def path(self, value: str, where: str) -> str:
        if value == "~" or value.startswith("~/"):
            value = "${HOME}" + value[1:]

        path = self.text(value, where)
        if not path.startswith("/"):
            self.fail(where, f"expected an absolute path, got {path!r}")

        return path

    def fail(self, where: str, problem: str) -> NoReturn:
        extra = f" ({self.hint})" if problem.startswith("variable") else ""
        raise ConfigError(f"{where}: {problem}{extra}", source=str(self.source))


def _fill_variables(data: dict[str, Any], expand: Expander) -> None:
    _fill_grants(data["isolation"]["filesystem"], expand)
    _fill_environment(data["isolation"]["env"], expand)
    _fill_within(data["arguments"], expand)


def _fill_grants(filesystem: dict[str, Any], expand: Expander) -> None:
    for kind in ("read", "write"):
        where = f"isolation.filesystem.{kind}"
        filled = [
            os.path.realpath(expand.path(p, f"{where}[{i}]"))
            for i, p in enumerate(filesystem[kind])
        ]
        filesystem[kind] = list(dict.fromkeys(filled))


def _fill_environment(env: dict[str, Any], expand: Expander) -> None:
    for name, value in env["set"].items():
        env["set"][name] = expand.text(value, f"isolation.env.set.{name}")

    for name, ref in env["secrets"].items():
        if ref["fromFile"] is not None:
            where = f"isolation.env.secrets.{name}.fromFile"
            ref["fromFile"] = os.path.realpath(expand.path(ref["fromFile"], where))


def _fill_within(arguments: dict[str, Any], expand: Expander) -> None:
    for tool_glob, rules in arguments.items():
        for arg_glob, rule in rules.items():
            where = f"arguments.{tool_glob}.{arg_glob}.within"
            rule["within"] = [
                resolve_glob_root(expand.path(g, f"{where}[{i}]"))
                for i, g in enumerate(rule["within"])
            ]
