"""Tests of the audit log package."""
