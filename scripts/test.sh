#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs (system packages,
# the virtual environment, third-party test servers), starts a Docker engine and
# builds the test images locally, then runs lint, type checks and every test.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=${MCP_SANDBOX_PROXY_VENV:-$repo/.venv}

bash scripts/setup.sh
bash scripts/docker-up.sh
bash scripts/build-test-images.sh

echo "[test] lint and format" >&2
"$venv/bin/ruff" check mcp_sandbox_proxy tests benchmarks examples
"$venv/bin/ruff" format --check mcp_sandbox_proxy tests benchmarks examples
echo "[test] type check (pyright, strict)" >&2
"$venv/bin/pyright" --pythonpath "$venv/bin/python" mcp_sandbox_proxy

echo "[test] tests" >&2
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
