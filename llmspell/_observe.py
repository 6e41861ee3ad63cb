"""``llmspell tasks``, ``llmspell cancel`` and ``llmspell top``: look at and
control a runtime served by ``llmspell serve``, and the logging set-up every
command shares (``-v``/``--log-level``; script output for ``llmspell run``).

Each command attaches to the served runtime (``cli._attach``), asks, and
detaches; ``top`` asks once per refresh until Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["cancel_command", "script_output", "set_up_logging", "tasks_command", "top_command"]

LEVELS = ("debug", "info", "warning", "error", "critical")


def set_up_logging(verbose: int, level: str | None) -> int:
    """Send the ``llmspell`` loggers to stderr at ``level`` (``-v``: info,
    ``-vv``: debug; default warning). Returns the level set."""
    if level is not None:
        chosen = getattr(logging, level.upper())
    elif verbose >= 2:
        chosen = logging.DEBUG
    elif verbose == 1:
        chosen = logging.INFO
    else:
        chosen = logging.WARNING
    logger = logging.getLogger("llmspell")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(chosen)
    return int(chosen)


class _ScriptFormatter(logging.Formatter):
    """``[step or file] text`` for a script's output."""

    def __init__(self, name_of: Callable[[str], str]) -> None:
        super().__init__()
        self.name_of = name_of

    def format(self, record: logging.LogRecord) -> str:
        task_id = getattr(record, "task_id", None)
        text = getattr(record, "text", None)
        prefix = self.name_of(task_id) if isinstance(task_id, str) else "script"
        body = text if isinstance(text, str) else record.getMessage()
        if record.levelno >= logging.WARNING:
            body = f"{record.levelname.lower()}: {body}"
        return f"[{prefix}] {body}"


def script_output(name_of: Callable[[str], str], level: int) -> logging.Handler:
    """Show what scripts print (Lua ``print``, JS ``console.log``, ``spell.log``)
    on stderr as ``[name] text``; ``name_of(task_id)`` names the step or file.
    Shown from INFO unless a higher ``--log-level`` was asked for."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ScriptFormatter(name_of))
    logger = logging.getLogger("llmspell.script")
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO) if level <= logging.WARNING else level)
    logger.propagate = False
    return handler


# -- tasks, cancel ------------------------------------------------------------------


def tasks_command(rt: Any, status: str | None, as_json: bool) -> int:
    infos = rt.tasks(status)
    if as_json:
        print(json.dumps([i.to_dict() for i in infos]), flush=True)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "kind", "status", "attempts", "created", "ended (s)", "note")
    for i in infos:
        created = time.strftime("%H:%M:%S", time.localtime(i.created))
        took = "" if i.ended is None else f"{i.ended - i.created:.3f}"
        note = ""
        if i.status == "pending":  # a task of a cluster waiting for a member says why
            p = rt.progress(i.id)
            op = getattr(p, "current_operation", None) or ""
            note = op if op.startswith("waiting:") else ""
        table.add_row(i.id, i.kind, i.status, str(i.attempts), created, took, note)
    Console().print(table)
    return 0


def cancel_command(rt: Any, task_id: str) -> int:
    known = {i.id: i.status for i in rt.tasks()}
    if task_id not in known:
        print(f"llmspell: no task {task_id!r} in the served runtime", file=sys.stderr)
        return 1
    cancelled = bool(rt.cancel(task_id))
    print(json.dumps({"task_id": task_id, "cancelled": cancelled, "was": known[task_id]}))
    return 0 if cancelled else 1


# -- top ---------------------------------------------------------------------------


def _view(rt: Any, address: str) -> Any:
    """One frame: engines, running tasks with their progress, totals."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stats = rt.stats()
    engines = Table("engine", "pid", "rss MiB", "cpu %", "restarts", "running", title="engines")
    for e in stats.get("engines", []):
        rss = e.get("rss")
        cpu = e.get("cpu_percent")
        engines.add_row(
            f"{e.get('engine')}/{e.get('index', 0)}",
            str(e.get("pid")),
            "" if rss is None else f"{rss / (1 << 20):.1f}",
            "" if cpu is None else f"{cpu:.0f}",
            str(e.get("restarts", 0)),
            str(e.get("running", 0)),
        )
    running = Table("id", "kind", "elapsed s", "progress", "operation", title="running tasks")
    t = time.time()
    for info in rt.tasks("running")[:30]:
        try:
            p = rt.progress(info.id)
        except Exception:
            p = None
        done = total = None
        op = ""
        if p is not None:
            done, total, op = p.completed_steps, p.total_steps, p.current_operation or ""
        if done is not None and total:
            prog = f"{done:g}/{total:g} ({100 * done / total:.0f}%)"
        elif done is not None:
            prog = f"{done:g}"
        else:
            prog = ""
        running.add_row(info.id, info.kind, f"{t - info.created:.1f}", prog, op)
    queued = stats.get("queued") or {}
    totals = Text(
        f"llmspell top: {address}   submitted {stats.get('submitted', 0)}  "
        f"pending {stats.get('pending', 0)}  running {stats.get('running', 0)}  "
        f"succeeded {stats.get('succeeded', 0)}  failed {stats.get('failed', 0)}  "
        f"cancelled {stats.get('cancelled', 0)}  timed out {stats.get('timed_out', 0)}  "
        f"queued {sum(queued.values()) if isinstance(queued, dict) else 0}  "
        f"restarts {stats.get('restarts', 0)}   (Ctrl-C to quit)"
    )
    return Group(totals, engines, running)


def top_command(rt: Any, address: str, interval: float = 1.0) -> int:
    """Refresh the view every ``interval`` s until Ctrl-C (exit 0) or the
    served runtime goes away (exit 1)."""
    from rich.console import Console
    from rich.live import Live

    from ._exceptions import LlmspellError

    console = Console()
    try:
        with Live(_view(rt, address), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_view(rt, address), refresh=True)
    except KeyboardInterrupt:
        return 0
    except (LlmspellError, TimeoutError) as exc:
        print(f"llmspell: the served runtime stopped answering: {exc}", file=sys.stderr)
        return 1
