"""Sandbox backends: turn a ``SandboxSpec`` into a running, isolated process."""
