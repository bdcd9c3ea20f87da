#!/usr/bin/env bash
# Installs what the proxy and its test suite need on a Debian machine, idempotently:
# system packages, the project's virtual environment, and the third-party MCP
# servers that the tests run (each in a folder of its own, cached between runs).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${MCP_SANDBOX_PROXY_VENV:-$repo/.venv}
cache=${MCP_SANDBOX_PROXY_TEST_CACHE:-$HOME/.cache/mcp-sandbox-proxy-tests}
apt_packages=(bubblewrap libseccomp2 docker.io crun iproute2 git python3-venv nodejs npm)

say() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$pkg")
done
# A machine may carry its own node and npm outside Debian's packages.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<<"${missing[*]:-}"
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's own python3, the one python3-venv belongs to, unless told otherwise:
# it is built with profile-guided optimisation, and starts the proxy about a
# fifth faster than a python3 compiled without it that may come first on PATH.
python=${MCP_SANDBOX_PROXY_PYTHON:-}
if [ -z "$python" ]; then
  python=/usr/bin/python3
  [ -x "$python" ] || python=$(command -v python3)
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { say "$python is older than Python 3.11; set MCP_SANDBOX_PROXY_PYTHON"; exit 1; }
base=$("$python" -c 'import sys; print(sys.base_prefix)')
if [ -x "$venv/bin/python" ] \
   && [ "$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')" != "$base" ]; then
  say "recreating $venv: it was made with another interpreter than $python"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment in $venv with $python"
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  say "installing the project and its development tools"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "$repo[dev]"
  touch "$stamp"
fi
# An editable install leaves the package's own modules uncompiled, and where
# PYTHONDONTWRITEBYTECODE is set every start compiles them again: about 90 ms
# and 1.5 MiB of each proxy's start. Compiling here is what a wheel install
# does; files already up to date are skipped.
"$venv/bin/python" -m compileall -q "$repo/mcp_sandbox_proxy" >/dev/null

# Third-party servers, each in its own environment as a user would have them.
mkdir -p "$cache/venvs" "$cache/npm"
for server in mcp-server-time mcp-server-git mcp-server-fetch; do
  if [ ! -x "$cache/venvs/$server/bin/$server" ]; then
    say "installing $server from PyPI"
    python3 -m venv "$cache/venvs/$server"
    "$cache/venvs/$server/bin/pip" install -q "$server"
  fi
done
if [ ! -x "$cache/npm/node_modules/.bin/mcp-server-everything" ] \
   || [ ! -x "$cache/npm/node_modules/.bin/mcp-server-filesystem" ]; then
  say "installing the npm test servers"
  (cd "$cache/npm" && npm init -y >/dev/null && npm install --no-audit --no-fund -s \
    @modelcontextprotocol/server-everything @modelcontextprotocol/server-filesystem)
fi
say "ready: $venv, servers in $cache"
