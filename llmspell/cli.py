"""The ``llmspell`` command line.

``llmspell demo`` runs the bundled example; ``llmspell run FILE`` runs a
``.lua``/``.js`` script (its result printed as JSON) or a workflow
``.yaml``/``.json`` file (its CoordinationResult printed as JSON); ``llmspell journal
PATH [TASK_ID]`` lists a journal's tasks or shows one task's record. Exit codes: 0 success,
1 the work failed (or no runtime answered), 2 bad input (file, arguments). An error is
one line on stderr, never a traceback.

What is printed is strict JSON: a float that JSON cannot hold (a script returning
``0/0`` or ``1/0``) is printed as the string ``"NaN"``, ``"Infinity"`` or
``"-Infinity"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._exceptions import JournalError, LlmspellError, MessageError, TaskFailed

__all__ = ["DEFAULT_PORT", "main"]

DEFAULT_PORT = 1921
# --timeout above this is refused: ~3 years, and past ~9e9 s the waits overflow.
MAX_TIMEOUT = 1e8
# How long status/stop wait to attach. A served runtime answers in well under a
# second; Thespian itself takes ~15 s to give up on a listener that is not one.
ATTACH_WAIT = 5.0
# serve --workers above this is refused (one process per worker and engine).
MAX_WORKERS = max(64, os.cpu_count() or 1)


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _NotFinite(Exception):
    """A JSON number in --arg that is NaN or infinite (its text is the arg)."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise _NotFinite(text)
    return value


def _reject_constant(text: str) -> float:  # NaN, Infinity, -Infinity
    raise _NotFinite(text)


def _parse_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--arg wants key=value, got {_shown(text)}")
    try:
        value: Any = json.loads(raw, parse_float=_finite, parse_constant=_reject_constant)
    except json.JSONDecodeError:
        value = raw  # plain strings need no quotes
    except _NotFinite as exc:
        raise argparse.ArgumentTypeError(
            f"--arg {key}: {exc} is not a finite number (for the text, quote it: {key}='\"{exc}\"')"
        ) from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"--arg {key}: the value is nested too deeply") from None
    except ValueError:  # an integer of thousands of digits
        raise argparse.ArgumentTypeError(f"--arg {key}: {_shown(raw)} is too large") from None
    return key, value


def _parse_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds, got {_shown(text)}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds > 0, got {_shown(text)}"
        )
    if value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_TIMEOUT:.0f} s (leave it out for no limit), got {_shown(text)}"
        )
    return value


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {_shown(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse


_parse_port = _int_between(1, 65535)
_parse_workers = _int_between(1, MAX_WORKERS)


def _parse_pattern(text: str) -> str:
    if ":" not in text:
        raise argparse.ArgumentTypeError(
            f"must be a 'module:function' pattern like 'myapp.tools:*', got {_shown(text)}"
        )
    return text


def _logging_options(p: argparse.ArgumentParser, default: Any) -> None:
    """``-v``/``--log-level``, on the main parser and on every command."""
    from ._observe import LEVELS

    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="log more: -v info, -vv debug (default: warnings and errors)",
    )
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        type=str.lower,
        default=default,
        help="the level of the llmspell loggers (overrides -v)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmspell",
        description="Run LLM application work (Python, Lua, JavaScript) on an actor runtime.",
    )
    p.add_argument("--version", action="version", version=f"llmspell {__version__}")
    _logging_options(p, None)
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a command's own -v/--log-level only overrides the main parser's when given
    _logging_options(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    demo = command("demo", help="run the bundled cross-engine example")
    demo.add_argument("--json", action="store_true", help="print only the JSON result")

    run = command(
        "run", help="run a .lua/.js script or a workflow .yaml/.json; print the result as JSON"
    )
    run.add_argument("file", type=Path)
    run.add_argument("--mode", default="embedded", choices=["embedded", "local", "cluster"])
    run.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        type=_parse_arg,
        metavar="KEY=VALUE",
        help="an argument for the script (JSON or text; NaN and infinities are refused)",
    )
    run.add_argument(
        "--timeout",
        type=_parse_timeout,
        default=None,
        metavar="SECONDS",
        help="stop waiting after this long, cancel the work and exit 1 "
        f"(a number > 0, at most {MAX_TIMEOUT:.0f}; default: no limit)",
    )
    run.add_argument("--json", action="store_true", help="print only the JSON result")
    run.add_argument(
        "--journal",
        default=None,
        metavar="PATH",
        help="a journal file (SQLite): resume an unfinished run of this file recorded "
        "there, or start one that survives the death of this process",
    )
    run.add_argument(
        "--allow-python",
        dest="allow_python",
        action="append",
        default=[],
        type=_parse_pattern,
        metavar="MODULE:FUNCTION",
        help="a Python target (glob, e.g. 'myapp.tools:*') the scripts may run; repeatable "
        "(none by default: Runtime(script_python=...))",
    )
    serve = command("serve", help="run a local multi-process runtime on 127.0.0.1")
    serve.add_argument(
        "--port",
        type=_parse_port,
        default=DEFAULT_PORT,
        help=f"admin port on 127.0.0.1, 1..65535 (default {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--workers",
        type=_parse_workers,
        default=None,
        help=f"engine processes per engine, 1..{MAX_WORKERS} (default: one per core)",
    )
    serve.add_argument(
        "--journal",
        default=None,
        metavar="PATH",
        help="a journal file (SQLite): every task survives a restart of the server",
    )
    serve.add_argument(
        "--metrics-port",
        type=_parse_port,
        default=None,
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics",
    )

    serve.add_argument(
        "--cluster",
        action="store_true",
        help="be a cluster leader: members join with `llmspell join HOST:PORT` and run the "
        "engines (this process runs none)",
    )
    serve.add_argument(
        "--host",
        default=None,
        metavar="ADDR",
        help="with --cluster: the address of this machine to listen on (default 127.0.0.1); "
        "nothing listens on any other",
    )

    join = command(
        "join",
        help="join a cluster as a member that runs engines",
        description="Run a cluster member until SIGTERM/Ctrl-C. The cluster's secret comes "
        "from --secret-file, else LLMSPELL_SECRET, else the leader's secret file on this "
        "machine.",
    )
    join.add_argument("leader", metavar="HOST:PORT", help="the leader (`llmspell serve --cluster`)")
    join.add_argument(
        "--host", default=None, metavar="ADDR", help="this member's address to listen on"
    )
    join.add_argument(
        "--port", type=_parse_port, default=None, help="this member's admin port (default: free)"
    )
    join.add_argument(
        "--engines",
        type=_parse_engines,
        default=["python", "lua", "js"],
        metavar="LIST",
        help="engines it offers, comma-separated (default: python,lua,js)",
    )
    join.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        type=_parse_tag,
        metavar="NAME",
        help="a tag tasks can ask for (Task option tags=[...]); repeatable",
    )
    join.add_argument(
        "--workers",
        type=_parse_workers,
        default=1,
        help=f"engine processes per engine, 1..{MAX_WORKERS} (default 1)",
    )
    join.add_argument("--name", default=None, help="this member's name (default HOST:PORT)")
    join.add_argument("--secret-file", default=None, metavar="PATH", help="the cluster's secret")
    join.add_argument(
        "--exit-with-leader",
        action="store_true",
        help="exit when the leader is gone (default: wait and join a new one there)",
    )

    from .messages.types import STATUSES

    tasks = command("tasks", help="list the tasks of a served runtime")
    tasks.add_argument("--status", choices=STATUSES, default=None, help="only those")
    tasks.add_argument("--json", action="store_true", help="print a JSON list")
    cancel = command("cancel", help="cancel a task of a served runtime")
    cancel.add_argument("task_id", metavar="TASK_ID")
    top = command("top", help="a live view of a served runtime (Ctrl-C to quit)")
    top.add_argument(
        "--interval", type=_parse_timeout, default=1.0, help="seconds between refreshes"
    )

    journal = command(
        "journal",
        help="list the tasks of a journal file (Runtime(journal=...)), or show one task's record",
        description="Without TASK_ID: the journal's tasks as a table (--json: a JSON list). "
        "With TASK_ID: that task's record as JSON (spec, state changes, host calls and "
        "their results). Reads only: works while a runtime owns the journal.",
    )
    journal.add_argument("path", metavar="PATH", help="the journal file")
    journal.add_argument("task_id", metavar="TASK_ID", nargs="?", help="show this task's record")
    journal.add_argument("--status", choices=STATUSES, default=None, help="only those")
    journal.add_argument("--json", action="store_true", help="print a JSON list")

    observers = [tasks, cancel, top]
    for name, text in (("status", "inspect a served runtime"), ("stop", "stop a served runtime")):
        observers.append(command(name, help=text))
    for c in observers:
        c.add_argument(
            "--port",
            type=_parse_port,
            default=DEFAULT_PORT,
            help=f"its admin port, 1..65535 (default {DEFAULT_PORT})",
        )
        c.add_argument(
            "--host",
            default="127.0.0.1",
            metavar="ADDR",
            help="the address it listens on: 127.0.0.1 (default), or the address a "
            "cluster leader was served on (`serve --cluster --host ADDR`), from any machine "
            "that reaches it (the secret from LLMSPELL_SECRET or the leader's secret file)",
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    from ._observe import set_up_logging

    args.log_threshold = set_up_logging(args.verbose or 0, args.log_level)
    try:
        if args.command in ("tasks", "cancel", "top"):
            return _observe_command(args)
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(json_only=args.json)
        if args.command == "run":
            return _run_file(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "join":
            return _join(args)
        if args.command == "status":
            return _status(args)
        if args.command == "stop":
            return _stop(args)
        if args.command == "journal":
            return _journal(args)
    except MessageError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 2
    except LlmspellError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llmspell: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # not ours to explain: still one line, not a traceback
        print(f"llmspell: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover - argparse rejects unknown commands


def _run_file(args: argparse.Namespace) -> int:
    from . import Runtime, Task

    path: Path = args.file
    if not path.is_file():
        print(f"llmspell: no such file: {path}", file=sys.stderr)
        return 2
    # Python targets ("myapp.steps:fetch") import from the current directory, as with
    # `python -m` (the console script's own directory is what Python put there)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    script_args = dict(args.args)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return _run_workflow(path, args)
    if suffix not in (".lua", ".js", ".mjs"):
        print(
            f"llmspell: don't know how to run {path.name!r} "
            "(expected .lua, .js, or a workflow .yaml/.json)",
            file=sys.stderr,
        )
        return 2
    try:
        code = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        print(f"llmspell: cannot read {path}: it is not UTF-8 text", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llmspell: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    make = Task.lua if suffix == ".lua" else Task.js
    from ._observe import script_output

    script_output(lambda _task_id: path.name, args.log_threshold)
    config = _journal_config(args)
    with Runtime(mode=args.mode, script_python=args.allow_python, **config) as rt:
        run_id, resumed = _journaled_run(rt, path, code, script_args) if config else (None, False)
        handle: Any = run_id
        if not resumed:
            # errors name the file
            task = make(code, args=script_args, metadata={"source": path.name}, id=run_id)
            handle = rt.submit(task)
        try:
            if sys.stderr.isatty() and not args.json:  # drawn on stderr: `| jq` keeps it
                from ._progress import wait_with_progress

                value = wait_with_progress(rt, handle, path.name, timeout=args.timeout)
            else:
                value = rt.result(handle, timeout=args.timeout)
        except TaskFailed as exc:
            print(json.dumps({"ok": False, "error": exc.message}), flush=True)
            if exc.traceback:
                print(exc.traceback, file=sys.stderr)
            return 1
        except TimeoutError:  # --timeout ran out; closing the runtime cancels the task
            return _timed_out(args.timeout, "task")
    _print_json(value)
    return 0


def _run_workflow(path: Path, args: argparse.Namespace) -> int:
    """A workflow file: its CoordinationResult as JSON; exit 1 unless ``ok``.

    The workflow runs on a helper thread so that this one can give up after
    ``--timeout``: closing the runtime then cancels every step."""
    import threading

    from . import Runtime
    from .workflow import load_workflow

    if args.args:
        print("llmspell: a workflow takes no --arg", file=sys.stderr)
        return 2
    workflow = load_workflow(path)  # malformed: bad input (exit 2) before anything starts
    from ._observe import script_output

    steps = {spec.id: str(step) for spec, step in zip(workflow.tasks, workflow.steps, strict=False)}
    script_output(lambda task_id: steps.get(task_id, path.name), args.log_threshold)
    live = sys.stderr.isatty() and not args.json  # drawn on stderr: `| jq` keeps it
    outcome: dict[str, Any] = {}
    allowed = list(args.allow_python)
    if _is_bundled_demo(path):  # as `llmspell demo`: its Lua step runs its own Python step
        from .examples import SCRIPT_PYTHON

        allowed += SCRIPT_PYTHON
    config = _journal_config(args)
    with Runtime(mode=args.mode, script_python=allowed, **config) as rt:
        if config:  # the whole workflow is one task, resumed by id from the journal
            return _run_journaled_workflow(rt, path, args)
        if live:  # the display waits (and gives up after --timeout) on this thread
            from ._progress import run_with_progress

            try:
                result = run_with_progress(rt, workflow, timeout=args.timeout)
            except TimeoutError:
                rt.close()  # cancels every step
                return _timed_out(args.timeout, "workflow")
        else:

            def run() -> None:
                try:
                    outcome["result"] = rt._run_loaded_workflow(workflow)
                except BaseException as exc:  # re-raised on the caller's thread
                    outcome["error"] = exc

            worker = threading.Thread(target=run, name="llmspell-workflow", daemon=True)
            worker.start()
            worker.join(args.timeout)
            if worker.is_alive():
                rt.close()  # the worker's wait ends (RuntimeClosed)
                worker.join(ATTACH_WAIT)
                return _timed_out(args.timeout, "workflow")
            if "error" in outcome:
                raise outcome["error"]
            result = outcome["result"]
    _print_json(result.to_dict())
    return 0 if result.ok else 1


def _journal_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"journal": str(args.journal)} if args.journal else {}


def _run_key(path: Path, content: str) -> str:
    """The id of a run of ``path`` in a journal: its name and a digest of its
    location and content (a changed file is another run)."""
    import hashlib

    digest = hashlib.sha256(f"{path.resolve()}\0{content}".encode()).hexdigest()[:12]
    return f"run:{path.name}@{digest}"


def _journaled_run(rt: Any, path: Path, content: str, script_args: Any) -> tuple[str, bool]:
    """The task id of this run and whether it is resumed: an unfinished run of
    the same file (and args) in the journal, which the runtime resumed when it
    opened; else a new id."""
    base = _run_key(path, json.dumps([content, script_args], sort_keys=True, default=str))
    runs = [t for t in rt.tasks() if t.id == base or t.id.startswith(base + "#")]
    for t in runs:
        if t.status in ("pending", "running"):
            print(
                f"llmspell: resuming {t.id} from {rt._core.config.get('journal')}", file=sys.stderr
            )
            return str(t.id), True
    if not runs:
        return base, False
    # the next number after the highest kept (older runs may have been compacted away)
    numbers = [int(t.id[len(base) + 1 :]) for t in runs if t.id[len(base) + 1 :].isdigit()]
    return f"{base}#{max([1, *numbers]) + 1}", False


def _run_journaled_workflow(rt: Any, path: Path, args: argparse.Namespace) -> int:
    from . import Task

    text = path.read_text(encoding="utf-8")
    run_id, resumed = _journaled_run(rt, path, text, None)
    if not resumed:
        rt.submit(Task.workflow(path, id=run_id))
    try:
        result = rt.result(run_id, timeout=args.timeout)
    except TimeoutError:
        rt.close()  # cancels every step
        return _timed_out(args.timeout, "workflow")
    _print_json(result)
    return 0 if isinstance(result, dict) and result.get("ok") else 1


def _is_bundled_demo(path: Path) -> bool:
    from .examples import path as example

    try:
        return path.resolve() == example("demo.yaml").resolve()
    except OSError:
        return False


def _timed_out(timeout: float, what: str) -> int:
    message = f"no result within --timeout {timeout:g} s; the {what} was cancelled"
    print(json.dumps({"ok": False, "error": message}), flush=True)
    return 1


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from . import Runtime, _frames

    config: dict[str, Any] = {"port": args.port}
    if args.workers is not None:
        config["workers"] = args.workers
    if args.metrics_port is not None:
        config["metrics_port"] = args.metrics_port
    config.update(_journal_config(args))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # clients find the secret in a file only this user can read (or take LLMSPELL_SECRET)
    secret = os.environ.get("LLMSPELL_SECRET") or _frames.new_secret()
    if args.host is not None and not args.cluster:
        raise MessageError("--host needs --cluster (a local runtime listens on 127.0.0.1)")
    mode = "local"
    if args.cluster:
        mode = "cluster"
        config["host"] = args.host or "127.0.0.1"
    host = config.get("host", "127.0.0.1")
    with Runtime(mode=mode, secret=secret, **config) as rt:
        _frames.write_secret_file(args.port, secret)
        try:
            _serve_until_stopped(rt, args, stop)
        finally:
            _frames.remove_secret_file(args.port, secret)
    print(json.dumps({"stopped": f"{host}:{args.port}"}), flush=True)
    return 0


def _join(args: argparse.Namespace) -> int:
    from . import _cluster
    from ._driver import parse_address

    _, port = parse_address(args.leader)
    secret, where = _cluster.member_secret(port, args.secret_file)
    return _cluster.join(
        args.leader,
        host=args.host,
        port=args.port,
        engines=args.engines,
        tags=args.tags,
        workers=args.workers,
        secret=secret,
        secret_from=where,
        name=args.name,
        exit_with_leader=args.exit_with_leader,
    )


def _parse_engines(text: str) -> list[str]:
    from .messages.config import ENGINES

    names = [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in names if e not in ENGINES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of {', '.join(ENGINES)}, got {text!r}"
        )
    return list(dict.fromkeys(names))


def _parse_tag(text: str) -> str:
    if not text or "," in text or text != text.strip():
        raise argparse.ArgumentTypeError(f"a tag is a name without commas or spaces, got {text!r}")
    return text


def _serve_until_stopped(rt: Any, args: argparse.Namespace, stop: Any) -> None:
    import time

    # engines register as their processes come up: report them once they are there
    expected = (
        0 if rt.mode == "cluster" else sum(int(n) for n in rt._core.config["engines"].values())
    )
    deadline = time.monotonic() + 30
    engines = rt.stats()["engines"]
    while len(engines) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        engines = rt.stats()["engines"]
    host = args.host or "127.0.0.1"
    serving: dict[str, Any] = {"serving": f"{host}:{args.port}", "engines": len(engines)}
    if rt.mode == "cluster":
        serving["cluster"] = True
    if args.metrics_port is not None:
        serving["metrics"] = f"http://127.0.0.1:{args.metrics_port}/metrics"
    print(json.dumps(serving), flush=True)
    while not stop.wait(0.5):
        if _stop_requested(rt):
            break


def _observe_command(args: argparse.Namespace) -> int:
    from . import _observe

    try:
        rt = _attach(args.port, args.host)
    except LlmspellError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 1
    with rt:
        if args.command == "tasks":
            return _observe.tasks_command(rt, args.status, args.json)
        if args.command == "cancel":
            return _observe.cancel_command(rt, args.task_id)
        return _observe.top_command(rt, f"{args.host}:{args.port}", args.interval)


def _stop_requested(rt: Any) -> bool:
    try:
        return bool(rt.stats().get("stop_requested"))
    except Exception:
        return True  # the runtime is gone


def _attach(port: int, host: str = "127.0.0.1") -> Any:
    """A Runtime attached to the one ``llmspell serve`` runs on ``port``.

    Raises ``LlmspellError`` if nothing listens there, or if no llmspell
    runtime answers within ``ATTACH_WAIT`` s (Thespian would take ~15 s to give
    up on, say, a web server: the attach runs on a helper thread, left behind).
    """
    import threading

    from . import Runtime

    address = f"{host}:{port}"
    # a served runtime or a cluster leader on 127.0.0.1 attaches the same way; a
    # leader on another address of this machine as a cluster client
    mode = "local" if host == "127.0.0.1" else "cluster"
    attached: list[Any] = []
    failed: list[BaseException] = []

    def attach() -> None:
        try:
            attached.append(Runtime(mode=mode, address=address))
        except BaseException as exc:
            failed.append(exc)

    helper = threading.Thread(target=attach, name="llmspell-attach", daemon=True)
    helper.start()
    helper.join(ATTACH_WAIT)
    if attached:
        return attached[0]
    if failed and isinstance(failed[0], LlmspellError):
        raise failed[0]  # nothing listens there
    raise LlmspellError(f"no llmspell runtime answered at {address} (something else listens there)")


def _status(args: argparse.Namespace) -> int:
    try:
        with _attach(args.port, args.host) as rt:
            stats = rt.stats()
    except LlmspellError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 1
    queued = stats.get("queued", {})
    print(
        json.dumps(
            {
                "address": f"{args.host}:{args.port}",
                "engines": [
                    {k: e[k] for k in ("engine", "index", "pid", "restarts", "running")}
                    for e in stats["engines"]
                ],
                "queue_depth": sum(queued.values()) if isinstance(queued, dict) else 0,
                "tasks": {
                    k: stats[k]
                    for k in (
                        "submitted",
                        "pending",
                        "running",
                        "succeeded",
                        "failed",
                        "cancelled",
                        "timed_out",
                    )
                },
                "restarts": stats["restarts"],
                "degraded": stats.get("degraded"),
            },
            indent=2,
        )
    )
    return 0


def _stop(args: argparse.Namespace) -> int:
    try:
        with _attach(args.port, args.host) as rt:
            rt._request_stop()
    except LlmspellError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"stopping": f"{args.host}:{args.port}"}))
    return 0


def _journal(args: argparse.Namespace) -> int:
    """``llmspell journal PATH [TASK_ID]``: read a journal file (read-only)."""
    from .journal import Journal

    if args.task_id is not None and args.status is not None:
        print("llmspell: --status filters the task list; it does not go with TASK_ID",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        with Journal.open(args.path, readonly=True) as journal:
            if args.task_id is not None:
                try:
                    record = journal.record(args.task_id)
                except KeyError:
                    print(f"llmspell: journal {journal.path}: no task {args.task_id!r}",
                          file=sys.stderr)  # fmt: skip
                    return 2
                _print_json(record)
                return 0
            tasks = journal.listing(args.status)  # no values read: a bad one breaks no listing
    except JournalError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json([
            dict(zip(("id", "kind", "status", "attempts", "created", "ended"), t, strict=True))
            for t in tasks
        ])  # fmt: skip
        return 0
    from rich.console import Console
    from rich.table import Table

    def when(t: float | None) -> str:
        return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    table = Table("id", "kind", "status", "attempts", "created", "ended")
    for task_id, kind, status, attempts, created, ended in tasks:
        table.add_row(task_id, kind, status, str(attempts), when(created), when(ended))
    Console().print(table)
    return 0


def _print_json(value: Any) -> None:
    """One line of JSON for a pipe; indented for a person at a terminal."""
    indent = 2 if sys.stdout.isatty() else None
    print(json.dumps(_jsonable(value), allow_nan=False, indent=indent), flush=True)


def _jsonable(value: Any) -> Any:
    """``value`` made printable as strict JSON (see the module docstring)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {
            (_jsonable(k) if isinstance(k, (bytes, float)) else k): _jsonable(v)
            for k, v in value.items()
        }
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
