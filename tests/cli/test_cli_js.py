"""``llmspell run FILE.js``, end to end in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

SCRIPT = """\
// a JS task: the body of an async function; spell.args are the --arg values
const n = spell.args.n;
await spell.sleep(0);
const tripled = await spell.run({lang: 'lua', code: 'return spell.args.n * 3', args: {n}});
return {who: spell.args.who, doubled: n * 2, tripled, flags: spell.args.flags};
"""


@pytest.mark.slow
def test_run_a_js_file_with_args(tmp_path: Path) -> None:
    f = tmp_path / "task.js"
    f.write_text(SCRIPT)
    out = run_cli("run", str(f), "--arg", "n=21", "--arg", "who=world", "--arg", "flags=[1,true]")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "who": "world",
        "doubled": 42,
        "tripled": 63,
        "flags": [1, True],
    }


@pytest.mark.slow
def test_run_a_failing_js_file_exits_1_with_the_error_and_stack(tmp_path: Path) -> None:
    f = tmp_path / "bad.js"
    f.write_text(
        "await spell.yield();\nfunction boom() {\n  let v = null; return v.x;\n}\nreturn boom();\n"
    )
    out = run_cli("run", str(f))
    assert out.returncode == 1
    assert json.loads(out.stdout) == {
        "ok": False,
        "error": "TypeError: cannot read property 'x' of null (bad.js:3)",
    }
    assert "at boom (bad.js:3)" in out.stderr
    assert "at <task> (bad.js:5)" in out.stderr


@pytest.mark.slow
def test_run_a_js_file_with_a_syntax_error_exits_1(tmp_path: Path) -> None:
    f = tmp_path / "syntax.js"
    f.write_text("const a = 1;\nconst = 2;\n")
    out = run_cli("run", str(f))
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"].startswith("SyntaxError:")
    assert "(syntax.js:2)" in json.loads(out.stdout)["error"]
