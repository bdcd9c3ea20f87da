"""The schema of a policy file, with its sizes, durations and egress entries.

Pydantic models; units and ``host:port`` entries are parsed where they are read.
Every key is optional; an absent key keeps the closed default written here. Keys are
camelCase as in the files, and unknown keys are refused.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mcp_sandbox_proxy.config import BackendName

KIB = 1024
MIB = 1024 * KIB

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": KIB,
    "mib": MIB,
    "gib": 1024 * MIB,
    "tib": 1024 * 1024 * MIB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_DURATION_UNITS_S = {
    "": 1.0,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$)(?:{_LABEL}\.)*{_LABEL}$")
# Names that say "this is a credential": their values belong under env.secrets.
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE
)
UNLIMITED = "unlimited"


def parse_size(value: Any) -> int | None:
    """Bytes from ``512MiB``, ``1.5GiB``, ``64kB`` or a plain integer."""
    if value == UNLIMITED:
        return None

    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value

    match = _AMOUNT.match(value) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as '512MiB' or '64KiB', got {value!r}")

    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_bounded_size(value: Any) -> int:
    """A size where ``unlimited`` has no meaning (tmpfs, result caps)."""
    size = parse_size(value)
    if size is None:
        raise ValueError(
            "expected a size such as '512MiB' here; it cannot be unlimited"
        )

    return size


def parse_duration(value: Any) -> float:
    """Seconds from ``60s``, ``500ms``, ``2m``, ``1h`` or a plain number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)

    match = _AMOUNT.match(value) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _DURATION_UNITS_S or float(match.group(1)) <= 0:
        raise ValueError(f"expected a duration such as '60s' or '500ms', got {value!r}")

    return float(match.group(1)) * _DURATION_UNITS_S[unit]


def parse_optional_duration(value: Any) -> float | None:
    """A duration, or ``unlimited``."""
    return None if value == UNLIMITED else parse_duration(value)


def parse_cores(value: Any) -> float | None:
    """CPU cores from ``1.5``, ``"0.5"`` or ``unlimited``."""
    if value == UNLIMITED:
        return None

    try:
        cores = float(value)
    except (TypeError, ValueError):
        cores = 0.0

    if isinstance(value, bool) or cores <= 0:
        raise ValueError(f"expected a number of CPU cores such as 1.5, got {value!r}")

    return cores


def parse_count(value: Any) -> int | None:
    """A positive whole number, or ``unlimited``."""
    if value == UNLIMITED:
        return None

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")

    return value


@dataclass(frozen=True)
class EgressRule:
    """One parsed ``network.allow`` entry: a host pattern and a port (None: any)."""

    host: str
    port: int | None

    @property
    def is_everything(self) -> bool:
        """Whether the rule lets the sandbox reach any address at all."""
        if self.host == "*":
            return True

        network = _as_network(self.host)
        return network is not None and network.prefixlen == 0

    def matches(self, host: str, port: int) -> bool:
        """Whether a connection to ``host:port`` falls under this rule.

        ``*.example.com`` matches names below example.com, not example.com itself.
        """
        if self.port is not None and port != self.port:
            return False

        host = host.lower().rstrip(".")
        if self.host == "*" or host == self.host:
            return True

        if self.host.startswith("*."):
            return host.endswith(self.host[1:])

        network = _as_network(self.host)
        try:
            return network is not None and ipaddress.ip_address(host) in network
        except ValueError:
            return False


def _as_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def parse_egress(entry: str) -> EgressRule:
    """Parse ``host:port``: a name, ``*.domain``, an IP or CIDR (IPv6 in brackets)."""
    expected = (
        "expected 'host:port' with a name, '*.domain', an IP address or a CIDR"
        " (IPv6 in brackets) and a port number or '*'"
    )
    host, sep, port_text = entry.strip().rpartition(":")
    if not sep or not host or (":" in host and not host.startswith("[")):
        raise ValueError(f"{expected}, got {entry!r}")

    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]

    if port_text == "*":
        port = None
    elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"port must be a number from 1 to 65535 or '*', in {entry!r}")

    name = host[2:] if host.startswith("*.") else host
    if host != "*" and _as_network(host) is None and not _HOST_NAME.match(name):
        raise ValueError(f"{expected}, got {entry!r}")

    return EgressRule(host, port)


def _check_egress(entry: str) -> str:
    parse_egress(entry)
    return entry


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc

    return pattern


def _check_env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid environment variable name")

    return name


def _check_glob(glob: str) -> str:
    if not glob.strip():
        raise ValueError("a tool name or glob must not be empty")

    return glob


def _unlimited_as_word(value: float | None) -> float | str:
    # Written back as in the files, so a dumped policy validates again.
    return UNLIMITED if value is None else value


_AsWord = PlainSerializer(_unlimited_as_word, return_type=Any)
Size = Annotated[int, BeforeValidator(parse_bounded_size)]
OptionalSize = Annotated[int | None, BeforeValidator(parse_size), _AsWord]
Duration = Annotated[float, BeforeValidator(parse_duration)]
OptionalDuration = Annotated[
    float | None, BeforeValidator(parse_optional_duration), _AsWord
]
Cores = Annotated[float | None, BeforeValidator(parse_cores), _AsWord]
Count = Annotated[int | None, BeforeValidator(parse_count), _AsWord]
EgressEntry = Annotated[str, AfterValidator(_check_egress)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
Glob = Annotated[str, AfterValidator(_check_glob)]
Regex = Annotated[str, AfterValidator(_check_regex)]
JsonScalar = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class Filesystem(_Strict):
    """Host paths granted to the server, mounted at the same path inside."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


class Network(_Strict):
    """Egress: none unless ``allow`` lists ``host:port`` entries.

    ``allowPrivate`` is an opt-out: it lets allowed names resolve to private,
    loopback or link-local addresses, which exposes services on the host and LAN.
    """

    allow: tuple[EgressEntry, ...] = ()
    allow_private: bool = False

    @model_validator(mode="before")
    @classmethod
    def _none_shorthand(cls, value: Any) -> Any:
        # ``network: none`` is shorthand for no egress at all.
        return {} if value == "none" else value

    @property
    def rules(self) -> tuple[EgressRule, ...]:
        """The parsed ``allow`` entries."""
        return tuple(parse_egress(entry) for entry in self.allow)


class SecretRef(_Strict):
    """Where a secret's value comes from: never the policy file itself."""

    from_env: EnvName | None = None
    from_file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.from_env is None) == (self.from_file is None):
            raise ValueError("give exactly one of 'fromEnv' or 'fromFile'")

        return self


class Environment(_Strict):
    """The server's environment: nothing of the proxy's unless named here."""

    pass_: tuple[EnvName, ...] = Field(default=(), alias="pass")
    set_: dict[EnvName, str] = Field(default_factory=dict, alias="set")
    secrets: dict[EnvName, SecretRef] = Field(default_factory=dict)

    @field_validator("set_")
    @classmethod
    def _no_written_secrets(cls, values: dict[str, str]) -> dict[str, str]:
        for name in values:
            if _SECRET_NAME.search(name):
                raise ValueError(
                    f"{name} looks like a secret: reference it under env.secrets"
                    " with fromEnv or fromFile instead of writing its value here"
                )

        return values


class Limits(_Strict):
    """Resource bounds of one sandbox and of each call; ``unlimited`` opts out."""

    memory: OptionalSize = 512 * MIB
    cpu: Cores = 1.0
    cpu_time: OptionalDuration = None
    pids: Count = 128
    open_files: Count = 256
    file_size: OptionalSize = 64 * MIB
    tmpfs: Size = 64 * MIB
    call_timeout: Duration = 60.0
    output: Size = 16 * MIB


class Docker(_Strict):
    """The image and OCI runtime used by the ``docker`` backend."""

    image: str | None = None
    runtime: str | None = None


class Isolation(_Strict):
    """Everything that shapes the sandbox; equal isolation shares an instance."""

    backend: BackendName = "namespace"
    filesystem: Filesystem = Filesystem()
    network: Network = Network()
    env: Environment = Environment()
    limits: Limits = Limits()
    docker: Docker = Docker()


class ToolRules(_Strict):
    """Which tools may be called: names or globs; deny wins over allow."""

    allow: tuple[Glob, ...] = ()
    deny: tuple[Glob, ...] = ()
    default: Literal["allow", "deny"] = "allow"


class ArgumentRule(_Strict):
    """Checks on one argument: ``maxBytes`` on the whole value, the others on
    each item of a list value.

    ``grant`` and ``within`` treat the value as a host path, resolved (``..`` and
    symlinks) before it is compared: ``grant: read`` needs it inside a granted
    folder, ``grant: write`` inside a writable one, ``within`` inside a glob.
    """

    max_bytes: Size | None = None
    pattern: Regex | None = None
    enum: tuple[JsonScalar, ...] | None = None
    grant: Literal["read", "write"] | None = None
    within: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> ArgumentRule:
        if not self.model_fields_set:
            raise ValueError(
                "give at least one of 'maxBytes', 'pattern', 'enum', 'grant', 'within'"
            )

        return self


class Rate(_Strict):
    """How many calls a tool may take per minute (None: no bound)."""

    per_minute: int | None = Field(default=None, ge=1)


class ServerRequests(_Strict):
    """Requests the server may send to the client; each one is an opt-in."""

    sampling: bool = False
    elicitation: bool = False
    roots: bool = False


class Results(_Strict):
    """What is done to a result before the client sees it.

    ``allowTerminalEscapes`` and ``allowInvisibleUnicode`` are opt-outs: with them a
    server can hide instructions from the person reading, or rewrite their terminal.
    """

    max_bytes: Size = 1 * MIB
    allow_terminal_escapes: bool = False
    allow_invisible_unicode: bool = False


class Policy(_Strict):
    """One policy file, or the merged result of a chain of ``extends``."""

    description: str = ""
    extends: str | None = None
    isolation: Isolation = Isolation()
    tools: ToolRules = ToolRules()
    arguments: dict[Glob, dict[str, ArgumentRule]] = Field(default_factory=dict)
    rate: Rate = Rate()
    server_requests: ServerRequests = ServerRequests()
    results: Results = Results()
    redact: tuple[str, ...] = ()
