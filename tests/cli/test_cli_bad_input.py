"""The command line given bad input, or pointed at the wrong thing: one line on
stderr and exit 2 (bad input) or 1 (the work failed / nothing answered), never a
traceback, and no process left behind."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import run_cli

from llmspell import cli
from llmspell._driver import free_port

MARK = "LLMSPELL_TEST_MARK"


def marked_processes(mark: str) -> list[psutil.Process]:
    """The live processes whose environment carries ``mark`` (ours, and every
    process they started)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """An environment for the CLI that marks every process it starts; when the
    test ends none may be left (any that is, is killed by its pid)."""
    mark = uuid.uuid4().hex
    yield dict(os.environ, **{MARK: mark})
    deadline = time.monotonic() + 10
    left = marked_processes(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = marked_processes(mark)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    assert not left, f"processes left behind: {[p.pid for p in left]}"


def assert_one_line_error(out: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert out.returncode == code, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert text in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def assert_usage_error(out: subprocess.CompletedProcess[str], text: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert text in out.stderr.strip().splitlines()[-1]  # argparse: usage, then the error


def script(tmp_path: Path, code: str, name: str = "script.lua") -> str:
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    return str(path)


SLOW_WORKFLOW = """
name: slow
strategy: parallel
steps:
  - id: lua
    lang: lua
    code: spell.sleep(30)
  - id: js
    lang: js
    code: await spell.sleep(30)
"""


# -- run --timeout ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["embedded", pytest.param("local", marks=pytest.mark.slow)])
def test_a_workflow_file_gives_up_at_its_timeout_like_a_script(
    tmp_path: Path, env: dict[str, str], mode: str
) -> None:
    path = script(tmp_path, SLOW_WORKFLOW, "slow.yaml")
    out = run_cli("run", path, "--timeout", "0.5", "--mode", mode, timeout=15, env=env)
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout) == {
        "ok": False,
        "error": "no result within --timeout 0.5 s; the workflow was cancelled",
    }
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_workflow_that_ends_within_its_timeout_prints_its_result(tmp_path: Path) -> None:
    code = "steps:\n  - {id: a, lang: lua, code: return 1}\n  - {id: b, lang: js, code: return 2}\n"
    out = run_cli("run", script(tmp_path, code, "quick.yaml"), "--timeout", "60")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("value", ["-1", "0", "-0", "nan", "inf", "-inf", "1e12", "abc", ""])
def test_timeout_must_be_a_finite_number_of_seconds_above_zero(tmp_path: Path, value: str) -> None:
    out = run_cli("run", script(tmp_path, "return 1"), f"--timeout={value}")
    assert_usage_error(out, "argument --timeout: must be")


@pytest.mark.slow
def test_the_largest_timeout_allowed_still_runs(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "return 1"), "--timeout", "1e8")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 1


# -- --port and --workers ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "status", "stop"])
@pytest.mark.parametrize("port", ["0", "65536", "70000", "-1", "http"])
def test_port_must_be_1_to_65535(command: str, port: str, env: dict[str, str]) -> None:
    out = run_cli(command, f"--port={port}", timeout=20, env=env)
    assert_usage_error(out, "argument --port: must be")


@pytest.mark.parametrize("workers", ["0", "-1", "two", str(cli.MAX_WORKERS + 1)])
def test_serve_refuses_a_number_of_workers_it_should_not_start(
    workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Parsed only: a serve that took 100000 workers would start that many processes.
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args(["serve", f"--workers={workers}"])
    assert exc.value.code == 2
    assert "argument --workers: must be" in capsys.readouterr().err


# -- status/stop against something that is not llmspell ----------------------------


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=["silent", "http"])
def foreign_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port on 127.0.0.1 where something that is not llmspell listens: a TCP
    listener that never answers, or a web server."""
    if request.param == "silent":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            yield int(s.getsockname()[1])
        return
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["status", "stop"])
def test_status_and_stop_fail_soon_when_something_else_listens(
    command: str, foreign_port: int, env: dict[str, str]
) -> None:
    # Thespian alone takes ~15 s to give up: the subprocess timeout guards that
    out = run_cli(command, "--port", str(foreign_port), timeout=12, env=env)
    assert_one_line_error(
        out,
        1,
        f"no llmspell runtime answered at 127.0.0.1:{foreign_port} (something else listens there)",
    )
    assert out.stdout == ""


@pytest.mark.slow
def test_status_when_nothing_listens(env: dict[str, str]) -> None:
    port = free_port()
    out = run_cli("status", "--port", str(port), timeout=20, env=env)
    assert_one_line_error(out, 1, f"no llmspell runtime is served at 127.0.0.1:{port}")


@pytest.mark.slow
@pytest.mark.slow
def test_serve_status_stop_leave_no_process_behind(env: dict[str, str]) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llmspell.cli", "serve", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        assert json.loads(server.stdout.readline())["serving"] == f"127.0.0.1:{port}"
        status = run_cli("status", "--port", str(port), timeout=20, env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["address"] == f"127.0.0.1:{port}"
        stop = run_cli("stop", "--port", str(port), timeout=20, env=env)
        assert stop.returncode == 0, stop.stderr
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


# -- run --arg, the script file and the result ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arg", "shown"),
    [
        ("d=NaN", "NaN"),
        ("d=Infinity", "Infinity"),
        ("d=-Infinity", "-Infinity"),
        ("d=1e999", "1e999"),
        ("d=[1, NaN]", "NaN"),
        ('d={"x": -1e400}', "-1e400"),
    ],
)
def test_non_finite_numbers_in_args_are_refused(tmp_path: Path, arg: str, shown: str) -> None:
    out = run_cli("run", script(tmp_path, "return spell.args.d"), "--arg", arg)
    assert_usage_error(out, f"--arg d: {shown} is not a finite number")


@pytest.mark.slow
def test_a_quoted_nan_arg_is_text(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "return spell.args.d"), "--arg", 'd="NaN"')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == "NaN"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "text"),
    [("[" * 100_000, "nested too deeply"), ("9" * 5000, "is too large")],
)
def test_args_json_cannot_hold_are_refused(tmp_path: Path, value: str, text: str) -> None:
    out = run_cli("run", script(tmp_path, "return spell.args.d"), "--arg", f"d={value}")
    assert_usage_error(out, "--arg d: ")
    assert text in out.stderr


@pytest.mark.slow
def test_non_finite_results_are_printed_as_strict_json(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "return {a = 0/0, b = 1/0, c = {-1/0}}"))
    assert out.returncode == 0, out.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    assert json.loads(out.stdout, parse_constant=refuse) == {
        "a": "NaN",
        "b": "Infinity",
        "c": ["-Infinity"],
    }


@pytest.mark.slow
def test_a_script_that_is_not_utf8_text_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "latin1.lua"
    path.write_bytes(b"return 'caf\xe9'\n")
    out = run_cli("run", str(path))
    assert_one_line_error(out, 2, "it is not UTF-8 text")
