"""Workflow files: a YAML or JSON file (or a dict) turned into tasks.

A workflow is a mapping::

    name: example                # default: the file's stem, or "workflow"
    strategy: parallel           # one of the six strategies, default "parallel"
    timeout: 30                  # optional: the coordination's timeout, seconds
    description: ...             # optional, ignored
    steps:
      - id: greet                # required, unique
        lang: lua                # lua | js | python (python needs target)
        code: return "hello " .. spell.args.who
        args: {who: world}
      - id: shout
        lang: js
        file: shout.js           # instead of code: relative to the workflow file
        deps: [greet]

Step keys: ``id``; what runs — ``lang`` with ``code`` or ``file`` (Lua/JS;
``lang`` may be left out when ``file`` ends in ``.lua`` or ``.js``),
``target`` (``"module:function"``, Python; ``lang: python`` optional),
``tool`` (a registered tool; ``args`` are its params) or ``agent`` (a
registered agent; ``input`` is its input); and optionally ``args``, ``input``
(a fixed ``spell.input``/``input=``), ``deps`` (step ids), ``timeout``
(seconds), ``retries`` and ``priority`` (low, normal, high, critical).

A step starts after its ``deps`` succeeded; one dependency's result arrives
as its input (``spell.input``, Python ``input=``), several as a map keyed by
step id. Under ``sequential`` a step may depend only on earlier steps; under
``pipeline`` steps take no ``deps`` (each gets the previous step's result).

Each step becomes a task whose id is ``"<run prefix>:<step id>"`` (unique per
run) and whose ``metadata`` holds ``{"workflow": name, "step": step id}``; the
results stay keyed by the step ids as written.

``load_workflow`` checks everything before anything runs and raises one
``MessageError`` listing every problem, each with its step id and field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ._exceptions import MessageError
from ._task import Strategy, new_task_id
from .messages import check_data
from .messages.types import PRIORITIES, TaskSpec

__all__ = ["Workflow", "load_workflow"]

_TOP_KEYS = frozenset(("name", "strategy", "timeout", "description", "steps"))
_STEP_KEYS = frozenset(
    (
        "id",
        "lang",
        "target",
        "tool",
        "agent",
        "code",
        "file",
        "args",
        "input",
        "deps",
        "timeout",
        "retries",
        "priority",
    )
)
_LANGS = ("lua", "js", "python")


@dataclass(frozen=True, slots=True)
class Workflow:
    """A loaded, valid workflow: ``tasks[i]`` runs step ``steps[i]``."""

    name: str
    strategy: str  # a Strategy value
    timeout: float | None
    tasks: list[TaskSpec]
    steps: list[str]


def load_workflow(
    source: str | Path | Mapping[str, Any],
    *,
    run_prefix: str | None = None,
    parent: str | None = None,
    base_dir: str | Path | None = None,
) -> Workflow:
    """Load and check a workflow from a YAML/JSON file path or a dict.

    Args:
        source: a path (``.json`` is read as JSON, anything else as YAML) or
            the workflow as a mapping.
        run_prefix: the prefix of this run's task ids (default: a fresh id).
        parent: the ``parent`` of every task (the task that runs the workflow).
        base_dir: where ``file:`` paths of a dict workflow are relative to
            (default: the current directory; a file's own directory for files).

    Raises:
        MessageError: the file cannot be read or parsed, or the workflow is
            malformed; the message lists every problem. Nothing has run.
    """
    if isinstance(source, Mapping):
        data: Any = source
        default_name = "workflow"
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    elif isinstance(source, (str, Path)):
        path = Path(source)
        data = _read(path)
        default_name = path.stem
        base = Path(base_dir) if base_dir is not None else path.parent
    else:
        raise MessageError(
            f"a workflow is a file path or a dict, not {type(source).__name__}", where="workflow"
        )
    return _Loader(data, default_name, base, run_prefix or new_task_id(), parent).load()


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MessageError(
            f"cannot read workflow file {str(path)!r}: {exc.strerror or exc}"
        ) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise MessageError(
            f"workflow file {str(path)!r} is not valid JSON: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MessageError(
            f"workflow file {str(path)!r} is not valid YAML: {problem}{where}"
        ) from None


class _Loader:
    """Checks one workflow, collecting every problem before raising."""

    def __init__(self, data: Any, name: str, base: Path, prefix: str, parent: str | None) -> None:
        self.data = data
        self.name = name
        self.base = base
        self.prefix = prefix
        self.parent = parent
        self.problems: list[str] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def load(self) -> Workflow:
        data = self.data
        if not isinstance(data, Mapping):
            raise MessageError(
                f"a workflow must be a mapping with 'steps', got {type(data).__name__}",
                where="workflow",
            )
        for key in sorted(set(data) - _TOP_KEYS, key=str):
            self.problem(str(key), f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
        name = data.get("name", self.name)
        if not isinstance(name, str) or not name:
            self.problem("name", f"must be a non-empty string, got {name!r}")
            name = self.name
        self.name = name
        strategy = "parallel"
        raw_strategy = data.get("strategy", "parallel")
        if not isinstance(raw_strategy, str) or raw_strategy not in {s.value for s in Strategy}:
            values = ", ".join(s.value for s in Strategy)
            self.problem("strategy", f"must be one of {values}, got {raw_strategy!r}")
        else:
            strategy = raw_strategy
        timeout = self.seconds(data.get("timeout"), "timeout")
        steps = data.get("steps")
        tasks: list[TaskSpec] = []
        ids: list[str] = []
        if not isinstance(steps, list) or not steps:
            self.problem("steps", "must be a non-empty list of steps")
        else:
            tasks, ids = self.steps(steps, strategy)
        if self.problems:
            count = len(self.problems)
            lines = "\n".join(f"  - {p}" for p in self.problems)
            raise MessageError(
                f"workflow {name!r} is malformed ({count} problem{'s' if count > 1 else ''}):\n"
                f"{lines}"
            )
        return Workflow(name, strategy, timeout, tasks, ids)

    # -- steps ------------------------------------------------------------------------

    def steps(self, steps: list[Any], strategy: str) -> tuple[list[TaskSpec], list[str]]:
        ids: list[str] = []
        seen: set[str] = set()
        for i, step in enumerate(steps):
            sid = step.get("id") if isinstance(step, Mapping) else None
            if isinstance(sid, str) and sid:
                if sid in seen:
                    self.problem(f"step {sid!r}", f"duplicate id (steps[{i}])")
                seen.add(sid)
            ids.append(sid if isinstance(sid, str) and sid else f"steps[{i}]")
        tasks = []
        deps: dict[str, list[str]] = {}
        for i, step in enumerate(steps):
            where = f"step {ids[i]!r}" if ids[i] in seen else ids[i]
            if not isinstance(step, Mapping):
                self.problem(where, f"must be a mapping, got {type(step).__name__}")
                continue
            spec = self.step(step, ids[i], where)
            step_deps = self.deps(step, ids, i, where, strategy, seen)
            deps[ids[i]] = step_deps
            if spec is not None:
                if step_deps:
                    spec.deps = [self.task_id(d) for d in step_deps]
                    spec.deps_input = True
                tasks.append(spec)
        self.cycles(ids, deps)
        return tasks, ids

    def task_id(self, step_id: str) -> str:
        return f"{self.prefix}:{step_id}"

    def step(self, step: Mapping[str, Any], sid: str, where: str) -> TaskSpec | None:
        before = len(self.problems)
        for key in sorted(set(step) - _STEP_KEYS, key=str):
            self.problem(
                f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(_STEP_KEYS))})"
            )
        if "id" not in step:
            self.problem(where, "missing id")
        elif not isinstance(step["id"], str) or not step["id"]:
            self.problem(f"{where}.id", f"must be a non-empty string, got {step['id']!r}")
        spec = TaskSpec(id=self.task_id(sid), kind="", parent=self.parent)
        self.what(step, spec, where)
        args = step.get("args")
        if args is not None:
            if not isinstance(args, Mapping):
                self.problem(f"{where}.args", f"must be a mapping, got {type(args).__name__}")
            elif self.data_ok(dict(args), f"{where}.args"):
                if spec.kind == "tool":
                    spec.payload = dict(args)
                else:
                    spec.args = dict(args)
        if "input" in step and self.data_ok(step["input"], f"{where}.input"):
            if spec.kind == "agent":
                spec.payload = step["input"]
            else:
                spec.input = step["input"]
        spec.timeout = self.seconds(step.get("timeout"), f"{where}.timeout")
        retries = step.get("retries", 0)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            self.problem(f"{where}.retries", f"must be an integer >= 0, got {retries!r}")
        else:
            spec.retries = retries
        priority = step.get("priority", "normal")
        if priority not in PRIORITIES:
            self.problem(
                f"{where}.priority", f"must be one of {', '.join(PRIORITIES)}, got {priority!r}"
            )
        else:
            spec.priority = PRIORITIES[priority]
        spec.metadata = {"workflow": self.name, "step": sid}
        return spec if len(self.problems) == before else None

    def what(self, step: Mapping[str, Any], spec: TaskSpec, where: str) -> None:
        """The step's kind and what it runs, into ``spec``."""
        runs = [k for k in ("tool", "agent", "target") if k in step]
        lang = step.get("lang")
        if (
            len([k for k in ("tool", "agent") if k in step]) + ("lang" in step or "target" in step)
            > 1
        ):
            self.problem(where, "give one of lang/target, tool or agent")
            return
        if "tool" in step or "agent" in step:
            kind = runs[0]
            name = step[kind]
            for key in ("code", "file"):
                if key in step:
                    self.problem(f"{where}.{key}", f"a {kind} step takes no {key}")
            if not isinstance(name, str) or not name:
                self.problem(f"{where}.{kind}", f"must be a non-empty name, got {name!r}")
                return
            spec.kind, spec.name = kind, name
            return
        if lang is None and "target" in step:
            lang = "python"
        if lang is None and isinstance(step.get("file"), str):
            lang = {".lua": "lua", ".js": "js"}.get(Path(step["file"]).suffix.lower())
        if lang is None:
            self.problem(where, "missing lang (lua, js or python), target, tool or agent")
            return
        if lang not in _LANGS:
            self.problem(f"{where}.lang", f"unknown lang {lang!r}; use lua, js or python")
            return
        spec.kind = lang
        if lang == "python":
            target = step.get("target")
            for key in ("code", "file"):
                if key in step:
                    self.problem(f"{where}.{key}", "a python step runs a target, not code")
            if not isinstance(target, str) or ":" not in target.strip(":"):
                self.problem(
                    f"{where}.target", f"must be 'package.module:function', got {target!r}"
                )
                return
            spec.target = target
            return
        if "target" in step:
            self.problem(f"{where}.target", f"a {lang} step runs code, not a target")
        has_code, has_file = "code" in step, "file" in step
        if has_code and has_file:
            self.problem(where, "give code or file, not both")
        elif not has_code and not has_file:
            self.problem(where, f"missing code (or file) for the {lang} step")
        elif has_code:
            if not isinstance(step["code"], str):
                self.problem(
                    f"{where}.code", f"must be a string, got {type(step['code']).__name__}"
                )
            else:
                spec.code = step["code"]
        else:
            spec.code = self.read_code(step["file"], f"{where}.file")

    def read_code(self, file: Any, where: str) -> str | None:
        if not isinstance(file, str) or not file:
            self.problem(where, f"must be a path, got {file!r}")
            return None
        path = Path(file)
        if not path.is_absolute():
            path = self.base / path
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            self.problem(where, f"cannot read {str(path)!r}: {exc.strerror or exc}")
            return None

    def deps(
        self,
        step: Mapping[str, Any],
        ids: list[str],
        i: int,
        where: str,
        strategy: str,
        known: set[str],
    ) -> list[str]:
        deps = step.get("deps")
        if deps is None:
            return []
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            self.problem(f"{where}.deps", "must be a list of step ids")
            return []
        if strategy == "pipeline" and deps:
            self.problem(
                f"{where}.deps",
                "a pipeline step takes no deps (each step gets the previous step's result)",
            )
            return []
        good = []
        for d in deps:
            if d == ids[i]:
                self.problem(f"{where}.deps", "a step cannot depend on itself")
            elif d not in known:
                self.problem(f"{where}.deps", f"unknown step {d!r}")
            elif strategy == "sequential" and d not in ids[:i]:
                self.problem(
                    f"{where}.deps", f"{d!r} runs later: under sequential, deps name earlier steps"
                )
            elif d in good:
                self.problem(f"{where}.deps", f"{d!r} listed twice")
            else:
                good.append(d)
        return good

    def cycles(self, ids: list[str], deps: dict[str, list[str]]) -> None:
        """Report each dependency cycle once (``a -> b -> a``)."""
        state: dict[str, int] = {}  # 1 visiting, 2 done
        reported: set[frozenset[str]] = set()

        def visit(node: str, path: list[str]) -> None:
            state[node] = 1
            path.append(node)
            for d in deps.get(node, ()):
                if state.get(d) == 1:
                    cycle = path[path.index(d) :]
                    if frozenset(cycle) not in reported:
                        reported.add(frozenset(cycle))
                        chain = " -> ".join([*cycle, d])
                        self.problem(f"step {d!r}.deps", f"dependency cycle: {chain}")
                elif state.get(d) is None:
                    visit(d, path)
            path.pop()
            state[node] = 2

        for sid in ids:
            if state.get(sid) is None:
                visit(sid, [])

    # -- values -----------------------------------------------------------------------

    def seconds(self, value: Any, where: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.problem(where, f"must be a positive number of seconds, got {value!r}")
            return None
        return float(value)

    def data_ok(self, value: Any, where: str) -> bool:
        try:
            check_data(value, where)
        except MessageError as exc:
            self.problems.append(str(exc))
            return False
        return True
