"""Which registry hosts an install may reach: those the host's own clients use.

The registry is not written into the proxy. npm is asked for its configured
``registry`` and the Python index comes from the variables that uv and pip read
(``UV_DEFAULT_INDEX``, ``UV_INDEX_URL``, ``PIP_INDEX_URL`` and their extra-index
companions), else pip's built-in default index and the host that index serves
its files from. So a company mirror set up for npm or pip is the one the
sandboxed install reaches, and nothing else is. ``extra_hosts`` adds hosts a
mirror sends downloads to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.install.host_tools import ask, host_program
from mcp_sandbox_proxy.install.launchers import Ecosystem

_DEFAULT_PORTS = {"https": 443, "http": 80}
_PRIMARY_INDEX_VARIABLES = ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL")
_EXTRA_INDEX_VARIABLES = ("UV_INDEX", "UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL")


@dataclass(frozen=True)
class Endpoint:
    """One host and port an install may connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Registry:
    """Where one ecosystem's packages come from.

    ``index_url`` is handed to the installer; ``extra_index_urls`` too;
    ``endpoints`` are every host the install may reach.
    """

    ecosystem: Ecosystem
    index_url: str
    extra_index_urls: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]


def find_registry(
    ecosystem: Ecosystem,
    environ: Mapping[str, str],
    extra_hosts: Sequence[str] = (),
) -> Registry:
    """The registry of ``ecosystem`` as this host's clients are set up to use."""
    if ecosystem == "npm":
        index, extras, more = _npm_registry(environ), (), ()
    else:
        index, extras, more = _python_index(environ)

    endpoints = [endpoint_of(url) for url in (index, *extras)]
    endpoints += [endpoint_of(host) for host in (*more, *extra_hosts)]
    return Registry(ecosystem, index, extras, tuple(dict.fromkeys(endpoints)))


def endpoint_of(url_or_host: str) -> Endpoint:
    """The host and port of a URL, or of ``host[:port]`` (port 443 by default)."""
    text = url_or_host if "://" in url_or_host else f"https://{url_or_host}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"registry address {url_or_host!r}: {exc}") from exc

    if not parts.hostname or parts.scheme not in _DEFAULT_PORTS:
        raise ConfigError(
            f"registry address {url_or_host!r} is not an http(s) URL or a host name"
        )

    return Endpoint(parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme])


def _npm_registry(environ: Mapping[str, str]) -> str:
    npm = host_program("npm", environ, "npx servers are installed with npm")
    # npm reads the user's and the global npmrc and its own default.
    url = ask([str(npm), "config", "get", "registry"], environ).strip()
    if "://" not in url:
        raise ConfigError(f"npm named no registry URL (it said {url!r})")

    return url


def _python_index(
    environ: Mapping[str, str],
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The primary index, extra indexes, and hosts that serve the files."""
    extras = tuple(
        url
        for name in _EXTRA_INDEX_VARIABLES
        for entry in environ.get(name, "").split()
        if _is_remote(url := _index_url(entry))
    )
    for name in _PRIMARY_INDEX_VARIABLES:
        url = environ.get(name, "").strip()
        if _is_remote(url):
            return url, extras, ()

    index, files_host = _pip_default_index()
    return index, extras, (files_host,)


def _pip_default_index() -> tuple[str, str]:
    try:
        # pip's model of the public index: its simple API and the host that
        # serves the distribution files it links to.
        from pip._internal.models.index import PyPI  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigError(
            "no Python package index is set (UV_DEFAULT_INDEX, UV_INDEX_URL or"
            " PIP_INDEX_URL) and pip, which knows the default one, is not"
            " installed beside the proxy; set one of those variables"
        ) from exc

    return str(PyPI.simple_url), str(PyPI.file_storage_domain)


def _index_url(entry: str) -> str:
    """The URL of an index entry; uv's ``UV_INDEX`` may name it: ``name=URL``."""
    name, equals, url = entry.partition("=")
    return url if equals and "://" not in name else entry


def _is_remote(url: str) -> bool:
    return url.startswith(("https://", "http://"))
