"""``FakeOpenAI``: a scripted OpenAI-compatible chat-completions server on 127.0.0.1.

For tests and offline examples of ``llmspell.agents.OpenAIChat`` (or any
client of ``/v1/chat/completions``)::

    with FakeOpenAI() as server:                    # a free port on 127.0.0.1
        server.reply(tool_call=("weather", {"city": "Oslo"}))
        server.reply("21 degrees in Oslo.")
        agent = OpenAIChat(server.base_url, "any-model", tools=["weather"])
        ...
        server.requests[-1]["body"]["messages"]     # what the client sent

Answers are handed out in the order they were planned, one per request.
When none is planned, ``respond(request_body)`` (given to the constructor)
answers; without it the request gets a 400 whose message says that nothing
was planned, so a test that asks more than it planned fails at once and
says why.

Answers are streamed the way such servers stream them (when the request
asks for ``stream: true``; otherwise one JSON completion): server-sent
events ``data: {json}``, content deltas, tool-call deltas (``index``,
``id``, ``function.name``, then the arguments JSON in pieces), a last chunk
with ``finish_reason`` (and ``usage`` when given), then ``data: [DONE]``.
The lower-level ``sse``, ``status`` and ``raw`` send exactly what a test
needs, malformed streams and error statuses included.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Answer", "FakeOpenAI", "content_events", "tool_call_events"]

_PIECE = 3  # characters of tool-call arguments per streamed fragment


@dataclass(frozen=True)
class Answer:
    """One planned model answer: text, tool calls (``(name, params)`` pairs),
    optional token ``usage`` and a ``delay`` in seconds before the first byte."""

    content: str = ""
    tool_calls: Sequence[tuple[str, Mapping[str, Any]]] = ()
    usage: Mapping[str, int] | None = None
    delay: float = 0.0
    model: str = field(default="fake", compare=False)


Responder = Callable[[dict[str, Any]], "Answer | str"]


def _chunk(delta: dict[str, Any], finish: str | None = None, model: str = "fake") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def content_events(
    *pieces: str, usage: Mapping[str, int] | None = None, model: str = "fake"
) -> list[Any]:
    """The streamed chunks of a text answer made of ``pieces``."""
    events: list[Any] = [_chunk({"role": "assistant", "content": ""}, model=model)]
    events += [_chunk({"content": p}, model=model) for p in pieces]
    last = _chunk({}, "stop", model=model)
    if usage is not None:
        last["usage"] = dict(usage)
    events.append(last)
    return events


def tool_call_events(
    calls: Sequence[tuple[str, str, Mapping[str, Any]]],
    *,
    lead: str = "",
    usage: Mapping[str, int] | None = None,
    model: str = "fake",
) -> list[Any]:
    """The streamed chunks of an answer that calls tools: ``(call_id, name,
    params)`` per call, each call's arguments JSON sent in small fragments."""
    events: list[Any] = [_chunk({"role": "assistant", "content": lead or None}, model=model)]
    for index, (call_id, name, params) in enumerate(calls):
        head = {"index": index, "id": call_id, "type": "function"}
        head["function"] = {"name": name, "arguments": ""}
        events.append(_chunk({"tool_calls": [head]}, model=model))
        text = json.dumps(dict(params))
        for i in range(0, len(text), _PIECE):
            piece = {"index": index, "function": {"arguments": text[i : i + _PIECE]}}
            events.append(_chunk({"tool_calls": [piece]}, model=model))
    last = _chunk({}, "tool_calls", model=model)
    if usage is not None:
        last["usage"] = dict(usage)
    events.append(last)
    return events


def _completion(answer: Answer, model: str, first_id: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content or None}
    if answer.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{first_id + i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(dict(params))},
            }
            for i, (name, params) in enumerate(answer.tool_calls)
        ]
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if answer.tool_calls else "stop",
            }
        ],
    }
    if answer.usage is not None:
        body["usage"] = dict(answer.usage)
    return body


class FakeOpenAI:
    """A scripted OpenAI-compatible server on 127.0.0.1, on a port it picks.

    A context manager (``with FakeOpenAI() as server``); ``close()`` stops it.
    ``base_url`` is ``http://127.0.0.1:<port>/v1``; ``requests`` lists every
    request (``{"path", "body"}``) and ``headers`` their headers, in arrival
    order.
    """

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._plans: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._calls = 0  # tool-call ids handed out
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-openai", daemon=True
        )
        self._thread.start()

    # -- where it is ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def url(self) -> str:
        """The same as ``base_url``."""
        return self.base_url

    # -- planning answers -------------------------------------------------------------

    def reply(
        self,
        content: str = "",
        *,
        tool_call: tuple[str, Mapping[str, Any]] | None = None,
        tool_calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
        usage: Mapping[str, int] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Plan the next answer: ``content`` text, and/or tool calls as
        ``(name, params)`` (``tool_call`` for one, ``tool_calls`` for several)."""
        calls = [*([tool_call] if tool_call is not None else []), *tool_calls]
        self.answer(Answer(content, tuple(calls), usage, delay))

    def answer(self, answer: Answer) -> None:
        """Plan the next answer as an ``Answer``."""
        if not isinstance(answer, Answer):
            raise TypeError(f"expected an Answer, got {type(answer).__name__}")
        with self._lock:
            self._plans.append(("answer", answer))

    def sse(self, events: list[Any], done: bool = True) -> None:
        """Plan a stream of exactly these events (dicts are sent as JSON, str as
        they are), then ``data: [DONE]`` unless ``done`` is False."""
        with self._lock:
            self._plans.append(("sse", (events, done)))

    def status(self, code: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """Plan a plain answer with this status and JSON body."""
        with self._lock:
            self._plans.append(("status", (code, body, dict(headers or {}))))

    def raw(self, text: str) -> None:
        """Plan a 200 event stream whose body is ``text`` as it is."""
        with self._lock:
            self._plans.append(("raw", text))

    def pending(self) -> int:
        """How many planned answers no request has taken yet."""
        with self._lock:
            return len(self._plans)

    def reset(self) -> None:
        """Forget planned answers and recorded requests."""
        with self._lock:
            self._plans.clear()
            self.requests.clear()
            self.headers.clear()

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving (idempotent); a delayed answer is dropped."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeOpenAI {self.base_url}>"

    # -- serving (handler threads) ----------------------------------------------------

    def _take(self, body: Any) -> tuple[str, Any]:
        with self._lock:
            if self._plans:
                return self._plans.popleft()
        if self.respond is not None and isinstance(body, dict):
            got = self.respond(body)
            return ("answer", Answer(got) if isinstance(got, str) else got)
        message = "FakeOpenAI: no answer planned for this request (plan one with reply())"
        return ("status", (400, {"error": {"message": message, "type": "invalid_request"}}, {}))

    def _call_ids(self, n: int) -> int:
        with self._lock:
            first = self._calls
            self._calls += n
        return first


def _handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw.decode() or "null")
            except ValueError:
                body = None
            with server._lock:
                server.requests.append({"path": self.path, "body": body})
                server.headers.append(dict(self.headers))
            try:
                kind, arg = server._take(body)
                self._send(kind, arg, body if isinstance(body, dict) else {})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a cancelled agent): nothing to tell it

        def _send(self, kind: str, arg: Any, request: dict[str, Any]) -> None:
            if kind == "status":
                code, payload, extra = arg
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                return
            if kind == "answer":
                answer: Answer = arg
                if answer.delay > 0 and server._closing.wait(answer.delay):
                    return  # closing: drop it
                model = str(request.get("model") or answer.model)
                first = server._call_ids(len(answer.tool_calls))
                if not request.get("stream"):
                    self._send("status", (200, _completion(answer, model, first), {}), request)
                    return
                if answer.tool_calls:
                    calls = [
                        (f"call_{first + i}", name, params)
                        for i, (name, params) in enumerate(answer.tool_calls)
                    ]
                    events = tool_call_events(
                        calls, lead=answer.content, usage=answer.usage, model=model
                    )
                else:
                    events = content_events(
                        *_pieces(answer.content), usage=answer.usage, model=model
                    )
                kind, arg = "sse", (events, True)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
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

    return Handler


def _pieces(text: str) -> list[str]:
    """Split a text answer into word-sized deltas, as a model streams it."""
    if not text:
        return []
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]
