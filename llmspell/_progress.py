"""The live progress display of ``llmspell run`` and ``llmspell demo`` on a terminal.

Drawn on **stderr** (stdout keeps only the JSON result, so ``| jq`` works while
the table shows). One line per step: its status, how long it has run, and a
detail: what the step last reported with ``spell.progress`` while it runs, the
first line of its error once it failed, what a pending step waits on, which
failure made a step ``skipped`` (a dependent of a failed step, a later stage of
a failed pipeline). Under the table, a summary line (``4/4 steps succeeded in
5.5 s``); after Ctrl-C or ``--timeout``, which steps were cancelled.

The workflow runs on a helper thread; this thread redraws the table (rich) ten
times a second by asking the runtime for each step's status and progress.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ._exceptions import LlmspellError

__all__ = ["run_with_progress", "wait_with_progress"]

_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "skipped": "dim yellow",
    "cancelled": "yellow",
    "timed_out": "magenta",
}
_ENDED = ("succeeded", "failed", "skipped", "cancelled", "timed_out")
_DETAIL = 60  # characters of an error shown in the table


def _cell(status: str) -> str:
    style = _STYLE.get(status)
    return f"[{style}]{status}[/]" if style else escape(status)


def _first_line(text: str, limit: int = _DETAIL) -> str:
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _progress_text(prog: Any) -> str:
    if prog is None or prog.completed_steps is None:
        return ""
    total = f"/{prog.total_steps:g}" if prog.total_steps else ""
    return f"{prog.completed_steps:g}{total} {prog.current_operation or ''}".rstrip()


class _Board:
    """Each step's last known status and detail, as the table shows them."""

    def __init__(self, rt: Any, workflow: Any) -> None:
        self.rt = rt
        self.title = f"workflow {workflow.name} ({_strategy(workflow)})"
        self.chained = _strategy(workflow) in ("sequential", "pipeline")
        self.steps = [
            (spec.id, str((spec.metadata or {}).get("step", spec.id)), list(spec.deps or ()))
            for spec in workflow.tasks
        ]
        self.names = {task_id: name for task_id, name, _ in self.steps}
        self.status = {task_id: "pending" for task_id, _, _ in self.steps}
        self.detail = {task_id: "" for task_id, _, _ in self.steps}
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.final: set[str] = set()  # ended, and why is known

    def refresh(self) -> None:
        now = time.monotonic()
        for i, (task_id, _, deps) in enumerate(self.steps):
            if task_id in self.final:
                continue  # an ended step's row does not change
            try:
                status = self.rt.status(task_id)
                prog = self.rt.progress(task_id) if status in ("running", "succeeded") else None
            except LlmspellError:  # closed under us (Ctrl-C, --timeout): keep what we knew
                continue
            if status == "running":
                self.started.setdefault(task_id, now)
                self.detail[task_id] = _progress_text(prog)
            elif status == "pending":
                self.detail[task_id] = self._waits_on(i, deps)
            else:
                self.started.setdefault(task_id, now)
                self.ended.setdefault(task_id, now)
                why = self._why(task_id, status)
                if why is not None:
                    self.final.add(task_id)
                    status, self.detail[task_id] = why
                if status == "succeeded":  # its final figures
                    self.detail[task_id] = _progress_text(prog)
            self.status[task_id] = status

    def _waits_on(self, i: int, deps: list[str]) -> str:
        if not deps and self.chained and i > 0:
            deps = [self.steps[i - 1][0]]
        waiting = [self.names.get(d, d) for d in deps if self.status.get(d) != "succeeded"]
        return "waits on " + ", ".join(waiting) if waiting else "queued"

    def _why(self, task_id: str, status: str) -> tuple[str, str] | None:
        """The status to show for an ended step and why; None while its outcome
        has not reached this runtime yet (asked again at the next refresh)."""
        if status == "succeeded":
            return status, ""
        try:
            self.rt.result(task_id, timeout=0)
            return status, ""
        except TimeoutError:
            return None
        except LlmspellError as exc:
            message = str(getattr(exc, "message", "") or exc)
        if status == "failed" and message.startswith("dependency "):
            m = re.match(r"dependency '([^']*)'", message)
            dep = self.names.get(m.group(1), m.group(1)) if m else "a dependency"
            return "skipped", f"because {dep} did not succeed"
        if status == "cancelled" and " stage " in message and message.endswith("failed"):
            return "skipped", "an earlier stage failed"
        return status, _first_line(message)

    def table(self) -> Table:
        t = Table(title=self.title, expand=False)
        for col in ("step", "status", "elapsed", "detail"):
            t.add_column(col)
        now = time.monotonic()
        for task_id, name, _ in self.steps:
            elapsed = ""
            if task_id in self.started:
                elapsed = f"{self.ended.get(task_id, now) - self.started[task_id]:.1f}s"
            t.add_row(
                escape(name), _cell(self.status[task_id]), elapsed, escape(self.detail[task_id])
            )
        return t

    def summary(self, seconds: float) -> str:
        counts: dict[str, int] = {}
        for status in self.status.values():
            counts[status] = counts.get(status, 0) + 1
        n, ok = len(self.steps), counts.pop("succeeded", 0)
        rest = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return f"{ok}/{n} steps succeeded in {seconds:.1f} s" + (f" ({rest})" if rest else "")

    def unfinished(self) -> list[str]:
        return [name for task_id, name, _ in self.steps if self.status[task_id] not in _ENDED]

    def settle(self, seconds: float = 2.0) -> None:
        """Refresh until every ended step's row is final (at most ``seconds``)."""
        deadline = time.monotonic() + seconds
        self.refresh()
        while len(self.final) < len(self.steps) and time.monotonic() < deadline:
            time.sleep(0.02)
            self.refresh()


def _strategy(workflow: Any) -> str:
    s = workflow.strategy
    return str(getattr(s, "value", s)).lower()


def run_with_progress(
    rt: Any, workflow: Any, console: Console | None = None, *, timeout: float | None = None
) -> Any:
    """Run ``workflow`` (a loaded ``Workflow``) on ``rt`` while drawing its steps;
    return the ``CoordinationResult`` (or raise what the run raised).

    ``timeout`` (seconds): stop waiting then and raise the builtin ``TimeoutError``
    (the caller closes the runtime, which cancels the steps). On ``TimeoutError``
    and ``KeyboardInterrupt`` the steps still going are named under the table
    before the exception goes on."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = rt._run_loaded_workflow(workflow)
        except BaseException as exc:  # re-raised on the caller's thread
            outcome["error"] = exc

    console = console or Console(stderr=True)
    board = _Board(rt, workflow)
    worker = threading.Thread(target=run, name="llmspell-workflow", daemon=True)
    t0 = time.monotonic()
    deadline = None if timeout is None else t0 + timeout
    worker.start()
    try:
        board.refresh()
        with Live(board.table(), console=console, refresh_per_second=10) as live:
            while worker.is_alive():
                wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
                worker.join(wait)
                if deadline is not None and worker.is_alive() and time.monotonic() >= deadline:
                    raise TimeoutError(f"the workflow did not end within {timeout:g} s")
                board.refresh()
                live.update(board.table())
            board.settle()
            live.update(board.table())
    except (KeyboardInterrupt, TimeoutError) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else "timed out"
        going = board.unfinished()
        console.print(
            f"{why}: cancelled {len(going)} step{'s' if len(going) != 1 else ''}"
            + (f" still going: {', '.join(going)}" if going else ""),
            markup=False,
            highlight=False,
        )
        raise
    if "error" in outcome:
        raise outcome["error"]
    console.print(board.summary(time.monotonic() - t0), markup=False, highlight=False)
    return outcome["result"]


def wait_with_progress(
    rt: Any,
    handle: Any,
    label: str,
    *,
    timeout: float | None = None,
    console: Console | None = None,
) -> Any:
    """``rt.result(handle, timeout)`` while drawing one line (on stderr unless
    ``console`` says otherwise): the task's status, elapsed time and what it
    reported with ``spell.progress``."""
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    last = ["pending"]

    def line() -> Table:
        t = Table(show_header=False, box=None)
        text = ""
        try:
            last[0] = rt.status(handle)
            text = _progress_text(rt.progress(handle))
        except LlmspellError:
            pass
        t.add_row(escape(label), _cell(last[0]), f"{time.monotonic() - t0:.1f}s", escape(text))
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
