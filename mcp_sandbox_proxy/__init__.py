"""mcp-sandbox-proxy: a sandboxing gateway in front of MCP tool servers."""

__version__ = "0.1.0"
