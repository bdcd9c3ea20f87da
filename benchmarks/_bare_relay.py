"""The least a relay in Python can do, as a yardstick for ``bench_relay``.

Usage: ``python _bare_relay.py SERVER_COMMAND...``. It starts the server and
relays JSON lines between its own stdio and the server's: each message is
decoded, a request gets an id of the relay's own (its answer gets the client's
back), and it is encoded again. Nothing is checked, recorded or cleaned, there
is one server, and no event loop beyond the proxy's own selector, which polls
before it sleeps as the proxy does: what is left is what any relay in Python
pays for the two extra pipe hops of each message. The proxy's figures are best
read against this one's, taken in the same minutes.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from typing import Any

import orjson

from mcp_sandbox_proxy.config import ProxySettings
from mcp_sandbox_proxy.fdio import RelaySelector

POLL_S = ProxySettings.model_fields["poll_microseconds"].default / 1e6


def main(argv: list[str]) -> int:
    server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    to_server, from_server = server.stdin.fileno(), server.stdout.fileno()
    client_ids: dict[int, Any] = {}
    next_id = 0
    partial = {0: b"", from_server: b""}
    selector = RelaySelector(POLL_S)
    selector.register(0, selectors.EVENT_READ)
    selector.register(from_server, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            source = key.fd
            data = os.read(source, 65536)
            if not data:
                server.stdin.close()
                return server.wait()

            *lines, partial[source] = (partial[source] + data).split(b"\n")
            out: list[bytes] = []
            for line in lines:
                message = orjson.loads(line)
                if source == 0 and "id" in message:
                    next_id += 1
                    client_ids[next_id] = message["id"]
                    message["id"] = next_id
                elif source != 0 and message.get("id") in client_ids:
                    message["id"] = client_ids.pop(message["id"])

                out.append(orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE))

            # Blocking writes: the pipes are never fuller than one window of calls.
            os.write(to_server if source == 0 else 1, b"".join(out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
