"""``llmspell run FILE.lua``, end to end in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli


def script(tmp_path: Path, code: str, name: str = "script.lua") -> str:
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_run_lua_prints_the_result_as_json(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        "spell.sleep(0.01)\n"
        "local h = spell.submit{lang = 'lua', code = 'return spell.args.n + 1', "
        "args = {n = spell.args.n}}\n"
        "return {double = spell.args.n * 2, who = spell.args.who, next = spell.await(h),\n"
        "        list = spell.args.list, flag = spell.args.flag}\n",
    )
    out = run_cli(
        "run", path, "--arg", "n=21", "--arg", "who=world", "--arg", "list=[1, 2]",
        "--arg", "flag=true",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "double": 42,
        "who": "world",
        "next": 22,
        "list": [1, 2],
        "flag": True,
    }


@pytest.mark.slow
def test_run_lua_without_args_and_without_a_result(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "local x = 1\n"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is None


@pytest.mark.slow
def test_run_lua_bytes_result_is_printed_as_text(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "return 'caf\\u{e9} \\xff'"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == "caf\u00e9 \\xff"


@pytest.mark.slow
def test_failing_lua_script_exits_1_with_its_error(tmp_path: Path) -> None:
    path = script(tmp_path, "local what = spell.args.what\n\nerror('bad ' .. what)\n")
    out = run_cli("run", path, "--arg", "what=thing")
    assert out.returncode == 1
    # the error and the script's traceback name the file
    assert json.loads(out.stdout) == {"ok": False, "error": "script.lua:3: bad thing"}
    assert "script.lua:3: in main chunk" in out.stderr


@pytest.mark.slow
def test_lua_syntax_error_exits_1(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "return = 1"))
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["ok"] is False and result["error"].startswith("script.lua:1:")


@pytest.mark.slow
def test_lua_sandbox_escape_exits_1(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "return io.open('/etc/passwd'):read('a')"))
    assert out.returncode == 1
    assert "io" in json.loads(out.stdout)["error"]


@pytest.mark.slow
def test_run_timeout_exits_1(tmp_path: Path) -> None:
    out = run_cli("run", script(tmp_path, "spell.sleep(3600)"), "--timeout", "0.2")
    assert out.returncode == 1
    assert "--timeout" in json.loads(out.stdout)["error"]
