"""The audit log: tamper-evident JSON-lines records of every decision and call."""

from mcp_sandbox_proxy.audit.records import EVENTS, SCHEMA_VERSION
from mcp_sandbox_proxy.audit.redact import REDACTED, redact
from mcp_sandbox_proxy.audit.verify import Problem, Report, verify_files
from mcp_sandbox_proxy.audit.writer import AuditLog

__all__ = [
    "EVENTS",
    "REDACTED",
    "SCHEMA_VERSION",
    "AuditLog",
    "Problem",
    "Report",
    "redact",
    "verify_files",
]
