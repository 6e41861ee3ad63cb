"""``llmspell serve --journal``: a served runtime whose tasks outlive it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from llmspell import Runtime, Task
from llmspell._driver import free_port


def _serve(port: int, journal: Path) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmspell.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
            "--journal",
            str(journal),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert json.loads(line)["serving"] == f"127.0.0.1:{port}", server.stderr
    return server


def _stop(port: int, server: subprocess.Popen[str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "llmspell.cli", "stop", "--port", str(port)],
        capture_output=True,
        timeout=60,
    )
    try:
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_a_task_waiting_for_approval_outlives_the_server(tmp_path: Path) -> None:
    journal = tmp_path / "served.db"
    port = free_port()
    server = _serve(port, journal)
    try:
        with Runtime(mode="local", address=f"127.0.0.1:{port}") as rt:
            rt.submit(
                Task.js(
                    "const e = await spell.wait_event('approve.*'); return 'ok by ' + e.payload",
                    id="approval",
                )
            )
            rt.result(rt.submit(Task.lua("return 1", id="done-before")), timeout=20)
    finally:
        _stop(port, server)
    port = free_port()
    server = _serve(port, journal)  # the next server, on the same journal
    try:
        with Runtime(mode="local", address=f"127.0.0.1:{port}") as rt:
            assert rt.result("done-before", timeout=20) == 1
            deadline = time.monotonic() + 20
            while rt.status("approval") != "succeeded" and time.monotonic() < deadline:
                rt.emit("approve.now", "ada")
                time.sleep(0.2)
            assert rt.result("approval", timeout=20) == "ok by ada"
    finally:
        _stop(port, server)
