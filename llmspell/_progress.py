"""The live progress display of ``llmspell run workflow.yaml`` on a terminal.

One line per step: its status, how long it has run, and what the step itself
last reported with ``spell.progress`` (done/total and the message). The
workflow runs on a helper thread; this thread redraws the table (rich) ten
times a second by asking the runtime for each step's status and progress.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["run_with_progress", "wait_with_progress"]

_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "timed_out": "magenta",
}


def run_with_progress(rt: Any, workflow: Any, console: Console | None = None) -> Any:
    """Run ``workflow`` (a loaded ``Workflow``) on ``rt`` while drawing its
    steps; return the ``CoordinationResult`` (or raise what the run raised)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = rt._run_loaded_workflow(workflow)
        except BaseException as exc:  # re-raised on the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="llmspell-workflow", daemon=True)
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    steps = [(spec.id, (spec.metadata or {}).get("step", spec.id)) for spec in workflow.tasks]
    console = console or Console()

    def table() -> Table:
        t = Table(title=f"workflow {workflow.name} ({workflow.strategy})", expand=False)
        for col in ("step", "status", "elapsed", "progress"):
            t.add_column(col)
        now = time.monotonic()
        for task_id, step in steps:
            try:
                status = rt.status(task_id)
                prog = rt.progress(task_id) if status != "pending" else None
            except Exception:
                status, prog = "?", None
            if status == "running":
                started.setdefault(task_id, now)
            elif status not in ("pending", "?") and task_id not in ended:
                started.setdefault(task_id, now)
                ended[task_id] = now
            elapsed = ""
            if task_id in started:
                elapsed = f"{ended.get(task_id, now) - started[task_id]:.1f}s"
            text = ""
            if prog is not None and prog.completed_steps is not None:
                total = f"/{prog.total_steps:g}" if prog.total_steps else ""
                text = f"{prog.completed_steps:g}{total}"
                if prog.current_operation:
                    text += f" {prog.current_operation}"
            t.add_row(str(step), f"[{_STYLE.get(status, '')}]{status}", elapsed, text)
        return t

    worker.start()
    with Live(table(), console=console, refresh_per_second=10, transient=False) as live:
        while worker.is_alive():
            worker.join(0.1)
            live.update(table())
        live.update(table())
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def wait_with_progress(
    rt: Any,
    handle: Any,
    label: str,
    *,
    timeout: float | None = None,
    console: Console | None = None,
) -> Any:
    """``rt.result(handle, timeout)`` while drawing one line: the task's
    status, elapsed time and what it reported with ``spell.progress``."""
    console = console or Console()
    t0 = time.monotonic()

    def line() -> Table:
        t = Table(show_header=False, box=None)
        try:
            status = rt.status(handle)
            prog = rt.progress(handle)
        except Exception:
            status, prog = "?", None
        text = ""
        if prog is not None and prog.completed_steps is not None:
            total = f"/{prog.total_steps:g}" if prog.total_steps else ""
            text = f"{prog.completed_steps:g}{total} {prog.current_operation or ''}".rstrip()
        t.add_row(
            label, f"[{_STYLE.get(status, '')}]{status}", f"{time.monotonic() - t0:.1f}s", text
        )
        return t

    deadline = None if timeout is None else t0 + timeout
    with Live(line(), console=console, refresh_per_second=10, transient=True) as live:
        while True:
            wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
            try:
                return rt.result(handle, timeout=wait)
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                live.update(line())
