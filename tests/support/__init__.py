"""Helpers for tests that drive the proxy and sandboxed servers."""
