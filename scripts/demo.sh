#!/usr/bin/env bash
# The quick start: installs what is needed, has the proxy install the servers of
# examples/quickstart.yaml (a time server and a file server, each sandboxed), then
# drives it with the official MCP client, showing its tools, a denial and the
# audit trail.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=${MCP_SANDBOX_PROXY_VENV:-$repo/.venv}

bash scripts/setup.sh

# uvx (from the virtual environment) and npx must be on the proxy's PATH.
export PATH="$venv/bin:$PATH"
export MCP_SANDBOX_PROXY_DEMO_DIR=${MCP_SANDBOX_PROXY_DEMO_DIR:-$repo/.demo/notes}
mkdir -p "$MCP_SANDBOX_PROXY_DEMO_DIR"
# The sandbox runs as uid 65534 when the proxy runs as root: give it the folder.
if [ "$(id -u)" -eq 0 ]; then chown 65534:65534 "$MCP_SANDBOX_PROXY_DEMO_DIR"; fi

"$venv/bin/python" -m mcp_sandbox_proxy doctor || true
# The example's servers are 'uvx' and 'npx -y' lines: their packages are installed
# in sandboxes that reach only the registries, then listed with their versions.
"$venv/bin/python" -m mcp_sandbox_proxy install --config examples/quickstart.yaml
"$venv/bin/python" -m mcp_sandbox_proxy install --config examples/quickstart.yaml --list
# Escape probes in the very sandboxes the example gives its servers.
"$venv/bin/python" -m mcp_sandbox_proxy doctor --self-test --config examples/quickstart.yaml
"$venv/bin/python" examples/try_it.py examples/quickstart.yaml
