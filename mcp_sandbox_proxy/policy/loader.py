"""Finding policy files in the library, reading them, and resolving ``extends``.

The library is searched in order: the folders of ``proxy.policyPaths`` (relative to
the configuration file), then the policies shipped with the proxy. A policy's name
is its file name without ``.yaml``; the first folder holding it wins, so a user's
``strict.yaml`` shadows the shipped one, and may itself ``extends: strict`` to
build on it. Extending merges mappings key by key; any other value (a list, a
string, a number) of the extending file replaces the inherited one whole.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from mcp_sandbox_proxy.config import ProxyConfig
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy.models import Policy

SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"
POLICY_SUFFIXES = (".yaml", ".yml")
_Data = Mapping[str, Any]
# What a key needed, by pydantic's error type, in the words of a YAML file.
_EXPECTED = {
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
}
POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy with its ``extends`` chain merged; ``files`` runs leaf to root."""

    name: str
    policy: Policy
    files: tuple[Path, ...]


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        self.flatten_mapping(node)
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = str(key_node.value)
            if isinstance(key_node, yaml.ScalarNode) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice", key_node.start_mark
                )

            seen.add(key)

        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: Path) -> Any:
    """The document; errors name the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{where}invalid YAML: {problem}", source=str(source)
        ) from exc


def compose_yaml(text: str) -> yaml.Node | None:
    """The node tree of a document already parsed, for the line numbers of an
    error: only a file found wrong is read a second time."""
    try:
        return _Loader(text).get_single_node()
    except yaml.YAMLError:
        return None


def line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the deepest part of ``loc`` found under ``node``."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next((p for p in node.value if p[0].value == str(part)), None)
            if pair is None:
                break

            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break

            item: yaml.Node = node.value[part]
            line, node = item.start_mark.line + 1, item
        else:
            break

    return line


def key_path(loc: Sequence[str | int]) -> str:
    """``isolation.network.allow[0]`` from pydantic's location tuple."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"

    return text.lstrip(".") or "(top level)"


def describe_error(error: ErrorDetails, model: type[Any] = Policy) -> str:
    """What was expected, in the words a person editing the file needs."""
    kind, got = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key{_suggestion(error['loc'], model)}"

    if kind == "missing":
        return "required key is missing"

    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))

    if kind == "literal_error":
        return f"expected one of {error.get('ctx', {}).get('expected')}, got {got!r}"

    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got!r}"

    message = error["msg"].replace("Input should be", "expected")
    return f"{message}, got {got!r}"


def _suggestion(loc: tuple[int | str, ...], model: type[Any]) -> str:
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(_field_name(model, part))
        annotation = getattr(field, "annotation", None)
        if not isinstance(annotation, type):
            return ""

        model = annotation

    keys = [f.alias or n for n, f in getattr(model, "model_fields", {}).items()]
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_name(model: type[Any], alias: str | int) -> str:
    fields: Mapping[str, Any] = getattr(model, "model_fields", {})
    return next((n for n, f in fields.items() if (f.alias or n) == alias), "")


def format_errors(exc: ValidationError, node: yaml.Node | None) -> str:
    """One ``line N: key.path: what`` entry per problem, joined by ``; ``."""
    lines: list[str] = []
    for error in exc.errors():
        line = line_of(node, error["loc"])
        where = f"line {line}: " if line else ""
        lines.append(f"{where}{key_path(error['loc'])}: {describe_error(error)}")

    return "; ".join(lines)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merged key by key; any other value of ``override`` replaces."""
    merged = dict(base)
    for key, value in override.items():
        inherited = merged.get(key)
        if isinstance(value, Mapping) and isinstance(inherited, Mapping):
            merged[key] = merge(cast(_Data, inherited), cast(_Data, value))
        else:
            merged[key] = value

    return merged


class PolicyLibrary:
    """The ordered folders of policy files, and the policies read from them."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = tuple(folders)
        self._loaded: dict[str, LoadedPolicy] = {}

    @classmethod
    def for_config(cls, config: ProxyConfig) -> PolicyLibrary:
        """The user's ``policyPaths`` (relative to the config file), then ours."""
        base = config.source.parent if config.source else Path.cwd()
        folders: list[Path] = []
        for index, folder in enumerate(config.proxy.policy_paths):
            path = base / folder.expanduser()
            if not path.is_dir():
                raise ConfigError(
                    f"proxy.policyPaths[{index}]: folder {str(path)!r} does not exist",
                    source=str(config.source) if config.source else None,
                )

            folders.append(path)

        return cls([*folders, SHIPPED_POLICIES])

    def find(self, name: str, *, after: Path | None = None) -> Path | None:
        """The file of policy ``name``; with ``after``, only in later folders."""
        folders = self.folders
        if after is not None:
            folders = folders[self._folder_index(after) + 1 :]

        for folder in folders:
            for suffix in POLICY_SUFFIXES:
                path = folder / f"{name}{suffix}"
                if path.is_file():
                    return path

        return None

    def files(self) -> list[Path]:
        """Every policy file in every folder, in search order."""
        return [
            path
            for folder in self.folders
            if folder.is_dir()
            for path in sorted(folder.iterdir())
            if path.suffix in POLICY_SUFFIXES and path.is_file()
        ]

    def load(self, name: str) -> LoadedPolicy:
        """Policy ``name`` with its ``extends`` chain merged; read once."""
        if name not in self._loaded:
            path = self.find(name) if POLICY_NAME.match(name) else None
            if path is None:
                raise ConfigError(self._missing(name))

            self._loaded[name] = self.load_file(path)

        return self._loaded[name]

    def load_file(self, path: Path) -> LoadedPolicy:
        """The policy in ``path``, with its ``extends`` chain merged."""
        chain: list[Path] = []
        data = self._merged(path, chain)
        data.pop("extends", None)
        try:
            policy = Policy.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_errors(exc, None), source=str(path)) from exc

        return LoadedPolicy(path.stem, policy, tuple(chain))

    def _merged(self, path: Path, chain: list[Path]) -> dict[str, Any]:
        if path in chain:
            names = " -> ".join(p.stem for p in [*chain, path])
            raise ConfigError(
                f"extends: the chain loops: {names}", source=str(chain[0])
            )

        chain.append(path)
        data = read_policy_file(path)
        parent = data.get("extends")
        if parent is None:
            return data

        after = path if parent == path.stem else None
        parent_path = (
            self.find(parent, after=after) if POLICY_NAME.match(parent) else None
        )
        if parent_path is None:
            node = compose_yaml(path.read_text(encoding="utf-8"))
            line = line_of(node, ["extends"])
            raise ConfigError(
                f"line {line}: extends: {self._missing(parent)}", source=str(path)
            )

        return merge(self._merged(parent_path, chain), data)

    def _folder_index(self, path: Path) -> int:
        parents = [i for i, f in enumerate(self.folders) if path.parent == f]
        return parents[0] if parents else len(self.folders)

    def _missing(self, name: str) -> str:
        searched = ", ".join(str(f) for f in self.folders)
        if not POLICY_NAME.match(name):
            return (
                f"{name!r} is not a valid policy name (letters, digits, '_', '-', '.')"
            )

        return f"no policy named {name!r} in the library (searched: {searched})"


def read_policy_file(path: Path) -> dict[str, Any]:
    """Read one file and validate it on its own; errors name file, line and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the policy file: {exc}", source=str(path)
        ) from exc

    data = parse_yaml(text, path)
    if data is None:
        return {}

    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of policy keys", source=str(path))

    try:
        Policy.model_validate(data)
    except ValidationError as exc:
        node = compose_yaml(text)
        raise ConfigError(format_errors(exc, node), source=str(path)) from exc

    return cast("dict[str, Any]", data)
