"""``llmspell serve --journal``: a served runtime whose tasks outlive it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Server, run_cli, serve, until

from llmspell import Runtime, Task


def _stop(server: Server) -> None:
    """``llmspell stop``: the served runtime closes its journal as it would at the end."""
    run_cli("stop", "--port", str(server.port))
    server.process.wait(30)


@pytest.mark.slow
def test_a_task_waiting_for_approval_outlives_the_server(tmp_path: Path) -> None:
    journal = str(tmp_path / "served.db")
    with serve("--journal", journal) as server:
        assert server.banner["serving"] == server.address
        with Runtime(mode="local", address=server.address) as rt:
            rt.submit(
                Task.js(
                    "const e = await spell.wait_event('approve.*'); return 'ok by ' + e.payload",
                    id="approval",
                )
            )
            rt.result(rt.submit(Task.lua("return 1", id="done-before")), timeout=20)
        _stop(server)
    with serve("--journal", journal) as server:  # the next server, on the same journal
        with Runtime(mode="local", address=server.address) as rt:
            assert rt.result("done-before", timeout=20) == 1

            def approved() -> bool:
                rt.emit("approve.now", "ada")
                return rt.status("approval") == "succeeded"

            until(approved, "the resumed task saw the approval", timeout=20, every=0.2)
            assert rt.result("approval", timeout=20) == "ok by ada"
        _stop(server)
