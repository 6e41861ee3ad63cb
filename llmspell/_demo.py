"""What ``llmspell demo`` runs: the bundled workflow ``llmspell/examples/demo.yaml``.

A three-stage pipeline, one stage per engine: Python fetches documents; a Lua
stage races a JavaScript and a Python summariser (the loser is cancelled the
moment the other wins); a JavaScript stage awaits a Lua task of its own. On a
terminal it shows the live progress table of ``llmspell run``; the result is
printed as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .examples import SCRIPT_PYTHON, path

__all__ = ["run_demo"]


def run_demo(*, json_only: bool = False) -> int:
    from . import Runtime
    from .workflow import load_workflow

    workflow = load_workflow(path("demo.yaml"))
    live = sys.stderr.isatty() and not json_only  # the display is drawn on stderr
    if live:
        print(
            "llmspell demo: a pipeline of Python -> Lua (racing JS against Python) -> JS "
            "(awaiting Lua)\n",
            file=sys.stderr,
            flush=True,
        )
    with Runtime(script_python=SCRIPT_PYTHON) as rt:  # its Lua step runs a Python step
        if live:
            from ._progress import run_with_progress

            result = run_with_progress(rt, workflow)
        else:
            result = rt._run_loaded_workflow(workflow)
    out: dict[str, Any] = result.to_dict()
    pretty = sys.stdout.isatty() and not json_only
    print(json.dumps(out, indent=2 if pretty else None), flush=True)
    return 0 if result.ok else 1
