"""``llmspell tasks``, ``cancel`` and ``top`` against ``llmspell serve`` (in
subprocesses, on a port the test picks); ``-v``/``--log-level``; script
output on ``llmspell run``'s stderr."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import helpers
import httpx
import pytest
from helpers import run_cli, serve, until, with_tests_on_path
from prometheus_client.parser import text_string_to_metric_families

from llmspell import Runtime, Task
from llmspell._driver import free_port

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=with_tests_on_path())


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, int]]:
    """``llmspell serve`` on a free port, with metrics on another: (port, metrics port)."""
    metrics = free_port()
    with serve("--metrics-port", str(metrics)) as server:
        assert server.banner["metrics"] == f"http://127.0.0.1:{metrics}/metrics"
        yield server.port, metrics


def test_tasks_and_cancel_of_a_served_runtime(served: tuple[int, int]) -> None:
    port, metrics = served
    with Runtime(mode="local", address=f"127.0.0.1:{port}") as rt:
        done = rt.submit(Task.lua("return 1"))
        assert rt.result(done, timeout=30) == 1
        slow = rt.submit(Task.lua("spell.progress(1, 4, 'step one') spell.sleep(60)"))
        until(lambda: rt.status(slow) == "running", "the slow task runs", timeout=30)
        listed = cli("tasks", "--port", str(port), "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["id"]: r for r in json.loads(listed.stdout)}
        assert rows[done.id]["status"] == "succeeded" and rows[done.id]["kind"] == "lua"
        assert rows[slow.id]["status"] == "running" and rows[slow.id]["ended"] is None
        running = cli("tasks", "--port", str(port), "--status", "running", "--json")
        assert [r["id"] for r in json.loads(running.stdout)] == [slow.id]
        table = cli("tasks", "--port", str(port))
        assert table.returncode == 0 and slow.id in table.stdout

        cancelled = cli("cancel", slow.id, "--port", str(port))
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout) == {
            "task_id": slow.id,
            "cancelled": True,
            "was": "running",
        }
        assert rt.status(slow) == "cancelled"
        again = cli("cancel", slow.id, "--port", str(port))
        assert again.returncode == 1 and json.loads(again.stdout)["cancelled"] is False
        unknown = cli("cancel", "no-such-task", "--port", str(port))
        assert unknown.returncode == 1 and "no task 'no-such-task'" in unknown.stderr
    # the served runtime's metrics counted that work
    text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("llmspell_tasks_total", (("kind", "lua"), ("status", "succeeded")))] >= 1
    assert samples[("llmspell_tasks_total", (("kind", "lua"), ("status", "cancelled")))] >= 1


def test_top_shows_engines_and_running_tasks_until_ctrl_c(served: tuple[int, int]) -> None:
    port, _ = served
    with Runtime(mode="local", address=f"127.0.0.1:{port}") as rt:
        slow = rt.submit(Task.lua("spell.progress(2, 8, 'halfway there') spell.sleep(60)"))
        until(lambda: rt.progress(slow) is not None, "the slow task reports progress", timeout=30)
        pid, fd = pty.fork()
        if pid == 0:  # the child: llmspell top on the pseudo-terminal
            os.environ["PYTHONPATH"] = str(helpers.TESTS)
            os.environ["COLUMNS"] = "160"
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "llmspell.cli",
                    "top",
                    "--port",
                    str(port),
                    "--interval",
                    "0.2",
                ],
            )
        out = b""
        try:
            deadline = time.monotonic() + 60
            # a few frames: the running task's id, its progress, then more refreshes
            while out.count(b"llmspell top") < 3 or slow.id.encode() not in out:
                assert time.monotonic() < deadline, out[-2000:]
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready:
                    try:
                        out += os.read(fd, 65536)
                    except OSError:
                        break
            os.kill(pid, signal.SIGINT)
            end = time.monotonic() + 30
            status = None
            while time.monotonic() < end:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    try:
                        out += os.read(fd, 65536)
                    except OSError:
                        pass
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            assert status is not None and os.WIFEXITED(status), status
            assert os.WEXITSTATUS(status) == 0
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(fd)
            rt.cancel(slow)
    text = out.decode("utf-8", "replace")
    assert "engines" in text and "running tasks" in text
    assert "2/8 (25%)" in text and "halfway there" in text
    assert "Traceback" not in text


def test_observe_commands_without_a_server_fail_clearly() -> None:
    port = str(free_port())
    for args in (
        ("tasks", "--port", port),
        ("cancel", "x", "--port", port),
        ("top", "--port", port),
    ):
        out = cli(*args)
        assert out.returncode == 1
        assert "no llmspell runtime is served" in out.stderr


def test_run_shows_script_output_prefixed_on_stderr(tmp_path: Path) -> None:
    script = tmp_path / "hello.lua"
    script.write_text("print('hi from lua', 42) spell.log('warn', 'careful') return 1")
    out = cli("run", str(script))
    assert out.returncode == 0 and json.loads(out.stdout) == 1
    assert "[hello.lua] hi from lua\t42" in out.stderr
    assert "[hello.lua] warning: careful" in out.stderr
    quiet = cli("run", str(script), "--log-level", "error")
    assert "hi from lua" not in quiet.stderr and json.loads(quiet.stdout) == 1

    js = tmp_path / "hello.js"
    js.write_text("console.log('hi from js'); return 2;")
    out = cli("run", str(js))
    assert "[hello.js] hi from js" in out.stderr

    wf = tmp_path / "flow.yaml"
    wf.write_text(
        "name: flow\nstrategy: sequential\nsteps:\n"
        "  - id: greet\n    lang: lua\n    code: print('from greet') return 1\n"
        "  - id: shout\n    lang: js\n    code: console.log('from shout'); return 2\n"
    )
    out = cli("run", str(wf))
    assert out.returncode == 0, out.stderr
    assert "[greet] from greet" in out.stderr and "[shout] from shout" in out.stderr


def test_verbose_and_log_level_on_every_command(tmp_path: Path) -> None:
    for command in ("run", "demo", "serve", "status", "stop", "tasks", "cancel", "top"):
        out = cli(command, "--help")
        assert "--log-level" in out.stdout and "-v" in out.stdout, command
    bad = cli("--log-level", "loud", "status")
    assert bad.returncode == 2 and "--log-level" in bad.stderr
    script = tmp_path / "deep.lua"
    script.write_text("spell.log('debug', 'deep detail') return 1")
    assert "deep detail" not in cli("run", str(script)).stderr
    assert "[deep.lua] deep detail" in cli("-vv", "run", str(script)).stderr
    assert "[deep.lua] deep detail" in cli("run", str(script), "--log-level", "debug").stderr
