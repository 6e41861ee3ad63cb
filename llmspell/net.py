"""The runtime's HTTP clients: ``httpx`` clients that count a task's network bytes.

``llmspell.net.Client()`` and ``llmspell.net.AsyncClient()`` take the same
arguments as ``httpx.Client``/``httpx.AsyncClient``. Bytes a request sends
(request line, headers, body) and receives (status line, headers, body as
read) are added to the meter of the task running the code (see
``llmspell._context``), and so appear as ``network_bytes_sent`` /
``network_bytes_received`` in the task's ``ResourceUsage``: in
``progress(h).resource_usage``, an agent result's ``metadata["usage"]``
and a coordination's summed ``resource_usage``. Outside a task they count
nothing. Header sizes are computed from the parsed headers, so they are
close to, not exactly, the bytes on the wire (HTTP/1.1 framing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ._context import Meter, current_meter

__all__ = ["AsyncClient", "Client", "MeteredAsyncTransport", "MeteredTransport"]


def _head_size(start: str, headers: httpx.Headers) -> int:
    return len(start) + 2 + sum(len(k) + len(v) + 4 for k, v in headers.raw) + 2


def _request_size(request: httpx.Request) -> int:
    start = f"{request.method} {request.url.raw_path.decode('ascii', 'replace')} HTTP/1.1"
    try:
        body = len(request.content)
    except httpx.RequestNotRead:
        body = int(request.headers.get("content-length", 0) or 0)
    return _head_size(start, request.headers) + body


class _CountingStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.meter.add_io(received=len(chunk))
            yield chunk

    def close(self) -> None:
        self.inner.close()


class _AsyncCountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.meter.add_io(received=len(chunk))
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class MeteredTransport(httpx.BaseTransport):
    """An ``httpx`` transport that adds the bytes it moves to the task's meter."""

    def __init__(self, inner: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        self.inner = inner if inner is not None else httpx.HTTPTransport(**kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        meter = current_meter()
        if meter is None:
            return self.inner.handle_request(request)
        meter.add_io(sent=_request_size(request))
        response = self.inner.handle_request(request)
        meter.add_io(received=_head_size(f"HTTP/1.1 {response.status_code}", response.headers))
        response.stream = _CountingStream(response.stream, meter)
        return response

    def close(self) -> None:
        self.inner.close()


class MeteredAsyncTransport(httpx.AsyncBaseTransport):
    """The asyncio version of ``MeteredTransport``."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        self.inner = inner if inner is not None else httpx.AsyncHTTPTransport(**kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        meter = current_meter()
        if meter is None:
            return await self.inner.handle_async_request(request)
        meter.add_io(sent=_request_size(request))
        response = await self.inner.handle_async_request(request)
        meter.add_io(received=_head_size(f"HTTP/1.1 {response.status_code}", response.headers))
        response.stream = _AsyncCountingStream(response.stream, meter)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def Client(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose traffic counts in the running task's usage."""
    transport = kwargs.pop("transport", None)
    return httpx.Client(transport=MeteredTransport(transport), **kwargs)


def AsyncClient(**kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose traffic counts in the running task's usage."""
    transport = kwargs.pop("transport", None)
    return httpx.AsyncClient(transport=MeteredAsyncTransport(transport), **kwargs)
