"""How each ecosystem installs a package into a folder, and what came out.

``install_recipe`` gives the command that runs inside the install sandbox: npm
for npx, uv for uvx, the interpreter's venv and pip for ``pipx run``, each told
the registry explicitly and given a download cache inside the target folder, so
the install writes nowhere else. ``read_result`` then reads, from files only
(no installed code runs on the host), the version that was installed and the
program to start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.install.host_tools import ask, host_program
from mcp_sandbox_proxy.install.launchers import Launch, Requirement
from mcp_sandbox_proxy.install.registries import Registry

# Variables that tell TLS clients which certificate authorities to trust: a host
# behind an inspecting proxy needs them in the install sandbox too.
TLS_VARIABLES = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "UV_NATIVE_TLS",
)
# Folders inside the target that only the install uses; removed once it is done.
SCRATCH_DIRS = (".npm-cache", ".uv-cache", ".pip-cache")

# Run by /bin/sh: make a virtual environment, then install into it.
_UV_SCRIPT = """\
uv=$1 python=$2 venv=$3
shift 3
"$uv" venv --quiet --python "$python" "$venv" &&
"$uv" pip install --quiet --python "$venv/bin/python" "$@"
"""
_PIP_SCRIPT = """\
python=$1 venv=$2
shift 2
"$python" -m venv "$venv" &&
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input "$@"
"""


@dataclass(frozen=True)
class Recipe:
    """The install command for the sandbox, and host paths it needs bound."""

    command: str
    args: tuple[str, ...]
    env: dict[str, str]
    runtime_paths: tuple[Path, ...]


def install_recipe(
    launch: Launch,
    requirements: Sequence[Requirement],
    registry: Registry,
    target: Path,
    environ: Mapping[str, str],
) -> Recipe:
    """The command that installs ``requirements`` into ``target``."""
    tls_env = {n: environ[n] for n in TLS_VARIABLES if environ.get(n)}
    tls_files = tuple(
        Path(value)
        for name, value in tls_env.items()
        if name != "UV_NATIVE_TLS" and Path(value).exists()
    )
    specs = [r.spec(launch.ecosystem) for r in requirements]
    if launch.ecosystem == "npm":
        npm = host_program("npm", environ, "npx servers are installed with npm")
        args = (
            "install", "--prefix", str(target), "--no-save", "--no-package-lock",
            "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=warn",
            f"--registry={registry.index_url}", *specs,
        )  # fmt: skip
        env = {**tls_env, "npm_config_cache": str(target / ".npm-cache")}
        return Recipe(str(npm), args, env, tls_files)

    python, prefix = _host_python(launch.python, environ)
    indexes = ["--index-url", registry.index_url]
    for url in registry.extra_index_urls:
        indexes += ["--extra-index-url", url]

    venv = str(target / "venv")
    if launch.runner == "uvx":
        uv = _host_uv(environ)
        env = {
            **tls_env,
            "UV_CACHE_DIR": str(target / ".uv-cache"),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": "copy",
            "UV_NO_CONFIG": "1",
        }
        args = ("-c", _UV_SCRIPT, "sh", str(uv), str(python), venv, *indexes, *specs)
        return Recipe("/bin/sh", args, env, (uv, prefix, *tls_files))

    env = {
        **tls_env,
        "PIP_CACHE_DIR": str(target / ".pip-cache"),
        "PIP_CONFIG_FILE": os.devnull,
    }
    args = ("-c", _PIP_SCRIPT, "sh", str(python), venv, *indexes, *specs)
    return Recipe("/bin/sh", args, env, (prefix, *tls_files))


def read_result(launch: Launch, target: Path) -> tuple[str, Path]:
    """The installed version of the launch's package and the program to run."""
    if launch.ecosystem == "npm":
        return _npm_result(launch, target)

    return _python_result(launch, target)


def _npm_result(launch: Launch, target: Path) -> tuple[str, Path]:
    name = launch.package.name
    manifest_path = target / "node_modules" / name / "package.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"npm installed no readable {name}/package.json: {exc}"
        ) from exc

    version = str(manifest.get("version", ""))
    bins = _npm_bins(name, manifest.get("bin"))
    # npx's rule: the named command, else the only program, else the one named
    # like the package without its scope.
    if launch.command is not None:
        chosen = launch.command
    elif len(bins) == 1:
        chosen = bins[0]
    else:
        chosen = name.rpartition("/")[2]

    if chosen not in bins and launch.command is None:
        listed = ", ".join(bins) or "none"
        raise ConfigError(
            f"package {name} {version} has no program named {chosen!r}"
            f" (it has: {listed}); name one with npx --package {name} PROGRAM"
        )

    program = target / "node_modules" / ".bin" / chosen
    if not program.exists():
        raise ConfigError(f"npm installed {name} {version} but no program {chosen!r}")

    return version, program


def _npm_bins(name: str, declared: object) -> list[str]:
    if isinstance(declared, str):
        return [name.rpartition("/")[2]]

    if isinstance(declared, dict):
        return sorted(str(key) for key in declared)  # type: ignore[misc]

    return []


def _python_result(launch: Launch, target: Path) -> tuple[str, Path]:
    venv = target / "venv"
    wanted = _normalized(launch.package.name)
    site = sorted(venv.glob("lib/python*/site-packages"))
    found = [
        dist
        for dist in metadata.distributions(path=[str(p) for p in site])
        if _normalized(dist.metadata["Name"] or "") == wanted
    ]
    if not found:
        raise ConfigError(f"the install left no {launch.package.name} in {venv}")

    dist = found[0]
    scripts = sorted(
        ep.name for ep in dist.entry_points if ep.group == "console_scripts"
    )
    chosen = launch.command or launch.package.name
    program = venv / "bin" / chosen
    if not program.exists():
        listed = ", ".join(scripts) or "none"
        raise ConfigError(
            f"package {launch.package.name} {dist.version} has no program named"
            f" {chosen!r} (it has: {listed}); name one with"
            f" --from {launch.package.name} PROGRAM"
        )

    return dist.version, program


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _host_uv(environ: Mapping[str, str]) -> Path:
    # uvx is uv's own shortcut: the uv beside it is the one the user runs.
    uvx = shutil.which("uvx", path=environ.get("PATH", os.defpath))
    if uvx is not None and (Path(uvx).parent / "uv").exists():
        return Path(uvx).parent / "uv"

    return host_program("uv", environ, "uvx servers are installed with uv")


def _host_python(
    requested: str | None, environ: Mapping[str, str]
) -> tuple[Path, Path]:
    """The real interpreter (past shims and symlinks) and its installation prefix.

    ``requested`` is what ``--python`` said: a path, a name on the PATH, or a
    version such as ``3.12`` (then ``python3.12``).
    """
    name = requested or "python3"
    if re.fullmatch(r"\d+(\.\d+)*", name):
        name = f"python{name}"

    program = host_program(name, environ, f"the install needs {name}")
    # A virtual environment's interpreter is not a whole installation: the
    # sandbox needs the base one, which venvs made from it point back to.
    query = (
        "import sys; print(getattr(sys, '_base_executable', sys.executable));"
        " print(sys.base_prefix)"
    )
    lines = ask([str(program), "-I", "-c", query], environ).splitlines()
    if len(lines) < 2:
        raise ConfigError(f"{program} did not say where it is installed")

    return Path(lines[0]), Path(lines[1])
