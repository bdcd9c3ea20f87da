"""Entry point for ``python -m mcp_sandbox_proxy``."""

from mcp_sandbox_proxy.cli import main

raise SystemExit(main())
