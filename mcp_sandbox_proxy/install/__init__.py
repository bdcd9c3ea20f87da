"""Servers launched by a package runner (``npx -y``, ``uvx``, ``pipx run``).

Such a server is installed first, in a sandbox of its own that reaches only the
package registry and writes only to one folder of the proxy's cache; it then runs
from that folder, read-only, under its own policy. See ``installer``.
"""
