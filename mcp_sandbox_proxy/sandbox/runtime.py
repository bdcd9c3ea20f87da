"""Finding the host files a server's command needs, and nothing beyond them.

A sandbox that builds its own filesystem must bind the server's runtime into it:
the system directories (``/usr`` and its ``/bin``, ``/lib`` companions), the
interpreter named by a shebang, a Python virtual environment and the prefix of its
base interpreter, the ``node_modules`` tree of a Node script, and the script that
the arguments name. Everything is bound read-only at its own host path, so that
paths baked into virtual environments and shebangs keep working.

Some directories are never bound whole, however a server is laid out: home
directories, ``/root``, ``/tmp`` and the like; a script found directly in one of
them is bound as a single file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

# Bound read-only in every sandbox: the system's programs and shared libraries.
SYSTEM_DIRS = tuple(
    Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
)

# Pieces of /etc that programs read at start-up and that tell nothing about the host
# beyond its time zone.
ETC_ALWAYS = tuple(
    Path(p)
    for p in (
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/localtime",
        "/etc/timezone",
    )
)

# Pieces of /etc for servers given network access: certificate stores and the
# files that map service and protocol names.
ETC_NETWORK = tuple(
    Path(p)
    for p in (
        "/etc/ssl/certs",
        "/etc/ssl/openssl.cnf",
        "/etc/ca-certificates",
        "/etc/pki/tls/certs",
        "/etc/pki/ca-trust",
        "/etc/nsswitch.conf",
        "/etc/services",
        "/etc/protocols",
    )
)

# Directories too broad to bind whole, whatever asks for them.
BROAD_DIRS = frozenset(
    Path(p)
    for p in (
        "/", "/root", "/home", "/tmp", "/var", "/var/tmp", "/etc", "/run", "/srv",
        "/opt", "/mnt", "/media", "/dev", "/proc", "/sys", "/boot",
    )
)  # fmt: skip

# Interpreters whose first non-option argument is the script they run.
SCRIPT_INTERPRETERS = ("python", "node", "nodejs", "bun", "deno")

# Shebangs and symlinks are followed this deep, then the command is refused.
MAX_INDIRECTIONS = 8
SHEBANG_MAX_BYTES = 256

DEFAULT_SEARCH_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


@dataclass(frozen=True)
class Runtime:
    """What one command needs from the host, all bound read-only at the same path."""

    executable: Path
    paths: tuple[Path, ...]
    etc_files: tuple[Path, ...]
    search_path: tuple[str, ...]


def find_runtime(spec: SandboxSpec, *, network: bool) -> Runtime:
    """The runtime of ``spec``'s command, discovered from the command and arguments."""
    executable = resolve_command(spec.command, spec.env, spec.cwd)
    found = _Finder(spec.env)
    found.add_program(executable)
    script = script_argument(executable, spec.args, spec.cwd)
    if script is not None:
        found.add_program(script, is_script=True)

    for extra in spec.runtime_paths:
        found.add(extra)

    paths = minimal_cover(found.paths)
    etc = [p for p in (*ETC_ALWAYS, *(ETC_NETWORK if network else ())) if p.exists()]
    return Runtime(
        executable=executable,
        paths=paths,
        etc_files=tuple(etc),
        search_path=_search_path(spec.env.get("PATH", ""), paths),
    )


def resolve_command(command: str, env: Mapping[str, str], cwd: Path | None) -> Path:
    """The absolute host path of ``command``, looked up on the server's own PATH."""
    if "/" in command:
        candidate = (cwd or Path.cwd()) / command
        found = str(candidate) if os.access(candidate, os.X_OK) else None
    else:
        found = shutil.which(command, path=env.get("PATH", os.defpath))

    if found is None:
        raise SandboxStartFailed(
            f"command {command!r} was not found or is not executable"
            " (looked up on the PATH given to the server)"
        )

    return _normal(Path(found))


def script_argument(
    executable: Path, args: Iterable[str], cwd: Path | None
) -> Path | None:
    """The script an interpreter is asked to run: its first non-option argument."""
    if not executable.resolve().name.startswith(SCRIPT_INTERPRETERS):
        return None

    for arg in args:
        if arg in ("-m", "-c", "-e", "--eval"):
            return None

        if arg.startswith("-"):
            continue

        path = (cwd or Path.cwd()) / arg
        return _normal(path) if path.is_file() else None

    return None


def shebang_interpreter(path: Path, env: Mapping[str, str]) -> Path | None:
    """The interpreter a script's ``#!`` line names, resolved like the kernel does."""
    try:
        with path.open("rb") as script:
            head = script.read(SHEBANG_MAX_BYTES)
    except OSError:
        return None

    if not head.startswith(b"#!"):
        return None

    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None

    if Path(words[0]).name == "env":
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return resolve_command(names[0], env, None) if names else None

    return Path(words[0])


def minimal_cover(paths: Iterable[Path]) -> tuple[Path, ...]:
    """``paths`` without those inside another, and without the system directories."""
    chosen: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        inside = (*SYSTEM_DIRS, *chosen)
        if not any(path == c or path.is_relative_to(c) for c in inside):
            chosen.append(path)

    return tuple(sorted(chosen))


def is_covered(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path`` lies in one of ``roots`` (or a system directory)."""
    return any(path == r or path.is_relative_to(r) for r in (*SYSTEM_DIRS, *roots))


class _Finder:
    """Collects host paths while following symlinks, shebangs and layouts."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.paths: list[Path] = []
        self._depth = 0

    def add(self, path: Path) -> None:
        self.paths.append(_normal(path))

    def add_program(self, path: Path, *, is_script: bool = False) -> None:
        self._depth += 1
        if self._depth > MAX_INDIRECTIONS:
            raise SandboxStartFailed(
                f"{path}: more than {MAX_INDIRECTIONS} symlinks and shebangs to follow"
            )

        for hop in _symlink_hops(path):
            self.paths.append(_code_root(hop, is_script=is_script))
            venv = _venv_root(hop)
            if venv is not None:
                self.paths.extend(_venv_paths(venv))

        interpreter = shebang_interpreter(path, self.env)
        if interpreter is not None:
            self.add_program(interpreter)


def _symlink_hops(path: Path) -> list[Path]:
    """``path``, each symlink it goes through, and the file it ends at."""
    hops = [path]
    while hops[-1].is_symlink() and len(hops) <= MAX_INDIRECTIONS:
        hops.append(_normal(hops[-1].parent / hops[-1].readlink()))

    hops.append(path.resolve())
    return hops


def _code_root(path: Path, *, is_script: bool) -> Path:
    """The directory to bind for one file of a server's code."""
    modules = [p for p in path.parents if p.name == "node_modules"]
    if modules:
        return modules[-1]

    prefix = _install_prefix(path)
    if prefix is not None:
        return prefix

    directory = path.parent
    if is_script and not _is_broad(directory):
        return directory

    return path


def _install_prefix(path: Path) -> Path | None:
    """``/opt/x`` for ``/opt/x/bin/prog``: where a program's libraries are."""
    if path.parent.name != "bin":
        return None

    prefix = path.parent.parent
    return None if _is_broad(prefix) else prefix


def _venv_root(path: Path) -> Path | None:
    if path.parent.name == "bin" and (path.parent.parent / "pyvenv.cfg").is_file():
        return path.parent.parent

    return None


def _venv_paths(venv: Path) -> list[Path]:
    """A virtual environment and the prefix of the interpreter it was made from."""
    paths = [venv]
    try:
        lines = (venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return paths

    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            home = Path(value.strip())
            prefix = _install_prefix(home / "python") or home
            paths.append(prefix)

    return paths


def _is_broad(path: Path) -> bool:
    home_like = path.parent == Path("/home") or path == Path.home()
    return path in BROAD_DIRS or home_like


def _search_path(host_path: str, roots: tuple[Path, ...]) -> tuple[str, ...]:
    """The server's PATH entries that exist in the sandbox, then the system's."""
    entries = [e for e in host_path.split(os.pathsep) if e.startswith("/")]
    visible = [e for e in entries if is_covered(Path(e), roots)]
    return tuple(dict.fromkeys([*visible, *DEFAULT_SEARCH_PATH]))


def _normal(path: Path) -> Path:
    """``path`` made absolute, with ``..`` folded but symlinks kept."""
    return Path(os.path.normpath(Path.cwd() / path))
