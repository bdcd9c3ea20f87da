"""MCP servers written for the tests: probes, recorders and misbehaving servers."""
