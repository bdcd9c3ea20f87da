"""Finding a server's runtime on the host: venvs, node_modules, scripts, shebangs."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.sandbox.runtime import (
    BROAD_DIRS,
    find_runtime,
    minimal_cover,
    resolve_command,
)
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

PATH = os.environ.get("PATH", os.defpath)


def runtime_of(
    command: str, *args: str, cwd: Path | None = None, network: bool = False
):
    spec = SandboxSpec(
        name="t", command=command, args=args, env={"PATH": PATH}, cwd=cwd
    )
    return find_runtime(spec, network=network)


def covered(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def test_a_venv_interpreter_brings_its_venv_and_base_prefix() -> None:
    """This test run's interpreter: its venv and the prefix it was made from."""
    runtime = runtime_of(sys.executable, "-c", "pass")
    assert covered(Path(sys.prefix), runtime.paths)
    assert (
        covered(Path(sys.base_prefix) / "lib", runtime.paths)
        or sys.base_prefix == "/usr"
    )
    assert runtime.executable == Path(sys.executable)


def test_a_script_argument_brings_its_folder(tmp_path: Path) -> None:
    """``python server.py`` binds the folder of the script (imports of siblings)."""
    script = tmp_path / "server.py"
    script.write_text("print('hi')\n")
    runtime = runtime_of(sys.executable, "-u", "server.py", "--flag", cwd=tmp_path)
    assert tmp_path in runtime.paths


@pytest.fixture
def script_in_tmp() -> Iterator[Path]:
    """A script placed directly in /tmp, a folder never bound whole."""
    script = Path("/tmp") / f"mcp-sandbox-runtime-{uuid.uuid4().hex}.py"
    script.write_text("print('hi')\n")
    yield script
    script.unlink()


def test_a_script_in_a_broad_folder_is_bound_alone(script_in_tmp: Path) -> None:
    """A script directly in /tmp is bound as one file, not the whole of /tmp."""
    runtime = runtime_of(sys.executable, str(script_in_tmp))
    assert script_in_tmp in runtime.paths and Path("/tmp") not in runtime.paths


def test_python_dash_m_names_no_script(tmp_path: Path) -> None:
    """``-m module`` is not a path: nothing beyond the interpreter is bound."""
    (tmp_path / "http").mkdir()
    runtime = runtime_of(sys.executable, "-m", "http", cwd=tmp_path)
    assert not covered(tmp_path, runtime.paths)


def test_a_shebang_through_env_brings_the_interpreter(tmp_path: Path) -> None:
    """``#!/usr/bin/env python3`` resolves python3 on the server's PATH."""
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    tool.chmod(0o755)
    python3 = resolve_command("python3", {"PATH": PATH}, None)
    runtime = runtime_of(str(tool))
    assert covered(tool, runtime.paths)
    assert covered(python3, runtime.paths) or covered(python3, (Path("/usr"),))


@pytest.mark.npm
def test_an_npm_server_brings_its_whole_node_modules(everything_server: Path) -> None:
    """An npm bin link binds the node_modules tree it lives in; node is in /usr."""
    runtime = runtime_of(str(everything_server))
    modules = everything_server.parent.parent
    assert modules.name == "node_modules" and modules in runtime.paths


def test_no_home_root_or_tmp_is_ever_bound_whole(everything_server: Path) -> None:
    """Whatever the layout, no broad folder or home directory is bound."""
    for runtime in (runtime_of(sys.executable), runtime_of(str(everything_server))):
        for path in runtime.paths:
            assert path not in BROAD_DIRS and path != Path.home()
            assert path.parent != Path("/home")


def test_certificates_come_only_with_network_access() -> None:
    """/etc/ssl/certs is bound for egress servers only; name files never."""
    offline = runtime_of(sys.executable)
    online = runtime_of(sys.executable, network=True)
    assert Path("/etc/ssl/certs") not in offline.etc_files
    assert (
        Path("/etc/ssl/certs") in online.etc_files
        or not Path("/etc/ssl/certs").exists()
    )
    assert Path("/etc/passwd") not in online.etc_files


def test_the_search_path_keeps_only_what_the_sandbox_can_see(tmp_path: Path) -> None:
    """PATH entries outside the bound runtime are dropped; the system's are kept."""
    spec = SandboxSpec(
        name="t",
        command=sys.executable,
        env={"PATH": f"{tmp_path}:{Path(sys.executable).parent}:/usr/bin"},
    )
    runtime = find_runtime(spec, network=False)
    assert str(tmp_path) not in runtime.search_path
    assert str(Path(sys.executable).parent) in runtime.search_path
    assert "/usr/bin" in runtime.search_path


def test_a_missing_command_is_named_in_the_error() -> None:
    """A command that is not on the server's PATH fails with its name."""
    with pytest.raises(SandboxStartFailed, match="no-such-server"):
        runtime_of("no-such-server")


def test_minimal_cover_drops_nested_and_system_paths() -> None:
    """Paths inside another chosen path, or inside /usr, are not bound twice."""
    paths = [Path("/opt/a/b"), Path("/opt/a"), Path("/usr/lib/x"), Path("/srv/c")]
    assert minimal_cover(paths) == (Path("/opt/a"), Path("/srv/c"))
