"""An MCP server over stdio that misbehaves on request, for the reliability tests.

How it starts is chosen by its first argument:

- ``serve`` (the default): a working server whose tools misbehave when called;
- ``exit-at-start``: writes a line to stderr and exits with status 1 at once;
- ``crash-after-init``: answers ``initialize``, then exits once initialised.

When the environment names ``HOSTILE_RECORD``, the server appends to that file a
``{"started": pid, "at": monotonic seconds}`` line when it starts and every
message it receives, so that a test can show what reached which incarnation of the
server, and when each incarnation started.

Tools: ``echo`` (returns ``text``), ``hang`` (never answers, keeps serving),
``block`` (stops reading and answering: ignores cancellation), ``crash`` (exits
with status 3), ``garbage`` (writes lines that are not JSON-RPC, then answers),
``nested`` (writes a line nested ``depth`` deep, then answers), ``oversize``
(answers with a message of ``bytes`` bytes), ``duplicate`` (answers twice with
the call's id), ``unknown_ids`` (sends responses to ids never used, then answers),
``invalid_result`` and ``invalid_error`` (answer with a malformed response),
``odd_result`` (answers with a result whose content is not a list),
``flood`` (sends ``count`` notifications, then answers), ``stderr_flood`` (writes
``bytes`` bytes to stderr, then answers), ``stderr_then_crash`` (writes lines to
stderr, the last ``last words``, then exits with status 4), ``image`` (answers
with an image of ``bytes`` bytes), ``ask_client`` (sends ``count`` ``method``
requests to the client, then answers) and ``emit`` (writes each of the base64
``lines`` as it is, ``@ID@`` replaced by the call's id, then answers).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

TOOL_NAMES = (
    "echo",
    "hang",
    "block",
    "crash",
    "garbage",
    "nested",
    "oversize",
    "duplicate",
    "unknown_ids",
    "invalid_result",
    "invalid_error",
    "odd_result",
    "flood",
    "stderr_flood",
    "stderr_then_crash",
    "image",
    "ask_client",
    "emit",
)
TOOLS = [
    {
        "name": name,
        "description": f"Misbehave: {name}.",
        "inputSchema": {"type": "object"},
    }
    for name in TOOL_NAMES
]
# ``block`` sleeps this long: far past any deadline, short enough that a server
# left behind by a failed test does not linger for long.
BLOCK_S = 300.0
# A PNG signature padded with zero bytes: an image as far as its header tells.
PNG_HEADER = b"\x89PNG\r\n\x1a\n"

_record = None


def write_line(data: bytes) -> None:
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.buffer.flush()


def send(message: dict[str, Any]) -> None:
    write_line(json.dumps(message).encode())


def text_result(request_id: Any, text: str) -> None:
    result = {"content": [{"type": "text", "text": text}]}
    send({"jsonrpc": "2.0", "id": request_id, "result": result})


def error(request_id: Any, code: int, message: str) -> None:
    send(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": code, "message": message},
        }
    )


def record(entry: dict[str, Any]) -> None:
    if _record is not None:
        _record.write(json.dumps(entry) + "\n")


def garbage(request_id: Any, _: dict[str, Any]) -> None:
    write_line(b"this is not json")
    write_line(b"\xff\xfe binary \x00 junk")
    write_line(b'{"jsonrpc": "2.0", "id": 1, "result": ')
    write_line(b"[1, 2, 3]")
    write_line(b'{"jsonrpc": "1.0", "method": "notifications/message"}')
    write_line(b'{"jsonrpc": "2.0", "method": 42, "params": {}}')
    write_line(b'{"jsonrpc": "2.0", "method": "notifications/message", "params": 7}')
    write_line(b'{"jsonrpc": "2.0", "id": 5}')
    text_result(request_id, "after garbage")


def nested(request_id: Any, args: dict[str, Any]) -> None:
    depth = int(args.get("depth", 100_000))
    write_line(b'{"jsonrpc": "2.0", "method": "x", "params": ' + b"[" * depth)
    write_line(b"[" * depth + b"]" * depth)
    text_result(request_id, "after nesting")


def oversize(request_id: Any, args: dict[str, Any]) -> None:
    text_result(request_id, "x" * int(args.get("bytes", 2 * 1024 * 1024)))


def duplicate(request_id: Any, _: dict[str, Any]) -> None:
    text_result(request_id, "first answer")
    text_result(request_id, "second answer")


def unknown_ids(request_id: Any, _: dict[str, Any]) -> None:
    for stray in (987654, "stray", None, 1.5, True, {"id": 1}, [1], -1):
        text_result(stray, "to nobody")

    text_result(request_id, "after strays")


def invalid_result(request_id: Any, _: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "result": 42})


def invalid_error(request_id: Any, _: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "error": "boom"})


def odd_result(request_id: Any, _: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "result": {"content": 5}})


def flood(request_id: Any, args: dict[str, Any]) -> None:
    for i in range(int(args.get("count", 10_000))):
        params = {"level": "info", "data": f"flood {i}"}
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": params})

    text_result(request_id, "flooded")


def stderr_flood(request_id: Any, args: dict[str, Any]) -> None:
    total = int(args.get("bytes", 64 * 1024 * 1024))
    chunk = (b"noise " * 170 + b"\n") * 64  # about 64 KiB of lines
    for _ in range(total // len(chunk)):
        sys.stderr.buffer.write(chunk)

    sys.stderr.buffer.write(b"end of the noise\n")
    sys.stderr.buffer.flush()
    text_result(request_id, "noisy")


def stderr_then_crash(_: Any, __: dict[str, Any]) -> None:
    for i in range(5000):
        sys.stderr.buffer.write(f"dying slowly {i}\n".encode())

    sys.stderr.buffer.write(b"last words\n")
    sys.stderr.buffer.flush()
    os._exit(4)


def image(request_id: Any, args: dict[str, Any]) -> None:
    raw = PNG_HEADER + bytes(int(args.get("bytes", 3 * 1024 * 1024)))
    content = [
        {"type": "text", "text": "an image follows"},
        {
            "type": "image",
            "data": base64.b64encode(raw).decode(),
            "mimeType": "image/png",
        },
    ]
    send({"jsonrpc": "2.0", "id": request_id, "result": {"content": content}})


def ask_client(request_id: Any, args: dict[str, Any]) -> None:
    method = str(args.get("method", "roots/list"))
    for i in range(int(args.get("count", 1))):
        send({"jsonrpc": "2.0", "id": f"ask-{request_id}-{i}", "method": method})

    text_result(request_id, "asked")


def emit(request_id: Any, args: dict[str, Any]) -> None:
    own_id = json.dumps(request_id).encode()
    for line in args.get("lines", []):
        write_line(base64.b64decode(line).replace(b"@ID@", own_id))

    text_result(request_id, "emitted")


def crash(_: Any, __: dict[str, Any]) -> None:
    os._exit(3)


def block(_: Any, __: dict[str, Any]) -> None:
    time.sleep(BLOCK_S)


def hang(_: Any, __: dict[str, Any]) -> None:
    return None


HANDLERS = {
    "garbage": garbage,
    "nested": nested,
    "oversize": oversize,
    "duplicate": duplicate,
    "unknown_ids": unknown_ids,
    "invalid_result": invalid_result,
    "invalid_error": invalid_error,
    "odd_result": odd_result,
    "flood": flood,
    "stderr_flood": stderr_flood,
    "stderr_then_crash": stderr_then_crash,
    "image": image,
    "ask_client": ask_client,
    "emit": emit,
    "crash": crash,
    "block": block,
    "hang": hang,
}


def call_tool(request_id: Any, name: str, args: dict[str, Any]) -> None:
    if name == "echo":
        text_result(request_id, str(args.get("text", "")))
    elif name not in HANDLERS:
        error(request_id, -32602, f"Unknown tool: {name}")
    else:
        try:
            HANDLERS[name](request_id, args)
        except (ValueError, TypeError) as exc:
            error(request_id, -32602, f"Bad arguments for {name}: {exc}")


def initialize_result(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "protocolVersion": params.get("protocolVersion", "2025-06-18"),
        "capabilities": {"tools": {"listChanged": True}, "logging": {}},
        "serverInfo": {"name": "hostile-server", "version": "1.0"},
    }


def handle(message: dict[str, Any], mode: str) -> None:
    method = message.get("method")
    request_id = message.get("id")
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": request_id, "result": initialize_result(params)})
    elif method == "notifications/initialized" and mode == "crash-after-init":
        os._exit(5)
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        arguments = params.get("arguments")
        arguments = arguments if isinstance(arguments, dict) else {}
        call_tool(request_id, str(params.get("name", "")), arguments)
    elif method in ("ping", "logging/setLevel"):
        send({"jsonrpc": "2.0", "id": request_id, "result": {}})
    elif request_id is not None and method is not None:
        error(request_id, -32601, f"Method not found: {method}")


def main() -> None:
    global _record
    mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
    record_path = os.environ.get("HOSTILE_RECORD")
    if record_path:
        _record = open(record_path, "a", buffering=1)  # noqa: SIM115

    record({"started": os.getpid(), "mode": mode, "at": time.monotonic()})
    if mode == "exit-at-start":
        sys.stderr.write("refusing to start, on purpose\n")
        sys.exit(1)

    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue

        if isinstance(message, dict):
            record(message)
            handle(message, mode)


if __name__ == "__main__":
    main()
