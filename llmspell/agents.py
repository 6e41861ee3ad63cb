"""Built-in agents: ``OpenAIChat``, a streaming client for OpenAI-compatible chat APIs.

``OpenAIChat(base_url, model, api_key_env=None)`` talks to any server that
speaks the ``/v1/chat/completions`` protocol with ``"stream": true`` (OpenAI,
llama.cpp's server, vLLM, Ollama, LM Studio ...). Register it like any agent::

    rt.register_tool("weather", "myapp.tools:weather", schema={...})
    rt.register_agent("chat", OpenAIChat("http://127.0.0.1:8080/v1", "qwen2.5"))
    h = rt.submit(Task.agent("chat", "Weather in Oslo?"))
    for chunk in rt.stream(h): ...

Its settings travel to the engine as data (``llmspell_spec``), so it works in
every mode; the engine makes its own instance.

The agent loop (``stream(input)``, an async generator):

1. ``input`` is a user message (a str), a list of chat messages, or
   ``{"messages": [...]}``; ``system`` (optional) goes first.
2. It POSTs the conversation with ``stream: true`` and the registered tools as
   ``tools=[{"type": "function", "function": {"name", "description",
   "parameters"}}]`` (all registered tools, or the ``tools=[...]`` names).
3. It reads the server-sent events (``data: {...}`` lines, ``data: [DONE]``)
   and yields each content delta as ``{"type": "content", "text": ...}``.
   Streamed tool calls arrive in fragments (``delta.tool_calls[i]`` with
   ``index``, then ``id``, ``function.name`` and pieces of
   ``function.arguments``); they are put together by ``index``.
4. When the answer asks for tools, it appends the assistant message with its
   ``tool_calls``, yields one ``{"type": "tool_call", "name", "params"}`` per
   call (the runtime runs the registered tool and sends its result back as the
   value of the ``yield``), appends a ``role: tool`` message with each result
   (JSON; ``{"error": ...}`` for a tool that failed or arguments that are not
   JSON), and asks again.
5. A final answer (no tool calls) ends the loop with a ``metadata`` chunk:
   ``model``, ``turns``, ``finish_reason`` and the server's token ``usage``
   when it sent one. ``max_turns`` requests without a final answer fail.

Errors: a 429 or 5xx answer, a connection error or a timeout before any
event arrived is retried up to ``max_retries`` times with exponential backoff
(``backoff * 2**n`` seconds, at most ``max_backoff``; a ``Retry-After`` header
is honoured up to that cap). Any other 4xx fails at once with the server's
own message (``error.message`` of its JSON body). A stream that is not
server-sent JSON events, carries an ``error`` object, or ends before
``[DONE]`` without a finish reason fails with ``AgentError`` saying so; so
does a connection that breaks mid-answer (it is not retried: part of the
answer was already streamed). ``timeout`` bounds each read, ``connect_timeout``
each connection. Network bytes count in the task's usage (``llmspell.net``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from . import net
from ._clock import now
from ._context import current_agent, current_meter
from ._exceptions import LlmspellError, TaskFailed

__all__ = ["AgentError", "OpenAIChat"]


class AgentError(LlmspellError):
    """An agent could not get an answer: the server refused, the stream was
    malformed, the connection broke, or no final answer came."""


class OpenAIChat:
    """A streaming agent for an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        *,
        tools: list[str] | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_turns: int = 8,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty str")
        if max_retries < 0 or max_turns < 1 or timeout <= 0 or backoff < 0:
            raise ValueError("max_retries >= 0, max_turns >= 1, timeout > 0, backoff >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.tools = list(tools) if tools is not None else None
        self.system = system
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_turns = int(max_turns)
        self.headers = dict(headers or {})

    def llmspell_spec(self) -> dict[str, Any]:
        """How the runtime re-creates this agent in an engine process."""
        return {
            "factory": "llmspell.agents:OpenAIChat",
            "kwargs": {
                "base_url": self.base_url,
                "model": self.model,
                "api_key_env": self.api_key_env,
                "tools": self.tools,
                "system": self.system,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "timeout": self.timeout,
                "connect_timeout": self.connect_timeout,
                "max_retries": self.max_retries,
                "backoff": self.backoff,
                "max_backoff": self.max_backoff,
                "max_turns": self.max_turns,
                "headers": self.headers,
            },
        }

    def __repr__(self) -> str:
        return f"OpenAIChat({self.base_url!r}, {self.model!r})"

    @property
    def url(self) -> str:
        """The chat-completions URL: ``<base_url>/chat/completions`` when
        ``base_url`` ends in a version (``/v1``), else ``<base_url>/v1/chat/completions``."""
        last = self.base_url.rsplit("/", 1)[-1]
        if last.startswith("v") and last[1:].isdigit():
            return f"{self.base_url}/chat/completions"
        return f"{self.base_url}/v1/chat/completions"

    # -- the agent loop -------------------------------------------------------------------

    async def stream(self, input: Any) -> AsyncIterator[dict[str, Any]]:
        """The agent loop (see the module docstring); chunks as the runtime wants them."""
        messages = self._messages(input)
        tools = self._tool_specs()
        timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout)
        tokens: dict[str, int] = {}
        async with net.AsyncClient(timeout=timeout) as client:
            for turn in range(1, self.max_turns + 1):
                body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
                if tools:
                    body["tools"] = tools
                if self.temperature is not None:
                    body["temperature"] = self.temperature
                if self.max_tokens is not None:
                    body["max_tokens"] = self.max_tokens
                text: list[str] = []
                calls: dict[int, dict[str, str]] = {}
                finish: str | None = None
                request = _Request(self.model, now())
                try:
                    async for event in self._events(client, body):
                        usage = event.get("usage")
                        if isinstance(usage, dict):
                            request.usage(usage)
                            for k, v in usage.items():
                                if isinstance(v, int):
                                    tokens[k] = tokens.get(k, 0) + v
                        choices = event.get("choices")
                        if not isinstance(choices, list):
                            raise self._malformed(f"an event without a 'choices' list: {event!r}")
                        for choice in choices:
                            if not isinstance(choice, dict):
                                raise self._malformed(f"a choice is not an object: {choice!r}")
                            if choice.get("index", 0) != 0:
                                continue  # only the first choice is the answer
                            delta = choice.get("delta") or {}
                            if not isinstance(delta, dict):
                                raise self._malformed(f"a delta is not an object: {delta!r}")
                            content = delta.get("content")
                            if isinstance(content, str) and content:
                                text.append(content)
                                yield {"type": "content", "text": content}
                            self._merge_tool_calls(calls, delta.get("tool_calls"))
                            if choice.get("finish_reason"):
                                finish = str(choice["finish_reason"])
                except BaseException as exc:
                    request.end(str(exc) or type(exc).__name__)
                    raise
                request.end(None, finish)
                if not calls:
                    meta: dict[str, Any] = {
                        "type": "metadata",
                        "model": self.model,
                        "turns": turn,
                        "finish_reason": finish,
                    }
                    if tokens:
                        meta["usage"] = tokens
                    yield meta
                    return
                tool_calls: list[dict[str, Any]] = [
                    {
                        "id": c.get("id") or f"call_{turn}_{i}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"] or "{}"},
                    }
                    for i, c in sorted(calls.items())
                ]
                messages.append(
                    {
                        "role": "assistant",
                        "content": "".join(text) or None,
                        "tool_calls": tool_calls,
                    }
                )
                for call in tool_calls:
                    name = call["function"]["name"]
                    try:
                        params = json.loads(call["function"]["arguments"])
                        if not isinstance(params, dict):
                            raise ValueError("not a JSON object")
                    except ValueError as exc:
                        reply: Any = {"error": f"the arguments are not a JSON object: {exc}"}
                    else:
                        try:
                            reply = yield {"type": "tool_call", "name": name, "params": params}
                        except TaskFailed as exc:
                            reply = {"error": exc.message}
                    tool_message = reply if isinstance(reply, str) else json.dumps(reply)
                    messages.append(
                        {"role": "tool", "tool_call_id": call["id"], "content": tool_message}
                    )
        raise AgentError(
            f"{self.url}: no final answer after {self.max_turns} requests (the model kept "
            "asking for tools); raise max_turns or check the tools' results"
        )

    # -- pieces -----------------------------------------------------------------------------

    def _messages(self, input: Any) -> list[dict[str, Any]]:
        if isinstance(input, str):
            messages: list[dict[str, Any]] = [{"role": "user", "content": input}]
        elif isinstance(input, dict) and isinstance(input.get("messages"), list):
            messages = [dict(m) for m in input["messages"]]
        elif isinstance(input, list) and all(isinstance(m, dict) for m in input):
            messages = [dict(m) for m in input]
        else:
            raise AgentError(
                "OpenAIChat input must be a str (the user's message), a list of chat "
                f"messages or {{'messages': [...]}}, got {type(input).__name__}"
            )
        if self.system is not None and not (messages and messages[0].get("role") == "system"):
            messages.insert(0, {"role": "system", "content": self.system})
        return messages

    def _tool_specs(self) -> list[dict[str, Any]]:
        ctx = current_agent()
        catalogue: dict[str, Any] = dict(ctx.tools) if ctx is not None else {}
        if self.tools is not None:
            missing = [t for t in self.tools if t not in catalogue]
            if missing:
                known = ", ".join(sorted(catalogue)) or "none"
                raise AgentError(
                    f"tools not registered: {', '.join(missing)} (registered: {known})"
                )
            catalogue = {t: catalogue[t] for t in self.tools}
        specs = []
        for name, entry in catalogue.items():
            fn: dict[str, Any] = {"name": name, "parameters": entry.get("parameters") or {}}
            if entry.get("description"):
                fn["description"] = entry["description"]
            specs.append({"type": "function", "function": fn})
        return specs

    def _merge_tool_calls(self, calls: dict[int, dict[str, str]], deltas: Any) -> None:
        if deltas is None:
            return
        if not isinstance(deltas, list):
            raise self._malformed(f"delta.tool_calls is not a list: {deltas!r}")
        for d in deltas:
            if not isinstance(d, dict):
                raise self._malformed(f"a tool call delta is not an object: {d!r}")
            index = d.get("index", len(calls) if d.get("id") else max(calls, default=0))
            if not isinstance(index, int):
                raise self._malformed(f"a tool call delta has a bad index: {d!r}")
            slot = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if d.get("id"):
                slot["id"] = str(d["id"])
            fn = d.get("function") or {}
            if not isinstance(fn, dict):
                raise self._malformed(f"a tool call's function is not an object: {d!r}")
            if fn.get("name"):
                slot["name"] += str(fn["name"])
            if fn.get("arguments"):
                slot["arguments"] += str(fn["arguments"])

    def _malformed(self, what: str) -> AgentError:
        return AgentError(f"malformed stream from {self.url}: {what}")

    def _request_headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", **self.headers}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise AgentError(
                    f"the environment variable {self.api_key_env} (api_key_env) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay: float = self.backoff * 2**attempt
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.max_backoff)

    async def _events(
        self, client: httpx.AsyncClient, body: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """One completion's events, retrying what may be retried before any arrived."""
        headers = self._request_headers()
        attempt = 0
        while True:
            started = False
            try:
                async with client.stream("POST", self.url, json=body, headers=headers) as resp:
                    code = resp.status_code
                    if code == 429 or code >= 500:
                        message = _server_message(await resp.aread())
                        if attempt < self.max_retries:
                            delay = self._delay(attempt, resp.headers.get("retry-after"))
                            attempt += 1
                            await asyncio.sleep(delay)
                            continue
                        raise AgentError(
                            f"{self.url} answered {code} {resp.reason_phrase} "
                            f"{attempt + 1} times; last: {message}"
                        )
                    if code >= 400:
                        message = _server_message(await resp.aread())
                        raise AgentError(
                            f"{self.url} refused the request: "
                            f"{code} {resp.reason_phrase}: {message}"
                        )
                    async for event in self._sse(resp):
                        started = True
                        yield event
                    return
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
                if started:
                    raise AgentError(
                        f"the connection to {self.url} {what} in the middle of the answer: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if attempt < self.max_retries:
                    await asyncio.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                raise AgentError(
                    f"the request to {self.url} {what} {attempt + 1} times: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    async def _sse(self, resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """Server-sent events: ``data:`` lines (joined per event) as JSON objects,
        up to ``[DONE]``."""
        data: list[str] = []
        finished = False

        def parse(payload: str) -> dict[str, Any] | None:
            if payload.strip() == "[DONE]":
                return None
            try:
                event = json.loads(payload)
            except ValueError:
                raise self._malformed(f"a data line is not JSON: {payload[:120]!r}") from None
            if not isinstance(event, dict):
                raise self._malformed(f"an event is not a JSON object: {payload[:120]!r}")
            if "error" in event:
                raise AgentError(f"{self.url} sent an error mid-stream: {_error_text(event)}")
            return event

        async for line in resp.aiter_lines():
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            if line == "":
                if data:
                    payload, data = "\n".join(data), []
                    event = parse(payload)
                    if event is None:
                        return
                    finished = finished or _has_finish(event)
                    yield event
                continue
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            elif field not in ("event", "id", "retry"):
                raise self._malformed(f"not a server-sent event line: {line[:120]!r}")
        if data:
            event = parse("\n".join(data))
            if event is None:
                return
            finished = finished or _has_finish(event)
            yield event
        if not finished:
            raise self._malformed("the stream ended before 'data: [DONE]' and without a finish")


class _Request:
    """One model request of an agent, reported to the task's meter as a
    ``chat {model}`` span (``llmspell._tracing``) with the GenAI attributes."""

    __slots__ = ("attrs", "start")

    def __init__(self, model: str, start: float) -> None:
        self.start = start
        self.attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
        }

    def usage(self, usage: dict[str, Any]) -> None:
        for ours, theirs in (
            ("gen_ai.usage.input_tokens", "prompt_tokens"),
            ("gen_ai.usage.output_tokens", "completion_tokens"),
        ):
            n = usage.get(theirs)
            if isinstance(n, int) and not isinstance(n, bool):
                self.attrs[ours] = int(self.attrs.get(ours, 0)) + n

    def end(self, error: str | None, finish: str | None = None) -> None:
        meter = current_meter()
        if meter is None:
            return
        if finish:
            self.attrs["gen_ai.response.finish_reasons"] = [finish]
        name = f"chat {self.attrs['gen_ai.request.model']}"
        meter.add_span(name, self.start, now(), self.attrs, error)


def _has_finish(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") for c in choices
    )


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or json.dumps(err)
            kind = err.get("type") or err.get("code")
            return f"{message} ({kind})" if kind else str(message)
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
    return json.dumps(body)[:300]


def _server_message(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        return _error_text(json.loads(text))
    except ValueError:
        return text[:300] or "(no body)"
