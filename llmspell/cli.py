"""The ``llmspell`` command line.

``llmspell demo`` runs the bundled example; ``llmspell run FILE`` runs a
``.lua``/``.js`` script (its result printed as JSON) or a workflow
``.yaml``/``.json`` file (its CoordinationResult printed as JSON). Exit codes: 0 success,
1 the work failed, 2 bad input (file, arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._exceptions import LlmspellError, MessageError, TaskFailed

__all__ = ["DEFAULT_PORT", "main"]

DEFAULT_PORT = 1921


def _parse_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--arg wants key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # plain strings need no quotes
    return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmspell",
        description="Run LLM application work (Python, Lua, JavaScript) on an actor runtime.",
    )
    p.add_argument("--version", action="version", version=f"llmspell {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the bundled cross-engine example")
    demo.add_argument("--json", action="store_true", help="print only the JSON result")

    run = sub.add_parser(
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
        help="an argument for the script (JSON or text)",
    )
    run.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    run.add_argument("--json", action="store_true", help="print only the JSON result")
    serve = sub.add_parser("serve", help="run a local multi-process runtime on 127.0.0.1")
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"admin port on 127.0.0.1 (default {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="engine processes per engine (default: one per core)",
    )

    for name, text in (("status", "inspect a served runtime"), ("stop", "stop a served runtime")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--port", type=int, default=DEFAULT_PORT)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(json_only=args.json)
        if args.command == "run":
            return _run_file(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "status":
            return _status(args)
        if args.command == "stop":
            return _stop(args)
    except MessageError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 2
    except LlmspellError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover - argparse rejects unknown commands


def _run_file(args: argparse.Namespace) -> int:
    from . import Runtime, Task

    path: Path = args.file
    if not path.is_file():
        print(f"llmspell: no such file: {path}", file=sys.stderr)
        return 2
    script_args = dict(args.args)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return _run_workflow(path, args)
    code = path.read_text(encoding="utf-8")
    if suffix == ".lua":
        task = Task.lua(code, args=script_args)
    elif suffix in (".js", ".mjs"):
        task = Task.js(code, args=script_args)
    else:
        print(
            f"llmspell: don't know how to run {path.name!r} "
            "(expected .lua, .js, or a workflow .yaml/.json)",
            file=sys.stderr,
        )
        return 2
    with Runtime(mode=args.mode) as rt:
        handle = rt.submit(task)
        try:
            if sys.stdout.isatty() and not args.json:
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
            message = f"no result within --timeout {args.timeout:g} s; the task was cancelled"
            print(json.dumps({"ok": False, "error": message}), flush=True)
            return 1
    print(json.dumps(_jsonable(value)), flush=True)
    return 0


def _run_workflow(path: Path, args: argparse.Namespace) -> int:
    """A workflow file: its CoordinationResult as JSON; exit 1 unless ``ok``."""
    from . import Runtime
    from .workflow import load_workflow

    if args.args:
        print("llmspell: a workflow takes no --arg", file=sys.stderr)
        return 2
    workflow = load_workflow(path)  # malformed: bad input (exit 2) before anything starts
    live = sys.stdout.isatty() and not args.json
    with Runtime(mode=args.mode) as rt:
        if live:
            from ._progress import run_with_progress

            result = run_with_progress(rt, workflow)
        else:
            result = rt._run_loaded_workflow(workflow)
    print(json.dumps(_jsonable(result.to_dict())), flush=True)
    return 0 if result.ok else 1


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading
    import time

    from . import Runtime

    config: dict[str, Any] = {"port": args.port}
    if args.workers is not None:
        config["workers"] = args.workers
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Runtime(mode="local", **config) as rt:
        # engines register as their processes come up: report them once they are there
        expected = sum(int(n) for n in rt._core.config["engines"].values())
        deadline = time.monotonic() + 30
        engines = rt.stats()["engines"]
        while len(engines) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            engines = rt.stats()["engines"]
        print(
            json.dumps({"serving": f"127.0.0.1:{args.port}", "engines": len(engines)}), flush=True
        )
        while not stop.wait(0.5):
            if _stop_requested(rt):
                break
    print(json.dumps({"stopped": f"127.0.0.1:{args.port}"}), flush=True)
    return 0


def _stop_requested(rt: Any) -> bool:
    try:
        return bool(rt.stats().get("stop_requested"))
    except Exception:
        return True  # the runtime is gone


def _status(args: argparse.Namespace) -> int:
    from . import Runtime

    try:
        with Runtime(mode="local", address=f"127.0.0.1:{args.port}") as rt:
            stats = rt.stats()
    except LlmspellError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 1
    queued = stats.get("queued", {})
    print(
        json.dumps(
            {
                "address": f"127.0.0.1:{args.port}",
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
    from . import Runtime

    try:
        with Runtime(mode="local", address=f"127.0.0.1:{args.port}") as rt:
            rt._request_stop()
    except LlmspellError as exc:
        print(f"llmspell: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"stopping": f"127.0.0.1:{args.port}"}))
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
