#!/usr/bin/env bash
# The quick start: installs what is needed, then runs the proxy on
# examples/quickstart.yaml (a time server and a file server, each sandboxed) and
# drives it with the official MCP client, showing its tools, a denial and the
# audit trail.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=${MCP_SANDBOX_PROXY_VENV:-$repo/.venv}
cache=${MCP_SANDBOX_PROXY_TEST_CACHE:-$HOME/.cache/mcp-sandbox-proxy-tests}

bash scripts/setup.sh

# The example's servers are found on the PATH, as a user's installed ones are.
export PATH="$cache/venvs/mcp-server-time/bin:$cache/npm/node_modules/.bin:$PATH"
export MCP_SANDBOX_PROXY_DEMO_DIR=${MCP_SANDBOX_PROXY_DEMO_DIR:-$repo/.demo/notes}
mkdir -p "$MCP_SANDBOX_PROXY_DEMO_DIR"
# The sandbox runs as uid 65534 when the proxy runs as root: give it the folder.
if [ "$(id -u)" -eq 0 ]; then chown 65534:65534 "$MCP_SANDBOX_PROXY_DEMO_DIR"; fi

"$venv/bin/python" -m mcp_sandbox_proxy doctor || true
# Escape probes in the very sandboxes the example gives its servers.
"$venv/bin/python" -m mcp_sandbox_proxy doctor --self-test --config examples/quickstart.yaml
"$venv/bin/python" examples/try_it.py examples/quickstart.yaml
