"""Tests of the policy commands: check, explain, audit, pins."""
