"""A small OpenAI-compatible chat-completions server for tests (127.0.0.1 only).

The test plans the answers (``plan``); the server hands them out in order, one
per POST, and records every request body. Streamed answers are server-sent
events the way such servers send them: ``data: {json}\\n\\n`` lines, content
deltas, tool-call deltas (``index``, ``id``, ``function.name``, then pieces of
``function.arguments``), a final chunk with ``finish_reason``, ``data: [DONE]``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAI", "content_events", "tool_call_events"]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def content_events(*pieces: str, usage: dict[str, int] | None = None) -> list[Any]:
    events: list[Any] = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": p}) for p in pieces]
    last = _chunk({}, "stop")
    if usage is not None:
        last["usage"] = usage
    events.append(last)
    return events


def tool_call_events(calls: list[tuple[str, str, dict[str, Any]]], *, lead: str = "") -> list[Any]:
    """Tool calls streamed in fragments: the arguments JSON in 3-character pieces."""
    events: list[Any] = [_chunk({"role": "assistant", "content": lead or None})]
    for index, (call_id, name, args) in enumerate(calls):
        events.append(
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        text = json.dumps(args)
        for i in range(0, len(text), 3):
            events.append(
                _chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": text[i : i + 3]}}]}
                )
            )
    events.append(_chunk({}, "tool_calls"))
    return events


class FakeOpenAI:
    """Plan answers with ``sse(events)``, ``status(code, body)`` or ``raw(text)``."""

    def __init__(self) -> None:
        self.plans: deque[tuple[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "body": json.loads(raw.decode() or "null")}
                    )
                    server.headers.append(dict(self.headers))
                    plan = server.plans.popleft() if server.plans else ("status", (500, {}))
                kind, arg = plan
                if kind == "status":
                    code, body, *extra = arg
                    data = json.dumps(body).encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (extra[0] if extra else {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if kind == "raw":
                    self.wfile.write(arg.encode())
                    return
                events, done = arg
                for ev in events:
                    line = ev if isinstance(ev, str) else json.dumps(ev)
                    self.wfile.write(f"data: {line}\n\n".encode())
                    self.wfile.flush()
                if done:
                    self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def sse(self, events: list[Any], done: bool = True) -> None:
        with self.lock:
            self.plans.append(("sse", (events, done)))

    def status(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.plans.append(("status", (code, body, headers or {})))

    def raw(self, text: str) -> None:
        with self.lock:
            self.plans.append(("raw", text))

    def reset(self) -> None:
        with self.lock:
            self.plans.clear()
            self.requests.clear()
            self.headers.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
