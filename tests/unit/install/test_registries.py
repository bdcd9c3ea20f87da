"""Which registry hosts an install may reach, read from the host's own settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.install.registries import Endpoint, endpoint_of, find_registry

MIRROR = "https://mirror.example.test/simple"


def fake_npm(folder: Path, says: str) -> dict[str, str]:
    """An ``npm`` in ``folder`` that prints ``says`` for ``config get registry``;
    returns an environment whose PATH holds only it."""
    script = folder / "npm"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2 $3" = "config get registry" ]; then\n'
        f"  echo '{says}'\n"
        "else\n"
        "  echo unexpected >&2\n"
        "  exit 1\n"
        "fi\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": str(folder)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://reg.example.test/simple", Endpoint("reg.example.test", 443)),
        ("http://h.example.test:8080/x", Endpoint("h.example.test", 8080)),
        ("host.example.test", Endpoint("host.example.test", 443)),
        ("host.example.test:8443", Endpoint("host.example.test", 8443)),
        ("http://plain.example.test/", Endpoint("plain.example.test", 80)),
        ("HTTPS://Upper.Example.Test", Endpoint("upper.example.test", 443)),
    ],
)
def test_endpoint_of_urls_and_host_names(text: str, expected: Endpoint) -> None:
    """The port is the URL's, else the scheme's; a bare host means https."""
    assert endpoint_of(text) == expected


def test_an_endpoint_prints_as_host_and_port() -> None:
    """The form the network rules use."""
    assert str(Endpoint("mirror.example.test", 443)) == "mirror.example.test:443"


@pytest.mark.parametrize(
    "text", ["ftp://x.example.test", "https://", "", "host.example.test:port"]
)
def test_endpoint_of_bad_input_is_a_config_error(text: str) -> None:
    """Other schemes, no host, or a bad port are named in the error."""
    with pytest.raises(ConfigError, match="registry address"):
        endpoint_of(text)


def test_uv_default_index_is_the_python_index() -> None:
    """Only the configured mirror is reachable."""
    found = find_registry("pypi", {"UV_DEFAULT_INDEX": MIRROR})

    assert found.ecosystem == "pypi"
    assert found.index_url == MIRROR
    assert found.extra_index_urls == ()
    assert found.endpoints == (Endpoint("mirror.example.test", 443),)


def test_pip_index_with_extra_indexes() -> None:
    """Extra indexes are passed on, and their hosts are reachable too."""
    environ = {
        "PIP_INDEX_URL": MIRROR,
        "PIP_EXTRA_INDEX_URL": (
            "https://a.example.test/simple https://b.example.test/simple"
        ),
    }

    found = find_registry("pypi", environ)

    assert found.index_url == MIRROR
    assert found.extra_index_urls == (
        "https://a.example.test/simple",
        "https://b.example.test/simple",
    )
    assert found.endpoints == (
        Endpoint("mirror.example.test", 443),
        Endpoint("a.example.test", 443),
        Endpoint("b.example.test", 443),
    )


def test_a_file_index_is_skipped_for_the_next_variable() -> None:
    """A local folder of wheels is not a host to reach."""
    environ = {"UV_DEFAULT_INDEX": "file:///srv/wheels", "PIP_INDEX_URL": MIRROR}

    found = find_registry("pypi", environ)

    assert found.index_url == MIRROR
    assert found.endpoints == (Endpoint("mirror.example.test", 443),)


def test_a_file_extra_index_is_dropped() -> None:
    """Only remote extra indexes are kept."""
    environ = {
        "UV_DEFAULT_INDEX": MIRROR,
        "UV_EXTRA_INDEX_URL": "file:///srv/wheels https://a.example.test/simple",
    }

    found = find_registry("pypi", environ)

    assert found.extra_index_urls == ("https://a.example.test/simple",)


def test_without_variables_pips_default_index_is_used() -> None:
    """The default index and the host serving its files, both over https."""
    found = find_registry("pypi", {})

    assert found.index_url.startswith("https://")
    assert found.extra_index_urls == ()
    assert len(found.endpoints) == 2
    assert found.endpoints[0] == endpoint_of(found.index_url)
    assert all(e.port == 443 for e in found.endpoints)


def test_only_a_file_index_falls_back_to_the_default() -> None:
    """A file index alone is as good as none."""
    found = find_registry("pypi", {"PIP_INDEX_URL": "file:///srv/wheels"})

    assert found == find_registry("pypi", {})


def test_extra_hosts_are_appended_without_duplicates() -> None:
    """Hosts a mirror sends downloads to are added once, in order."""
    found = find_registry(
        "pypi",
        {"UV_DEFAULT_INDEX": MIRROR},
        extra_hosts=[
            "files.example.test",
            "mirror.example.test",
            "files.example.test:443",
            "cdn.example.test:8443",
        ],
    )

    assert found.endpoints == (
        Endpoint("mirror.example.test", 443),
        Endpoint("files.example.test", 443),
        Endpoint("cdn.example.test", 8443),
    )


def test_npm_registry_is_asked_of_npm(tmp_path: Path) -> None:
    """npm's configured registry is the index and its only host."""
    environ = fake_npm(tmp_path, "https://npm.example.test/")

    found = find_registry("npm", environ)

    assert found.ecosystem == "npm"
    assert found.index_url == "https://npm.example.test/"
    assert found.extra_index_urls == ()
    assert found.endpoints == (Endpoint("npm.example.test", 443),)


def test_npm_registry_with_extra_hosts(tmp_path: Path) -> None:
    """Extra hosts apply to npm as well."""
    environ = fake_npm(tmp_path, "http://npm.example.test:4873/")

    found = find_registry("npm", environ, extra_hosts=["cdn.example.test"])

    assert found.endpoints == (
        Endpoint("npm.example.test", 4873),
        Endpoint("cdn.example.test", 443),
    )


def test_npm_printing_no_url_is_a_config_error(tmp_path: Path) -> None:
    """Whatever npm said is quoted."""
    environ = fake_npm(tmp_path, "garbage")

    with pytest.raises(ConfigError, match="npm named no registry URL") as exc:
        find_registry("npm", environ)

    assert "garbage" in str(exc.value)


def test_npm_missing_from_the_path_is_a_config_error(tmp_path: Path) -> None:
    """The error says npm is needed and not found."""
    with pytest.raises(ConfigError, match="npm is not on the PATH"):
        find_registry("npm", {"PATH": str(tmp_path)})


def test_a_named_uv_index_contributes_its_url() -> None:
    """``UV_INDEX`` entries may be written ``name=URL``, as uv allows."""
    environ = {
        "UV_DEFAULT_INDEX": "https://mirror.example.test/simple",
        "UV_INDEX": "corp=https://corp.example.test/simple",
    }
    found = find_registry("pypi", environ)

    assert found.extra_index_urls == ("https://corp.example.test/simple",)
    assert Endpoint("corp.example.test", 443) in found.endpoints
