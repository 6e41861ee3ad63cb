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

Limits: a timeout is at most ``1e8`` seconds (about three years); a file must
be a regular UTF-8 file, and a workflow may hold at most a million values
once YAML aliases are expanded (a small file of nested aliases can stand for
billions). An agent step takes no ``args`` (its input is ``input``, or its
dependency's result, or the previous pipeline stage's). No step takes both
``input`` and ``deps``, nor ``input`` as a later pipeline stage (it would be
replaced).

``load_workflow`` checks everything before anything runs and raises one
``MessageError`` listing every problem, each with its step id and field.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ._exceptions import MessageError
from .messages import check_data
from .messages.ids import new_task_id
from .messages.options import STRATEGIES, task_option_problems, timeout_problem
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
#: the longest timeout, seconds (about three years): the aggregator's timer
#: overflows on much larger values
_MAX_SECONDS = 1e8
#: the most values a workflow may hold once shared sub-objects (YAML aliases)
#: are counted every time they occur
_MAX_VALUES = 1_000_000


@dataclass(frozen=True, slots=True)
class Workflow:
    """A loaded, valid workflow: ``tasks[i]`` runs step ``steps[i]``."""

    name: str
    strategy: str  # a Strategy value
    timeout: float | None
    tasks: list[TaskSpec]
    steps: list[str]


def load_workflow(
    source: str | os.PathLike[str] | Mapping[str, Any],
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
        MessageError: the file cannot be read or parsed (missing, a directory
            or other non-regular file, not UTF-8, nested too deeply, more than
            a million values once YAML aliases are expanded), or the workflow
            is malformed; the message names the file, or lists every problem.
            Nothing has run.
    """
    file: str | None = None
    if isinstance(source, Mapping):
        data: Any = source
        default_name = "workflow"
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        if _expanded_size(data) > _MAX_VALUES:
            raise MessageError(
                f"expands to more than {_MAX_VALUES:,} values (a shared sub-object repeated?)",
                where="workflow",
            )
    elif isinstance(source, (str, os.PathLike)) and isinstance(os.fspath(source), str):
        path = Path(source)
        file = str(path)
        data = _read(path)
        default_name = path.stem
        base = Path(base_dir) if base_dir is not None else path.parent
    else:
        raise MessageError(
            f"a workflow is a file path or a dict, not {type(source).__name__}", where="workflow"
        )
    return _Loader(data, default_name, base, run_prefix or new_task_id(), parent, file).load()


def _not_a_file(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read as ``what``, or None for a regular file.

    Checked before opening: opening a FIFO blocks until a writer comes, and a
    device may never end.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError:  # an embedded NUL byte
        return "not a valid path"
    if stat.S_ISDIR(mode):
        return f"is a directory, not {what}"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; raises ``ValueError`` saying why it cannot be read."""
    why = _not_a_file(path, what)
    if why is not None:
        raise ValueError(why)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None


def _read(path: Path) -> Any:
    shown = str(path)
    try:
        text = _read_text(path, "a workflow file")
    except ValueError as exc:
        raise MessageError(f"cannot read workflow file {shown!r}: {exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except RecursionError:
        raise MessageError(f"workflow file {shown!r} is nested too deeply") from None
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
    if _expanded_size(data) > _MAX_VALUES:
        raise MessageError(
            f"workflow file {shown!r} expands to more than {_MAX_VALUES:,} values (YAML aliases?)"
        )
    return data


def _step_lines(file: str) -> list[int]:
    """The 1-based line of each step of a YAML workflow file (empty for JSON, or
    when the file cannot be composed: its errors were reported when it was read)."""
    path = Path(file)
    if path.suffix.lower() == ".json":
        return []
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if getattr(key, "value", None) == "steps" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _expanded_size(root: Any) -> int:
    """How many values ``root`` holds with every shared list or dict counted
    each time it occurs (as it would be written out), capped just above
    ``_MAX_VALUES``.

    YAML aliases make a document a graph: a ~1 KB file can stand for billions
    of values, and walking it as a tree takes that long. This is linear in the
    distinct containers: each one's size is computed once, by ``id``, without
    recursion. A container met again inside itself (a cycle) counts once here;
    ``check_data`` reports cycles where they matter.
    """
    cap = _MAX_VALUES + 1
    sizes: dict[int, int] = {}  # id -> size; 1 while the container is being counted
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
            own = 1 + len(node)  # the mapping and its keys
        elif isinstance(node, (list, tuple)):
            children, own = node, 1
        else:
            continue
        if counted:
            total = own + sum(sizes.get(id(c), 1) for c in children)
            sizes[id(node)] = min(total, cap)
        elif id(node) not in sizes:
            sizes[id(node)] = 1
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes.get(id(root), 1)


class _Loader:
    """Checks one workflow, collecting every problem before raising."""

    def __init__(
        self,
        data: Any,
        name: str,
        base: Path,
        prefix: str,
        parent: str | None,
        file: str | None = None,
    ) -> None:
        self.data = data
        self.file = file  # the workflow file, as given
        self.name = name
        self.base = base
        self.prefix = prefix
        self.parent = parent
        self.problems: list[str] = []
        self.step_lines: list[int] = _step_lines(file) if file is not None else []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def source(self, step: Mapping[str, Any], sid: str, i: int) -> str:
        """What a script step's errors name: its own file, else the step and where
        it is written (``step 'transform' (flow.yaml:15)``)."""
        if isinstance(step.get("file"), str):
            return Path(step["file"]).name
        if self.file is None:
            return f"step {sid!r}"
        line = self.step_lines[i] if i < len(self.step_lines) else None
        at = f"{Path(self.file).name}:{line}" if line else Path(self.file).name
        return f"step {sid!r} ({at})"

    def load(self) -> Workflow:
        data = self.data
        if not isinstance(data, Mapping):
            got = "nothing" if data is None else type(data).__name__
            if self.file is not None:
                raise MessageError(
                    f"workflow file {self.file!r} must hold a mapping with 'steps', got {got}"
                )
            raise MessageError(
                f"a workflow must be a mapping with 'steps', got {got}", where="workflow"
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
        if not isinstance(raw_strategy, str) or raw_strategy not in STRATEGIES:
            values = ", ".join(STRATEGIES)
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
            if spec is not None and spec.kind in ("lua", "js"):
                spec.metadata = {**(spec.metadata or {}), "source": self.source(step, ids[i], i)}
            step_deps = self.deps(step, ids, i, where, strategy, seen)
            self.inputs(step, i, where, strategy)
            deps[ids[i]] = step_deps
            if spec is not None:
                if step_deps:
                    spec.deps = [self.task_id(d) for d in step_deps]
                    spec.deps_input = True
                tasks.append(spec)
        self.cycles(ids, deps)
        return tasks, ids

    def inputs(self, step: Mapping[str, Any], i: int, where: str, strategy: str) -> None:
        """A step's input comes from one place: ``input``, its deps, or the
        previous pipeline stage."""
        deps = step.get("deps")
        has_deps = isinstance(deps, list) and bool(deps) and strategy != "pipeline"
        later_stage = strategy == "pipeline" and i > 0
        if "input" not in step:
            return
        if has_deps:
            self.problem(
                f"{where}.input",
                "give input or deps, not both (a step with deps gets their results as input)",
            )
        elif later_stage:
            self.problem(
                f"{where}.input",
                "only a pipeline's first step takes input "
                "(each later step gets the previous step's result)",
            )

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
        if args is not None and spec.kind == "agent":
            self.problem(f"{where}.args", "an agent step takes no args (give its input as input)")
        elif args is not None:
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
        bad = dict(task_option_problems(step))
        for name in ("retries", "priority"):
            if name in bad:
                self.problem(f"{where}.{name}", bad[name])
        if "retries" not in bad:
            spec.retries = step.get("retries", 0)
        if "priority" not in bad:
            spec.priority = PRIORITIES[step.get("priority", "normal")]
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
            return _read_text(path, "a script file")
        except ValueError as exc:
            self.problem(where, f"cannot read {str(path)!r}: {exc}")
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
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and value > _MAX_SECONDS:  # infinity too
            self.problem(
                where, f"must be at most {_MAX_SECONDS:.0f} s (about 3 years), got {value!r}"
            )
            return None
        problem = timeout_problem(value)
        if problem is not None:
            self.problem(where, problem)
            return None
        return float(value)

    def data_ok(self, value: Any, where: str) -> bool:
        try:
            check_data(value, where)
        except MessageError as exc:
            self.problems.append(str(exc))
            return False
        return True
