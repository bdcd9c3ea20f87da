"""The subcommands of the ``mcp-sandbox-proxy`` command line."""
